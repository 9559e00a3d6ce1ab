"""Apps: folders holding a ``config_inference.json`` (+ ``config_render.json``, README, models).

An app's model repository is its ``models/`` folder (or a link to one) when it has one, else the
bundled ``sample_data/models``. Bundled apps, sample volumes and models are package data under
``clara_napari/data/`` (``config/`` and ``sample_data/``), found through :mod:`importlib.resources`,
so they are there for editable, venv, ``--user`` and system installs alike; ``CLARA_NAPARI_APPS``
may name more folders of apps (``:``-separated), searched first.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .config import InferenceConfig, load_config
from .errors import ConfigError

log = logging.getLogger(__name__)

#: the configs an MMAR's ``config/`` folder may hold, in the order they are preferred
MMAR_CONFIGS = ("config_inference.json", "config_validation.json")
DEFAULT_APP = "brain_extraction_t1"


def data_root() -> Path:
    """``clara_napari/data`` of the imported package (a real folder: the package is never zipped)."""
    from importlib.resources import files

    return Path(str(files("clara_napari") / "data"))


#: the package's data folder (bundled apps in ``config/``, volumes and models in ``sample_data/``)
DATA_ROOT = data_root()


def sample_data_dir() -> Path:
    return DATA_ROOT / "sample_data"


def sample_path(key: str) -> Path:
    """A bundled sample volume by key (``mr_t1``, ``chest_ct``) or its reference mask (``mr_t1_mask``)."""
    try:
        relative = SAMPLES[key]
    except KeyError:
        raise ConfigError(f"no sample {key!r} (samples: {', '.join(SAMPLES)}).") from None
    path = sample_data_dir() / relative
    if not path.is_file():
        raise ConfigError(f"the bundled sample {key!r} is missing from this installation ({path}); "
                          f"reinstall clara-napari.")
    return path


SAMPLES = {
    "mr_t1": "mr_t1/mr_t1_colin27.nii.gz",
    "mr_t1_mask": "reference/mr_t1_colin27_brain_mask.nii.gz",
    "chest_ct": "chest_ct/chest_ct_lung2.nii.gz",
    "chest_ct_tumour": "reference/chest_ct_lung2_tumour_label.nii.gz",
}


def bundled_model_repository() -> Path:
    return sample_data_dir() / "models"


def check_inside_app(path: Path, folder: Path) -> Path:
    """``path`` resolved (links followed); a ConfigError if that leaves the app folder.

    An app folder may not make us read a file elsewhere (``config_render.json`` pointing at
    ``~/.ssh/id_rsa`` would be copied into every publish bundle). Only ``models/`` may be a link
    out of the folder: it names a model repository, which the server loads as it is.
    """
    root = Path(folder).resolve()
    target = Path(path).resolve()
    if root not in target.parents:
        raise ConfigError(f"links to {target}, outside the app folder {root}; refused.", file=str(path))
    return target


TRUST_CODE_ENV = "CLARA_NAPARI_TRUST_APP_CODE"


def refuse_python_models(repository: Path | None) -> None:
    """A python-backend model is code (Triton runs its ``model.py``): served from an app's model
    repository only with ``$CLARA_NAPARI_TRUST_APP_CODE=1``. The bundled repository, ``serve
    --models`` and a server of your own are not affected."""
    from .model_repository import list_models

    if repository is None:
        return
    repository = Path(repository)
    if os.environ.get(TRUST_CODE_ENV) == "1" or not repository.is_dir() \
            or repository.resolve() == bundled_model_repository().resolve():
        return
    for spec in list_models(repository):
        if spec.runtime == "python":
            raise ConfigError(f"model {spec.name!r} is a python-backend model: the embedded server would run its "
                              f"code; refused (set {TRUST_CODE_ENV}=1 to trust this app's code).", file=str(spec.path))


def app_search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("CLARA_NAPARI_APPS", "").split(os.pathsep) if p]
    return extra + [DATA_ROOT / "config"]


@dataclass(frozen=True)
class App:
    name: str
    folder: Path
    #: a config file not named ``config_inference.json`` (``--app my_config.json``)
    config_file: Path | None = None
    #: the Triton model to use instead of the inferer's ``model_name`` (``--model NAME``)
    model: str | None = None
    #: a Clara Train MMAR (``config/``, ``models/``): its ``config/environment.json`` is read
    mmar: bool = False

    @property
    def config_path(self) -> Path:
        return self.config_file or self.folder / "config_inference.json"

    @property
    def render_config_path(self) -> Path | None:
        path = self.folder / "config_render.json"
        return path if path.is_file() else None

    @property
    def logging_config_path(self) -> Path | None:
        path = self.folder / "logging_config.json"
        return path if path.is_file() else None

    @property
    def model_repository(self) -> Path:
        own = self.folder / "models"
        if self.mmar and own.is_dir() and not any((child / "config.pbtxt").is_file() for child in own.iterdir()):
            return bundled_model_repository()  # an MMAR's models/ holds its model files, not a Triton repository
        return own.resolve() if own.is_dir() else bundled_model_repository()

    def environment(self) -> dict[str, str]:
        """An MMAR's ``config/environment.json`` (string values; ``MMAR_*`` paths taken from the MMAR root)."""
        path = self.folder / "config" / "environment.json"
        if not self.mmar or not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigError(f"cannot read the MMAR environment ({exc}).", file=str(path)) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"the top level must be a JSON object, got {type(raw).__name__}.", file=str(path))
        values = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                continue
            if key.startswith("MMAR_") and value and not Path(value).is_absolute():
                value = str(self.folder / value)  # Clara Train ran from the MMAR root
            values[key] = value
        return values

    def placeholders(self, output_dir: Path | None = None) -> dict[str, str]:
        values = self.environment()
        values.update({
            "APP_DIR": str(self.folder),
            "MODEL_REPOSITORY": str(self.model_repository),
            "MMAR_ROOT": str(self.folder),
        })
        # writers resolve {MMAR_EVAL_OUTPUT_PATH} inside the run's output folder (never environment.json's)
        values.pop("MMAR_EVAL_OUTPUT_PATH", None)
        return values

    def load_config(self, output_dir: Path | None = None) -> InferenceConfig:
        return load_config(self.config_path, self.placeholders(output_dir), model=self.model)

    @cached_property
    def config(self) -> InferenceConfig:
        return self.load_config()


def resolve_app(name_or_path: str | Path | None = None) -> App:
    """A bundled app by name, an app folder, or a ``config_inference.json`` path."""
    target = str(name_or_path or os.environ.get("NVIDIA_CLARA_CONFIG_INFERENCE") or DEFAULT_APP)
    path = Path(target).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise ConfigError(f"{path}: an app is a folder or a config_inference.json file.")
        parent = path.resolve().parent
        if parent.name == "config" and (parent / "environment.json").is_file():  # a config inside an MMAR
            return App(name=parent.parent.name, folder=parent.parent, config_file=path.resolve(), mmar=True)
        return App(name=path.parent.name, folder=path.parent.resolve(), config_file=path.resolve())
    if path.is_dir():
        if (path / "config_inference.json").is_file():
            check_inside_app(path / "config_inference.json", path)  # an app's files are its own
            return App(name=path.name, folder=path.resolve())
        for candidate in MMAR_CONFIGS:  # a Clara Train MMAR: config/, models/, ...
            if (path / "config" / candidate).is_file():
                check_inside_app(path / "config" / candidate, path)
                return App(name=path.name, folder=path.resolve(), config_file=(path / "config" / candidate).resolve(),
                           mmar=True)
        raise ConfigError(f"{path}: the folder has no config_inference.json, and no config/config_inference.json "
                          "or config/config_validation.json (an MMAR).")
    if os.sep not in target:
        for root in app_search_path():
            if (root / target / "config_inference.json").is_file():
                return App(name=target, folder=(root / target).resolve())
    known = ", ".join(a.name for a in list_apps()) or "none"
    raise ConfigError(f"no app {target!r}: not a folder, not a config file, not a bundled app (bundled: {known}).")


def list_apps() -> list[App]:
    seen: dict[str, App] = {}
    for root in app_search_path():
        for folder in sorted(root.iterdir()):
            if (folder / "config_inference.json").is_file() and folder.name not in seen:
                seen[folder.name] = App(name=folder.name, folder=folder.resolve())
    return list(seen.values())


def scaffold_app(destination: str | Path, source: str | Path | App = DEFAULT_APP, *, force: bool = False) -> App:
    """Create a new app folder from ``source``: its configs, a README, and ``models`` linking to its models.

    The result runs as ``--app DESTINATION``. Replace ``config_inference.json`` (and the model
    in ``models/``) to make it your own, as a Clara model-specific container replaced the base's.
    """
    import shutil

    app = source if isinstance(source, App) else resolve_app(source)
    dest = Path(destination).expanduser()
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConfigError(f"{dest}: the folder exists and is not empty (choose another or use --force).")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(app.config_path, dest / "config_inference.json")
    for extra in (app.render_config_path, app.logging_config_path):
        if extra is not None:
            shutil.copyfile(extra, dest / extra.name)
    models = dest / "models"
    if models.is_symlink() or models.exists():
        if models.is_symlink() or models.is_file():
            models.unlink()
        else:
            shutil.rmtree(models)
    models.symlink_to(app.model_repository, target_is_directory=True)
    config = app.config
    labels = "\n".join(f"| {label.value} | {label.name} | {label.color} |" for label in config.label_table())
    (dest / "README.md").write_text(
        f"# {dest.name}\n\n"
        f"Created with `clara-napari new-app {dest} --from {app.name}`.\n\n"
        f"- `config_inference.json`: the Clara Train 3 inference config (pre-transforms, inferer, "
        f"post-transforms, writers) and the `labels` (name and `#rrggbb` colour per label value).\n"
        f"- `config_render.json`: Clara Render Server settings, copied to the publish bundle "
        f"(delete it to have one generated from the labels).\n"
        f"- `models/`: the Triton model repository (a link to `{app.model_repository}`); "
        f"put your own model there and name it in `inferer.args.model_name`.\n\n"
        f"Run it with `clara-napari run --app {dest} --input IN --output OUT`.\n\n"
        f"| label | name | colour |\n|---|---|---|\n{labels}\n", encoding="utf-8")
    return App(name=dest.name, folder=dest.resolve())
