"""The embedded server's generated model repository and backend folder.

Each ONNX, OpenVINO IR or TorchScript model of the user's (standard) repository is served by the
python-backend program :mod:`clara_napari.core.triton_model.model` (a real file, copied into every
version folder), which runs it with the project's runtime layer; the model's own ``config.pbtxt``
is data: only its tensors and batch size are kept, its parameters, agents and warm-up are dropped,
and the program's instructions are ours. Python-backend models are linked as they are.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..errors import ConfigError, ServerError
from ..model_repository import ModelSpec, is_plain_name, list_models
from ..runtimes import FORMAT_RUNTIMES, choose_runtime, is_supported_format
from ..triton_model import MODEL_PROGRAM
from .locations import model_program_paths
from .workdirs import link_model_folder, write_private

log = logging.getLogger(__name__)


def prepare_backends(dist: Path, workdir: Path) -> Path:
    """``<workdir>/backends/python``: the wheel's python backend, with the stub built for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"{dist}: the nvidia-pytriton wheel has no python backend stub for Python {version}.")
    target = workdir / "backends" / "python"
    (workdir / "backends").mkdir(mode=0o700)
    target.mkdir(mode=0o700)
    for item in (dist / "backends" / "python").iterdir():
        if item.name != "__pycache__":
            (target / item.name).symlink_to(item)
    (target / "triton_python_backend_stub").symlink_to(stub)
    return target.parent


def prepare_repository(workdir: Path, repository: Path, wanted: list[str] | None, runtime: str | None,
                       threads: int) -> tuple[Path, list[ModelSpec]]:
    """``<workdir>/models``: the models of ``repository`` (only ``wanted`` ones if given) the embedded
    server serves, and their specs."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    out = workdir / "models"
    out.mkdir(mode=0o700)
    served: list[ModelSpec] = []
    specs = list_models(repository)
    if wanted is not None:
        missing = [name for name in wanted if name not in {s.name for s in specs}]
        if missing:
            raise ServerError(f"{repository}: no model {missing[0]!r} in the repository "
                              f"(models: {', '.join(s.name for s in specs) or 'none'}).")
        specs = [s for s in specs if s.name in wanted]
    for spec in specs:
        if not is_plain_name(spec.name):   # list_models checks it; a path must never come of it
            raise ServerError(f"{spec.path}: the model name {spec.name!r} is not a plain name.")
        config_path = spec.path or repository / spec.name / "config.pbtxt"
        source = config_path.parent
        if is_supported_format(spec.runtime):
            model_runtime = choose_model_runtime(spec, runtime)
            if model_runtime is None:
                continue
            config = mc.ModelConfig()
            text_format.Parse(config_path.read_text(encoding="utf-8"), config)
            config.name = spec.name
            config.ClearField("platform")
            config.backend = "python"
            config.ClearField("default_model_filename")
            # an ONNX model's config is data: nothing of it may reach the python backend as an
            # instruction (EXECUTION_ENV_PATH unpacks and sources an environment: shell code)
            for field in ("parameters", "model_repository_agents", "model_warmup"):
                config.ClearField(field)
            del config.instance_group[:]
            config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
            versions = sorted(int(p.name) for p in source.iterdir() if p.is_dir() and p.name.isdigit())
            folder = out / spec.name
            folder.mkdir(mode=0o700)
            program = Path(MODEL_PROGRAM).read_text(encoding="utf-8")
            for version in versions:
                spec.model_file(version)  # each version has its file
                (folder / str(version)).mkdir(mode=0o700)
                write_private(folder / str(version) / "model.py", program)
                write_private(folder / str(version) / "clara_napari_sys_path.json",
                              json.dumps(model_program_paths()))
            # the program's instructions: ours only (the model's own parameters were dropped above)
            params = {"clara_napari_model_folder": str(source),
                      "clara_napari_model_filename": spec.model_file(versions[-1]).name if versions else "",
                      "clara_napari_format": spec.runtime, "clara_napari_runtime": model_runtime,
                      "clara_napari_threads": str(threads)}
            for key, value in params.items():
                config.parameters[key].string_value = value
            write_private(folder / "config.pbtxt", text_format.MessageToString(config))
        elif spec.runtime == "python":
            link_model_folder(source, out / spec.name)
        else:
            log.warning("%s: the embedded server cannot serve %r models; skipped", spec.path, spec.runtime)
            continue
        served.append(spec)
    if not served:
        raise ServerError(f"{repository}: no model the embedded server can serve "
                          "(ONNX, OpenVINO, TorchScript or python backend).")
    return out, served


def choose_model_runtime(spec: ModelSpec, runtime: str | None) -> str | None:
    """The runtime serving ``spec``: the requested one where its format admits it, else the default."""
    requested = runtime if runtime in FORMAT_RUNTIMES.get(spec.runtime, ()) else None
    try:
        return choose_runtime(spec.runtime, requested, where=str(spec.path), preferred=spec.preferred_runtime)
    except ConfigError as exc:
        log.warning("%s; skipped", exc)
        return None
