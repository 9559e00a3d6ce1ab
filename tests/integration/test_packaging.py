"""The product as a stranger installs it: the wheel in a fresh venv, used from an unrelated folder,
and its dependencies resolved for the platforms napari users are on.

These tests build the wheel and talk to the package index (the only network CI has), so they are
slow; they are the only proof that the README's `pip install` line works outside this checkout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
pytestmark = [pytest.mark.slow, pytest.mark.wheel]


def _macos(arch: str, versions: list[str]) -> list[str]:
    extra = ["universal2"] + (["intel"] if arch == "x86_64" else [])
    return [f"macosx_{v}_{a}" for v in versions for a in [arch, *extra]]


#: what pip on a current machine of each kind accepts (a Mac on macOS 14 also takes 13.0 … 11.0 wheels)
PLATFORMS = {
    "macos-arm64": _macos("arm64", ["14_0", "13_0", "12_0", "11_0"]),
    "macos-x86_64": _macos("x86_64", ["13_0", "12_0", "11_0", "10_16", "10_15", "10_14", "10_13", "10_12", "10_9"]),
    "windows-amd64": ["win_amd64"],
    # glibc 2.28 (RHEL 8): older than the 2.35 that nvidia-pytriton needs, so no embedded server
    "linux-glibc2.28-x86_64": [f"manylinux_2_{n}_x86_64" for n in (28, 27, 26, 25, 24, 17)] + ["manylinux2014_x86_64"],
}


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=900)
    [wheel] = out.glob("clara_napari-*.whl")
    return wheel


def test_wheel_carries_apps_models_and_samples(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
    for needed in ("clara_napari/napari.yaml", "clara_napari/resources/icon.png",
                   "clara_napari/data/config/brain_extraction_t1/config_inference.json",
                   "clara_napari/data/config/lung_ct/config_inference.json",
                   "clara_napari/data/sample_data/models/deepbet_brain_t1/1/model.onnx",
                   "clara_napari/data/sample_data/models/lung_air_density/config.pbtxt",
                   "clara_napari/data/sample_data/mr_t1/mr_t1_colin27.nii.gz",
                   "clara_napari/data/sample_data/reference/mr_t1_colin27_brain_mask.nii.gz",
                   "clara_napari/data/sample_data/chest_ct/chest_ct_lung2.nii.gz"):
        assert needed in names, needed
    metadata = zipfile.ZipFile(built_wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    # the embedded server is an extra: the base install resolves where nvidia-pytriton has no wheel
    assert all("nvidia-pytriton" not in r or "extra ==" in r for r in requires), requires
    assert not any(r.startswith("Requires-Dist: PyQt") and "extra == \"all\"" in r for r in requires), requires


def _dry_run(wheel: Path, extras: str, platforms: list[str], target: Path) -> dict:
    report = target / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--python-version", "3.11", "--target", str(target / "site"),
               "--report", str(report)]
    for tag in platforms:
        command += ["--platform", tag]
    done = subprocess.run(command + [f"{wheel}[{extras}]"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_resolves_on_other_platforms(built_wheel, platform, tmp_path):
    """`pip install clara-napari[all,qt]` resolves with binary wheels only on macOS, Windows, older Linux."""
    report = _dry_run(built_wheel, "all,qt", PLATFORMS[platform], tmp_path)
    names = {item["metadata"]["name"].lower() for item in report["install"]}
    assert {"clara-napari", "napari", "onnxruntime", "simpleitk", "tritonclient", "pyqt6"} <= names
    assert "nvidia-pytriton" not in names


def test_server_extra_resolves_on_linux_with_new_glibc(built_wheel, tmp_path):
    tags = [f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)] + ["manylinux2014_x86_64"]
    report = _dry_run(built_wheel, "all,qt,server", tags, tmp_path)
    assert "nvidia-pytriton" in {item["metadata"]["name"].lower() for item in report["install"]}


@pytest.mark.triton
@pytest.mark.timeout(2400)
def test_wheel_in_a_fresh_venv_from_another_folder(built_wheel, tmp_path):
    """The README's user path: pip install the wheel, then the CLI, the notebook and napari elsewhere."""
    from helpers.viewer import ensure_display

    venv = tmp_path / "venv"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # nothing of this checkout may leak in: no PYTHONPATH (pip would take the checkout for an install)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("NVIDIA_CLARA_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), CLARA_NAPARI_CONFIG_DIR=str(tmp_path / "settings"),
               NAPARI_APPLICATION_IPY_INTERACTIVE="false", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env, cwd=elsewhere)
    python = venv / "bin" / "python"
    cli = venv / "bin" / "clara-napari"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{built_wheel}[all,qt,server]",
                    "nbclient", "nbformat", "ipykernel"], check=True, timeout=1800, env=env, cwd=elsewhere)

    def run(*args: str, timeout: float = 600) -> str:
        done = subprocess.run([str(a) for a in args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    where = run(python, "-c", "import clara_napari, sys; print(clara_napari.__file__)")
    assert where.startswith(str(venv)), where                         # the wheel, not this checkout

    sample = run(cli, "sample", "--output", "sample_out")               # embedded Triton from the wheel
    dice = float(sample.split("dice ")[1].split()[0])
    assert dice >= 0.940, sample
    assert (elsewhere / "sample_out" / "publish" / "config.meta").is_file()

    apps = run(cli, "apps")
    assert "brain_extraction_t1" in apps and "lung_ct" in apps, apps
    models = run(cli, "models", "--server", "local")
    assert "deepbet_brain_t1" in models and "READY" in models, models
    bench = run(cli, "bench", "--quick", "--no-memory", timeout=900)
    assert "local" in bench, bench

    # the quick-start notebook as a user runs it: the venv's own kernel, in this folder
    display = ensure_display()
    assert display, "no X display and no Xvfb for napari"
    env["DISPLAY"] = display
    script = (
        "import nbformat\nfrom nbclient import NotebookClient\n"
        f"nb = nbformat.read({str(NOTEBOOK)!r}, as_version=4)\n"
        "NotebookClient(nb, timeout=300, kernel_name='python3').execute()\n"
        "print(''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])))\n")
    notebook = run(python, "-c", script, timeout=900)
    assert "same grid as the crop: True" in notebook, notebook

    # napari's File → Open Sample, through npe2's manifest of the installed wheel
    opened = run(python, "-c",
                 "import napari\nv = napari.Viewer(show=False)\nv.open_sample('clara-napari', 'mr_t1')\n"
                 "layer = v.layers[0]\nprint(layer.data.shape, tuple(layer.scale))\nv.close()", timeout=300)
    assert "(181, 217, 181) (1.0, 1.0, 1.0)" in opened, opened
    assert "valid" in run(venv / "bin" / "npe2", "validate", "clara-napari")
