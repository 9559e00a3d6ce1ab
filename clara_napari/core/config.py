"""Loading a Clara Train 3.x ``config_inference.json`` into checked components.

Every mistake is reported as a :class:`ConfigError` naming the file and the JSON path
(``post_transforms[2].args.fields``); nothing else escapes :func:`load_config`.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from . import transforms as _transforms  # noqa: F401  (registers the transforms)
from .components import INFERERS, MODEL_LOADERS, WRITERS, InfererSpec, TritonModelLoader, VolumeWriter, Writer
from .errors import ConfigError
from .expectations import Expectations, parse_expectations
from .registry import Registry, load_plugins
from .transforms import TRANSFORMS, Transform

log = logging.getLogger(__name__)

#: top-level keys of training configs that inference ignores
TRAINING_KEYS = {"epochs", "learning_rate", "multi_gpu", "amp", "determinism", "cudnn_benchmark",
                 "dont_load_ckpt_model", "train", "validate", "label_transforms", "val_metrics",
                 "model", "loss", "optimizer", "lr_policy", "image_pipeline", "val_image_pipeline"}
KNOWN_KEYS = {"batch_size", "use_scanning_window", "pre_transforms", "inferer", "model_loader",
              "post_transforms", "writers", "labels", "expectations"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


class LabelInfo(BaseModel):
    """A label value's name and display colour (``#rrggbb``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    name: str
    color: str = ""

    @field_validator("color")
    @classmethod
    def _hex(cls, value: str) -> str:
        if value and not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise ValueError("colour must be '#rrggbb'")
        return value.lower()


@dataclass
class InferenceConfig:
    """A loaded, checked ``config_inference.json``."""

    file: Path
    pre_transforms: list[Transform]
    inferer: InfererSpec
    post_transforms: list[Transform]
    writers: list[Writer]
    model_loader: TritonModelLoader | None = None
    batch_size: int = 1
    use_scanning_window: bool = True
    labels: dict[int, LabelInfo] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: what the app expects of its input and result (checked on every run), if it says
    expectations: Expectations | None = None

    @property
    def model_name(self) -> str:
        return self.inferer.model_name

    @property
    def scanning(self) -> bool:
        return self.inferer.scanning and self.use_scanning_window

    def label_names(self) -> dict[int, str]:
        return {value: info.name for value, info in self.labels.items()}

    def label_colors(self) -> dict[int, str]:
        return {value: info.color or _COLOURS[(value - 1) % len(_COLOURS)] for value, info in self.labels.items()}


def load_config(path: str | Path, placeholders: dict[str, str] | None = None) -> InferenceConfig:
    """Read and check ``path``; ``{NAME}`` placeholders are replaced from ``placeholders``."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("the config file does not exist.", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file ({getattr(exc, 'strerror', None) or exc}).", file=file) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.", file=file) from None
    except RecursionError:
        raise ConfigError("the JSON is nested too deeply.", file=file) from None
    return parse_config(raw, file=file, placeholders=placeholders)


def parse_config(raw: Any, *, file: str = "", placeholders: dict[str, str] | None = None) -> InferenceConfig:
    load_plugins()
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a JSON object, got {type(raw).__name__}.", file=file)
    for key in raw:
        if key not in KNOWN_KEYS:
            if key in TRAINING_KEYS:
                log.info("%s: ignoring training-only key %r", file or "config", key)
            else:
                log.warning("%s: ignoring unknown top-level key %r", file or "config", key)
    if "inferer" not in raw:  # before placeholders: {PBTXT_PATH} is derived from the inferer's model_name
        raise ConfigError("the config has no inferer.", path="inferer", file=file)
    values = dict(placeholders or {})
    model_name = raw.get("inferer", {}).get("args", {}).get("model_name") if isinstance(raw.get("inferer"), dict) \
        and isinstance(raw["inferer"].get("args"), dict) else None
    if isinstance(model_name, str) and "MODEL_REPOSITORY" in values:
        values.setdefault("PBTXT_PATH", str(Path(values["MODEL_REPOSITORY"]) / model_name / "config.pbtxt"))
        values.setdefault("MMAR_CKPT_DIR", str(Path(values["MODEL_REPOSITORY"]) / model_name))
    raw = _substitute(raw, values, "", file)

    batch_size = raw.get("batch_size", 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"must be a whole number >= 1, got {batch_size!r}.", path="batch_size", file=file)
    scanning = raw.get("use_scanning_window", True)
    if not isinstance(scanning, bool):
        raise ConfigError(f"must be true or false, got {scanning!r}.", path="use_scanning_window", file=file)

    skipped: list[str] = []
    pre = _build_list(raw, "pre_transforms", TRANSFORMS, file, skipped)
    post = _build_list(raw, "post_transforms", TRANSFORMS, file, skipped)
    writers = _build_list(raw, "writers", WRITERS, file, skipped)
    inferer = INFERERS.build(raw["inferer"], "inferer", file)
    loader = MODEL_LOADERS.build(raw["model_loader"], "model_loader", file) if raw.get("model_loader") is not None else None
    labels = _labels(raw.get("labels", {}), file)
    expectations = parse_expectations(raw.get("expectations"), file)
    if not writers:
        writers = [VolumeWriter()]
    return InferenceConfig(file=Path(file) if file else Path("config_inference.json"), pre_transforms=pre,
                           inferer=inferer, post_transforms=post, writers=writers, model_loader=loader,
                           batch_size=batch_size, use_scanning_window=scanning, labels=labels, skipped=skipped,
                           expectations=expectations)


def _build_list(raw: dict, key: str, registry: Registry, file: str, skipped: list[str]) -> list:
    items = raw.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"must be a list of components, got {type(items).__name__}.", path=key, file=file)
    built = []
    for index, spec in enumerate(items):
        component = registry.build(spec, f"{key}[{index}]", file)
        if component is None:
            skipped.append(spec["name"])
        else:
            built.append(component)
    return built


def _labels(raw: Any, file: str) -> dict[int, LabelInfo]:
    if not isinstance(raw, dict):
        raise ConfigError(f"must be an object mapping label values to {{name, color}}, got {type(raw).__name__}.",
                          path="labels", file=file)
    labels = {}
    for key, value in raw.items():
        if not (isinstance(key, str) and key.isdigit() and 0 < int(key) < 65536):
            raise ConfigError(f"label values must be whole numbers 1..65535, got {key!r}.", path=f"labels.{key}", file=file)
        if isinstance(value, str):
            value = {"name": value}
        try:
            labels[int(key)] = LabelInfo.model_validate(value)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = "".join(f".{p}" for p in err["loc"])
            raise ConfigError(err["msg"].removeprefix("Value error, ") + ".", path=f"labels.{key}{loc}", file=file) from None
    return dict(sorted(labels.items()))


MAX_DEPTH = 64


def _substitute(value: Any, values: dict[str, str], path: str, file: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ConfigError(f"nested more than {MAX_DEPTH} levels deep.", path=path, file=file)
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in values:
                known = ", ".join(sorted(values)) or "none"
                raise ConfigError(f"unknown placeholder {{{name}}} (known here: {known}).", path=path or "(top)", file=file)
            return values[name]

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, values, f"{path}[{i}]", file, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, values, f"{path}.{k}" if path else str(k), file, depth + 1) for k, v in value.items()}
    return value
