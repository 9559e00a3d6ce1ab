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
from .errors import ConfigError, ConfigProblems
from .expectations import Expectations, parse_expectations
from .label_table import LabelTable
from .registry import Registry, load_plugins
from .transforms import TRANSFORMS, Transform

log = logging.getLogger(__name__)

#: top-level keys of training configs that inference ignores
TRAINING_KEYS = {"epochs", "learning_rate", "multi_gpu", "amp", "determinism", "cudnn_benchmark",
                 "dont_load_ckpt_model", "train", "validate", "label_transforms", "val_metrics",
                 "model", "loss", "optimizer", "lr_policy", "image_pipeline", "val_image_pipeline",
                 "use_amp", "use_gpu", "dont_load_ts_model", "val_interval", "ckpt_path"}
KNOWN_KEYS = {"batch_size", "use_scanning_window", "pre_transforms", "inferer", "model_loader",
              "post_transforms", "writers", "labels", "expectations"}
#: the formats :func:`detect_format` tells apart
CLARA3, CLARA4, AIAA = "Clara 3", "Clara 4 (MONAI-style)", "AIAA"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    #: "Clara 3", "Clara 4 (MONAI-style)"
    format: str = CLARA3
    #: top-level sections not used at inference (not checked)
    skipped_sections: list[str] = field(default_factory=list)
    #: the model the config's own loader or ``model`` section names (mapped to a Triton model)
    source_model: str = ""
    #: the Triton model given on the command line / API (``--model``), if any
    model_override: str = ""
    #: the data key the model's output is put under ("model" in Clara 3, "pred" in Clara 4)
    output_field: str = "model"
    #: what the app expects of its input and result (checked on every run), if it says
    expectations: Expectations | None = None

    @property
    def model_name(self) -> str:
        return self.inferer.model_name

    def model_note(self) -> str:
        """One line: which Triton model serves this config, and what it stands for."""
        where = "--model" if self.model_override else "the inferer's model_name"
        source = f"the config's {self.source_model} is" if self.source_model else "the model is"
        return f"{self.file.name} ({self.format}): {source} served by Triton model {self.model_name!r} (from {where})."

    def require_model(self) -> None:
        """Refuse, before any work, a config that names no Triton model."""
        if not self.model_name:
            what = f" (it names {self.source_model})" if self.source_model else ""
            raise ConfigError(f"the config names no Triton model{what}; give one with --model NAME (API: model=).",
                              path="inferer.args.model_name", file=str(self.file))

    @property
    def scanning(self) -> bool:
        return self.inferer.scanning and self.use_scanning_window

    def label_table(self) -> LabelTable:
        """The app's labels (names, colours; the palette's where a label names none)."""
        return LabelTable.from_config(self.labels)

    def label_names(self) -> dict[int, str]:
        """Value → name (the table's names; colours and other forms: :meth:`label_table`)."""
        return self.label_table().names()


def load_config(path: str | Path, placeholders: dict[str, str] | None = None, *,
                model: str | None = None) -> InferenceConfig:
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
    return parse_config(raw, file=file, placeholders=placeholders, model=model)


#: top-level keys of a Clara 4 config that name code or training machinery (never used here)
_CLARA4_KEYS = {"evaluator", "dataloader", "dataset", "handlers", "CLARA_TRAIN_VERSION", "key_metric",
                "additional_metrics", "metrics", "trainer", "validate"}


def detect_format(raw: dict) -> tuple[str, str]:
    """``(format, JSON path of the telling key)``: Clara 3, Clara 4 (MONAI-style) or AIAA."""
    if "inferer" not in raw and (isinstance(raw.get("inference"), dict) or "writer" in raw):
        return AIAA, "inference" if "inference" in raw else "writer"
    if "inferer" not in raw and "pre_transforms" not in raw:
        for key, value in raw.items():  # AIAA v1/v2 model lists: {"model name": {"pre_transforms": ...}}
            if isinstance(value, dict) and ({"pre_transforms", "inference", "post_transforms"} & set(value)):
                return AIAA, str(key)
    from .transforms.monai_style import MONAI_STYLE_NAMES

    for section in ("pre_transforms", "post_transforms"):
        items = raw.get(section)
        for index, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and (str(item.get("name")) in MONAI_STYLE_NAMES
                                           or (isinstance(item.get("args"), dict) and "keys" in item["args"])):
                return CLARA4, f"{section}[{index}]"
    inferer = raw.get("inferer")
    if isinstance(inferer, dict) and str(inferer.get("name")) in MONAI_STYLE_NAMES:
        return CLARA4, "inferer.name"
    for key in raw:
        if key in _CLARA4_KEYS:
            return CLARA4, key
    return CLARA3, ""


def parse_config(raw: Any, *, file: str = "", placeholders: dict[str, str] | None = None,
                 model: str | None = None) -> InferenceConfig:
    """Check a config's used sections and build its components.

    Every problem found is collected (each with its JSON path) and reported together; only the
    sections inference uses are checked, the others are listed in ``skipped_sections``.
    ``model`` names the Triton model to use instead of the inferer's ``model_name``.
    """
    load_plugins()
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a JSON object, got {type(raw).__name__}.", file=file)
    fmt, telling = detect_format(raw)
    if fmt == AIAA:
        raise ConfigError("this is a Clara AI-Assisted Annotation (AIAA) config (config_aiaa.json: 'inference' and "
                          "'writer' instead of 'inferer' and 'writers', or models nested under a name); it cannot be "
                          "run: use the MMAR's config_inference.json or config_validation.json.",
                          path=telling, file=file)
    used = KNOWN_KEYS
    skipped_sections = [key for key in raw if key not in used]
    for key in skipped_sections:
        if key not in TRAINING_KEYS and key not in _CLARA4_KEYS and not key.isupper():
            log.warning("%s: ignoring unknown top-level key %r", file or "config", key)
    if skipped_sections:
        log.info("%s: %s config; not used at inference (not checked): %s", file or "config", fmt,
                 ", ".join(repr(k) for k in skipped_sections))
    if "inferer" not in raw:  # before placeholders: {PBTXT_PATH} is derived from the inferer's model_name
        raise ConfigError("the config has no inferer.", path="inferer", file=file)
    problems: list[ConfigError] = []
    values = dict(placeholders or {})
    # writers resolve it against the run's output folder (Writer.target), never the working directory
    values["MMAR_EVAL_OUTPUT_PATH"] = "{MMAR_EVAL_OUTPUT_PATH}"
    inferer_raw = raw.get("inferer")
    model_name = model or (inferer_raw.get("args", {}).get("model_name") if isinstance(inferer_raw, dict)
                           and isinstance(inferer_raw.get("args"), dict) else None)
    if isinstance(model_name, str) and model_name and "MODEL_REPOSITORY" in values:
        values.setdefault("PBTXT_PATH", str(Path(values["MODEL_REPOSITORY"]) / model_name / "config.pbtxt"))
        values.setdefault("MMAR_CKPT_DIR", str(Path(values["MODEL_REPOSITORY"]) / model_name))
    if "MMAR_ROOT" in values:  # Clara's default: the MMAR's models/ (only ever named, never read: see MmarModelLoader)
        values.setdefault("MMAR_CKPT_DIR", str(Path(values["MMAR_ROOT"]) / "models"))
    raw = {key: _substitute(value, values, key, file, problems=problems) if key in used else value
           for key, value in raw.items()}

    batch_size = raw.get("batch_size", 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(ConfigError(f"must be a whole number >= 1, got {batch_size!r}.", path="batch_size", file=file))
        batch_size = 1
    scanning = raw.get("use_scanning_window", True)
    if not isinstance(scanning, bool):
        problems.append(ConfigError(f"must be true or false, got {scanning!r}.", path="use_scanning_window", file=file))
        scanning = True

    skipped: list[str] = []
    writers: list = []
    pre = _build_list(raw, "pre_transforms", TRANSFORMS, file, skipped, problems)
    post = _build_list(raw, "post_transforms", TRANSFORMS, file, skipped, problems,
                       writers=writers if fmt == CLARA4 else None)
    writers += _build_list(raw, "writers", WRITERS, file, skipped, problems)
    inferer = _collect(problems, INFERERS.build, raw["inferer"], "inferer", file)
    loader = _collect(problems, MODEL_LOADERS.build, raw["model_loader"], "model_loader", file) \
        if raw.get("model_loader") is not None else None
    labels = _collect(problems, _labels, raw.get("labels", {}), file) or {}
    expectations = _collect(problems, parse_expectations, raw.get("expectations"), file)
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigProblems(problems, file=file, kind=fmt)
    source_model = ""
    if loader is not None and not isinstance(loader, TritonModelLoader):
        source_model = loader.describe()
        loader = None
    if fmt == CLARA4 and "model" in raw:
        source_model = _describe_clara4_model(_substitute(raw["model"], values, "model", file, problems=[]))
    if model:
        inferer = inferer.model_copy(update={"model_name": model})
        inferer._config_name = raw["inferer"]["name"].split("#", 1)[0]
        inferer._json_path = "inferer"
    output_field = "pred" if fmt == CLARA4 else "model"
    if not writers:
        writers = [VolumeWriter(field=output_field)]
    if fmt == CLARA4:
        skipped += _absent_keys(raw)
    return InferenceConfig(file=Path(file) if file else Path("config_inference.json"), pre_transforms=pre,
                           inferer=inferer, post_transforms=post, writers=writers, model_loader=loader,
                           batch_size=batch_size, use_scanning_window=scanning, labels=labels, skipped=skipped,
                           format=fmt, skipped_sections=skipped_sections, source_model=source_model,
                           model_override=model or "", output_field=output_field, expectations=expectations)


def _collect(problems: list[ConfigError], build, *args):
    """``build(*args)``, its ConfigError(s) added to ``problems`` (then ``None``)."""
    try:
        return build(*args)
    except ConfigProblems as exc:
        problems.extend(exc.problems)
    except ConfigError as exc:
        problems.append(exc)
    return None


def _build_list(raw: dict, key: str, registry: Registry, file: str, skipped: list[str],
                problems: list[ConfigError], writers: list | None = None) -> list:
    items = raw.get(key, [])
    if not isinstance(items, list):
        problems.append(ConfigError(f"must be a list of components, got {type(items).__name__}.", path=key, file=file))
        return []
    built = []
    for index, spec in enumerate(items):
        path = f"{key}[{index}]"
        if writers is not None and isinstance(spec, dict) and spec.get("name") in WRITERS \
                and spec.get("name") not in registry:
            # Clara 4 writes with a post-transform (SaveImaged): it becomes one of the writers
            writer = _collect(problems, WRITERS.build, spec, path, file)
            if writer is not None:
                writers.append(writer)
            elif spec.get("disabled") is True:
                skipped.append(f"{spec['name']} (disabled)")
            continue
        component = _collect(problems, registry.build, spec, path, file)
        if component is None and isinstance(spec, dict) and isinstance(spec.get("name"), str) \
                and (spec.get("disabled") is True or spec["name"].split("#", 1)[0] in registry.skipped):
            name = spec["name"].split("#", 1)[0]
            skipped.append(f"{name} (disabled)" if spec.get("disabled") is True else name)
        elif component is not None:
            built.append(component)
    return built


def _describe_clara4_model(section: Any) -> str:
    """What a Clara 4 ``model`` section names (TorchScript, checkpoint or a network class)."""
    entries = section if isinstance(section, list) else [section]
    parts = []
    for entry in entries:
        if isinstance(entry, dict):
            for key in ("ts_path", "ckpt_path", "path"):
                if isinstance(entry.get(key), str):
                    parts.append(f"{key} {entry[key]}")
            if isinstance(entry.get("name"), str):
                parts.append(f"network {entry['name']}")
    return "model " + ", ".join(parts) if parts else "model section"


def _absent_keys(raw: dict) -> list[str]:
    """Keys a Clara 4 validation config names that only exist while validating (e.g. ``label``)."""
    keys: set[str] = set()
    for section in ("pre_transforms", "post_transforms"):
        for item in raw.get(section) or []:
            args = item.get("args") if isinstance(item, dict) else None
            value = args.get("keys") if isinstance(args, dict) else None
            keys.update(k for k in ([value] if isinstance(value, str) else value or []) if isinstance(k, str))
    return [f"key {k!r} (absent at inference)" for k in sorted(keys - {"image", "pred"})]


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


def _substitute(value: Any, values: dict[str, str], path: str, file: str, depth: int = 0,
                problems: list[ConfigError] | None = None) -> Any:
    if depth > MAX_DEPTH:
        raise ConfigError(f"nested more than {MAX_DEPTH} levels deep.", path=path, file=file)
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in values:
                known = ", ".join(sorted(values)) or "none"
                error = ConfigError(f"unknown placeholder {{{name}}} (known here: {known}).", path=path or "(top)",
                                    file=file)
                if problems is None:
                    raise error
                problems.append(error)
                return match.group(0)
            return values[name]

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, values, f"{path}[{i}]", file, depth + 1, problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, values, f"{path}.{k}" if path else str(k), file, depth + 1, problems)
                for k, v in value.items()}
    return value
