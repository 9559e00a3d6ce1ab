"""Shared by unit/test_published_configs.py and integration/test_published_configs_runs.py (definitions both use)."""
from __future__ import annotations

from pathlib import Path

from clara_napari.cli import main
from clara_napari.core.apps import DATA_ROOT
from clara_napari.core.config import CLARA3, CLARA4

PUBLISHED = Path(__file__).resolve().parents[1] / "data" / "published_configs"
T1 = DATA_ROOT / "sample_data" / "mr_t1" / "mr_t1_colin27.nii.gz"
CT = DATA_ROOT / "sample_data" / "chest_ct" / "chest_ct_lung2.nii.gz"

#: (config, format, bundled model, input, the writers' fields)
RUNNABLE = [
    ("clara3_spleen_getting_started/config/config_validation.json", CLARA3, "deepbet_brain_t1", "t1",
     ["model", "pred_class0", "pred_class1", "pred_class2"]),
    ("clara3_spleen_getting_started/config/config_validation_chpt.json", CLARA3, "deepbet_brain_t1", "t1",
     ["model", "pred_class0", "pred_class1", "pred_class2"]),
    ("clara3_spleen_fl/config/config_validation_ckpt.json", CLARA3, "lung_air_density", "ct",
     ["model", "pred_class0", "pred_class1"]),
    ("clara4_spleen_getting_started/config/config_inference.json", CLARA4, "deepbet_brain_t1", "t1", ["pred"]),
    ("clara4_spleen_getting_started/config/config_validation.json", CLARA4, "deepbet_brain_t1", "t1", ["pred"]),
    ("clara4_spleen_fl/config/config_validation.json", CLARA4, "lung_air_density", "ct", ["pred"]),
    ("clara4_ea_spleen_getting_started/config/config_inference.json", CLARA4, "deepbet_brain_t1", "t1", ["pred"]),
]

#: (config, the JSON paths of every problem reported)
REFUSED = [
    ("heaortanet/config/config_validation.json", ["pre_transforms[3].path", "post_transforms[0].path"]),
    ("clara4_ea_brats/config/config_validation_ts.json",
     ["pre_transforms[1].path", "pre_transforms[2].name", "post_transforms[2].name"]),
    ("clara_deploy_lung_lesion/config/config_inference.json",
     ["writers[0].args.write_path", "writers[0].args.dtypes", "inferer.name"]),
]
AIAA_CONFIGS = [("heaortanet/config/config_aiaa.json", "train1-1"), ("spleen_aiaa/config/config_aiaa.json", "inference")]


def _run(args, cwd: Path, monkeypatch) -> int:
    cwd.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(cwd)
    return main(args)
