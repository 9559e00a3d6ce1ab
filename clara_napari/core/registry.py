"""Name → class registries for the components of a Clara config.

Each component class is a pydantic model of its ``args`` (strict types, unknown args refused),
so a wrong config is caught at load time with the JSON path of the culprit. Registries only
ever map names to classes registered in code: a config can name a component but never make
Python import anything (custom components are registered through the
``clara_napari.components`` entry-point group, chosen by whoever installs the package).
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from .errors import ConfigError, ConfigProblems

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

log = logging.getLogger(__name__)
C = TypeVar("C", bound="Component")
T = TypeVar("T", bound=type)


class Component(BaseModel):
    """Base of every config component: its pydantic fields are the component's ``args``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)
    #: The name it was built under (set by the registry; several names may share a class).
    _config_name: str = PrivateAttr("")
    #: where it stands in the config (``writers[1]``), for errors found after loading
    _json_path: str = PrivateAttr("")

    @property
    def config_name(self) -> str:
        return self._config_name or type(self).__name__


def as_field_list(value: Any) -> Any:
    """Clara allows ``fields`` as a string or a list of strings; keep a list."""
    return [value] if isinstance(value, str) else value


class FieldsMixin(BaseModel):
    """``fields``: one data key or a list of them (default ``image``)."""

    fields: list[str] = ["image"]

    _normalise_fields = field_validator("fields", mode="before")(as_field_list)


class Registry:
    """Maps config names to component classes of one kind (transform, inferer, writer …)."""

    def __init__(self, kind: str, *, skipped: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._classes: dict[str, type[Component]] = {}
        #: names with no meaning at inference: skipped with a warning (name → why)
        self.skipped = dict(skipped or {})

    def register(self, *names: str) -> Callable[[T], T]:
        def decorate(cls: T) -> T:
            for name in names or (cls.__name__,):
                if name in self._classes:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[Component]:
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def build(self, spec: Any, path: str, file: str = "") -> Component | None:
        """Build one ``{"name": ..., "args": {...}}``; ``None`` for a skipped training-only name
        or an entry with ``"disabled": true`` (Clara's way of switching an entry off)."""
        if not isinstance(spec, dict):
            raise ConfigError(f"expected an object with 'name' and 'args', got {_kind(spec)}.", path=path, file=file)
        if "path" in spec:
            # Clara's custom components: {"name": "MyThing", "path": "my_module.MyThing"} imports code
            raise ConfigError(f"custom {self.kind} {_kind(spec.get('path'))}: a config can never import code; "
                              f"install a package that registers it through the '{ENTRY_POINT_GROUP}' entry-point "
                              "group (README: custom components).", path=f"{path}.path", file=file)
        unknown = sorted(set(spec) - {"name", "args", "disabled"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} (a component has only 'name' and 'args').",
                              path=f"{path}.{unknown[0]}", file=file)
        disabled = spec.get("disabled", False)
        if not isinstance(disabled, bool):
            raise ConfigError(f"'disabled' must be true or false, got {_kind(disabled)}.", path=f"{path}.disabled",
                              file=file)
        name = spec.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"'name' must be a string, got {_kind(name)}.", path=f"{path}.name", file=file)
        name = name.split("#", 1)[0]  # Clara's "Name#alias" (the alias is only for {"ref": ...} reuse)
        args = spec.get("args", {})
        if not isinstance(args, dict):
            raise ConfigError(f"'args' must be an object, got {_kind(args)}.", path=f"{path}.args", file=file)
        if disabled:
            log.info("%s: skipping disabled %s %r", path, self.kind, name)
            return None
        if name in self.skipped:
            log.warning("%s: skipping %s %r: %s", path, self.kind, name, self.skipped[name])
            return None
        cls = self._classes.get(name)
        if cls is None:
            close = difflib.get_close_matches(name, list(self._classes) + list(self.skipped), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            if "." in name:
                hint += (f" A dotted name is a custom component: a config can never import code; install a package "
                         f"that registers it through the '{ENTRY_POINT_GROUP}' entry-point group.")
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint}", path=f"{path}.name", file=file)
        try:
            component = cls.model_validate(args)
        except pydantic.ValidationError as exc:
            errors = _config_errors(exc, cls, f"{path}.args", file)
            raise (errors[0] if len(errors) == 1 else ConfigProblems(errors, file=file)) from None
        except (ValueError, TypeError) as exc:  # raised by a validator outside pydantic's wrapping
            raise ConfigError(str(exc), path=f"{path}.args", file=file) from None
        component._config_name = name
        component._json_path = path
        return component


def revalidated(component: C, updates: dict[str, Any], path: str, file: str = "") -> C:
    """A copy of ``component`` with ``updates`` applied and validated as the config's own args are
    (``model_copy(update=...)`` would skip validation); problems are :class:`ConfigError` s naming
    ``path``'s field."""
    cls = type(component)
    try:
        copy = cls.model_validate({**component.model_dump(), **updates})
    except pydantic.ValidationError as exc:
        errors = _config_errors(exc, cls, path, file)
        raise (errors[0] if len(errors) == 1 else ConfigProblems(errors, file=file)) from None
    copy._config_name = component._config_name
    copy._json_path = component._json_path
    return copy


ENTRY_POINT_GROUP = "clara_napari.components"
_plugins_loaded = False


def load_plugins() -> list[str]:
    """Import the modules named in the ``clara_napari.components`` entry-point group, once.

    This is how custom transforms, inferers and writers are added: a package installed by the
    user declares, in its own metadata,

        [options.entry_points]
        clara_napari.components =
            my_transforms = my_package.transforms

    and ``my_package.transforms`` registers its classes with ``@TRANSFORMS.register("Name")``.
    Installing the package is the opt-in; a config file alone can never import anything.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    from importlib.metadata import entry_points

    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
            loaded.append(entry.value)
        except Exception as exc:  # a broken plugin must not break the built-in components
            log.warning("clara-napari plugin %s (%s) failed to load: %s", entry.name, entry.value, exc, exc_info=True)
    return loaded


def _config_errors(exc: pydantic.ValidationError, cls: type[BaseModel], path: str, file: str) -> list[ConfigError]:
    """Every problem pydantic found in one component's args (each with its JSON path)."""
    errors, seen = [], set()
    for err in exc.errors(include_url=False):
        arg = tuple(err["loc"][:1])  # one problem per arg (a union type reports each alternative)
        if arg not in seen:
            seen.add(arg)
            errors.append(_config_error(err, cls, path, file))
    return errors


def _config_error(err: ErrorDetails, cls: type[BaseModel], path: str, file: str) -> ConfigError:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    where = f"{path}{loc}"
    if err["type"] == "extra_forbidden":
        arg = str(err["loc"][-1])
        close = difflib.get_close_matches(arg, list(cls.model_fields), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else f" Known args: {', '.join(cls.model_fields)}."
        return ConfigError(f"unknown arg {arg!r}.{hint}", path=where, file=file)
    if err["type"] == "missing":
        return ConfigError("this required arg is missing.", path=where, file=file)
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return ConfigError(f"{message} (got {_kind(err.get('input'))}).", path=where, file=file)


def _kind(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
