"""Inferers and writers carry their behaviour: how each runs the model, how each makes its output.

Fast: a plain function stands in for the model's weights (the engine and the inferers are what is
tested), tiny volumes, no server.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from clara_napari.core.errors import Cancelled, ConfigError
from clara_napari.core.inferers import (
    InferenceRun,
    ScanWindowInferer,
    SimpleInferer,
    SlidingWindowInferer,
)
from clara_napari.core.label_table import LabelTable
from clara_napari.core.model_repository import TensorSpec
from clara_napari.core.progress import CancelToken
from clara_napari.core.transforms import Sample
from clara_napari.core.transforms.spatial import LoadNifti
from clara_napari.core.volume import Volume
from clara_napari.core.windows import plan_windows
from clara_napari.core.writers import (
    ClassificationResult,
    ClassificationWriter,
    VolumeWriter,
)

from helpers import FunctionModel, oblique_volume

RUN = InferenceRun()


class Recorder:
    """The shapes of the batches a model was sent."""

    def __init__(self, fn=lambda batch: batch * 2.0):
        self.shapes: list[tuple[int, ...]] = []
        self.fn = fn

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        return self.fn(batch)


def image(shape=(5, 6, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def classifier(scores, *, dims=(3,)) -> FunctionModel:
    model = FunctionModel(lambda batch: np.asarray(scores, np.float32)[None])
    model.output = TensorSpec("y", "FP32", dims)
    return model


# -- inferers ---------------------------------------------------------------------------------
def test_simple_inferer_sends_the_whole_volume_padded_to_its_multiple_and_crops():
    recorder = Recorder()
    data = image()
    out = SimpleInferer(pad_to_multiple=4).infer(data, FunctionModel(recorder, out_channels=1), RUN)
    assert recorder.shapes == [(1, 1, 8, 8, 8)]
    np.testing.assert_array_equal(out, data * 2.0)


def test_scan_window_inferer_scans_in_batches_and_stitches_exactly():
    recorder = Recorder()
    data = image((9, 10, 11))
    inferer = ScanWindowInferer(roi_size=[4, 4, 4], overlap=0.5, batch_size=3, requests_in_flight=1)
    out = inferer.infer(data, FunctionModel(recorder, out_channels=1), RUN)
    windows = len(plan_windows(data.shape[1:], (4, 4, 4), 0.5))
    assert sum(shape[0] for shape in recorder.shapes) == windows
    assert max(shape[0] for shape in recorder.shapes) == 3 and all(shape[2:] == (4, 4, 4) for shape in recorder.shapes)
    np.testing.assert_allclose(out, data * 2.0, rtol=1e-6)


def test_use_scanning_window_false_makes_one_whole_volume_request():
    recorder = Recorder()
    data = image()
    out = ScanWindowInferer(roi_size=[4, 4, 4]).infer(data, FunctionModel(recorder, out_channels=1),
                                                      InferenceRun(use_scanning_window=False))
    assert recorder.shapes == [(1, 1, 5, 6, 7)]
    np.testing.assert_array_equal(out, data * 2.0)


def test_sliding_window_inferer_reads_monai_names():
    inferer = SlidingWindowInferer(roi_size=[4, 4, 4], sw_batch_size=2, mode="gaussian", cval=-1.0)
    assert (inferer.batch_size, inferer.blending, inferer.pad_value) == (2, "gaussian", -1.0)
    recorder = Recorder(lambda batch: np.ones_like(batch))
    out = inferer.infer(image((6, 6, 6)), FunctionModel(recorder, out_channels=1), RUN)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)   # a weighted mean of ones is one
    assert all(shape[0] <= 2 for shape in recorder.shapes)


@pytest.mark.parametrize("inferer", [SimpleInferer(output_type="CLASSIFICATION"),
                                     ScanWindowInferer(output_type="CLASSIFICATION", roi_size=[2, 2, 2])])
def test_classification_apps_get_class_scores_from_one_request(inferer):
    model = classifier([0.1, 0.7, 0.2])
    scores = inferer.infer(image(), model, RUN)
    assert scores.dtype == np.float32 and scores.tolist() == pytest.approx([0.1, 0.7, 0.2])
    assert model.calls == 1


def test_a_model_without_spatial_output_axes_is_a_classifier_whatever_the_app_says():
    model = classifier([0.4, 0.6], dims=(2,))
    assert ScanWindowInferer(roi_size=[2, 2, 2]).classifies(model)
    assert ScanWindowInferer(roi_size=[2, 2, 2]).infer(image(), model, RUN).shape == (2,)
    assert not SimpleInferer().classifies(FunctionModel(lambda b: b))


def test_classifier_pads_refuses_a_wrong_shape_and_honours_cancel():
    recorder = Recorder(lambda batch: np.zeros((1, 3), np.float32))
    model = FunctionModel(recorder)
    model.output = TensorSpec("y", "FP32", (3,))
    SimpleInferer(pad_to_multiple=4, output_type="CLASSIFICATION").infer(image(), model, RUN)
    assert recorder.shapes == [(1, 1, 8, 8, 8)]
    with pytest.raises(ConfigError, match=r"expected \[1, classes\]"):
        SimpleInferer(output_type="CLASSIFICATION").infer(image(), classifier([[0.1, 0.9]]), RUN)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        SimpleInferer(output_type="CLASSIFICATION").infer(image(), classifier([0.1, 0.9]), RUN, cancel=token)


def test_scanning_needs_a_window_from_the_config_or_the_model():
    with pytest.raises(ConfigError, match="roi_size"):
        ScanWindowInferer().infer(image(), FunctionModel(lambda b: b, out_channels=1), RUN)
    fixed = FunctionModel(lambda b: b, out_channels=1)
    fixed.input = TensorSpec("x", "FP32", (1, 4, 4, 4))
    assert ScanWindowInferer().window_for(fixed, RUN) == [4, 4, 4]


def test_a_model_given_on_the_command_line_wins_over_the_config_sizes(caplog):
    model = FunctionModel(lambda b: b, out_channels=1, max_batch_size=2)
    model.input = TensorSpec("x", "FP32", (1, 4, 4, 4))
    inferer = ScanWindowInferer(roi_size=[6, 6, 6], batch_size=8)
    assert inferer.window_for(model, RUN) == [6, 6, 6] and inferer.batch_for(model, RUN) == 8
    override = InferenceRun(model_override=True)
    with caplog.at_level(logging.WARNING, logger="clara_napari.core.inferers"):
        assert inferer.window_for(model, override) == [4, 4, 4]
        assert inferer.batch_for(model, override) == 2
    assert "takes windows of [4, 4, 4] only" in caplog.text and "takes batches of 2 at most" in caplog.text


# -- writers ----------------------------------------------------------------------------------
def loaded(volume: Volume) -> Sample:
    sample = Sample(image=volume)
    LoadNifti(fields=["image"])(sample)
    return sample


def test_volume_writer_brings_the_field_back_with_the_source_geometry_bit_for_bit():
    source = oblique_volume()
    sample = loaded(source)
    voxels = sample["image"]                                      # [x, y, z]
    labels = (voxels > np.median(voxels)).astype(np.float32)[None]  # [1, x, y, z], as the model's field
    sample.put("model", labels, sample.meta["image"].copy(is_label=True))
    out = VolumeWriter(dtype="uint8").output(sample, source, LabelTable())
    assert isinstance(out, Volume) and out.array.dtype == np.uint8
    assert (out.spacing, out.origin, out.direction) == (source.spacing, source.origin, source.direction)
    np.testing.assert_array_equal(out.array, labels[0].transpose(2, 1, 0))


def test_volume_writer_refuses_a_field_with_several_channels():
    source = oblique_volume()
    sample = loaded(source)
    sample.put("model", np.stack([sample["image"]] * 2), sample.meta["image"])
    with pytest.raises(ConfigError, match="2 channels"):
        VolumeWriter().output(sample, source, LabelTable())


def test_classification_writer_names_classes_from_its_args_then_the_app_then_numbers():
    source = oblique_volume()
    sample = loaded(source)
    sample.put("model", np.array([0.2, 0.9, 0.6], np.float32), sample.meta["image"])
    table = LabelTable.from_pairs({1: ("nodule", "#ff0000")})
    result = ClassificationWriter(label_names=["normal"], threshold=0.5).output(sample, source, table)
    assert isinstance(result, ClassificationResult)
    assert result.names == ("normal", "nodule", "class_2")
    assert result.positives == ["nodule", "class_2"]



def test_every_writer_takes_the_app_and_model_so_callers_need_not_ask(tmp_path):
    source = oblique_volume()
    sample = loaded(source)
    sample.put("model", np.zeros((1, *sample["image"].shape), np.float32), sample.meta["image"].copy(is_label=True))
    writer = VolumeWriter()
    path = writer.write(writer.output(sample, source, LabelTable()), tmp_path / "v.mhd", app=None, model="m")
    assert path.is_file()
    scores = ClassificationWriter().result([0.3, 0.8], LabelTable())
    path = ClassificationWriter().write(scores, tmp_path / "output-v.csv", forbid=[tmp_path / "v.nii"], app=None, model="m")
    assert path.read_text().splitlines()[1] == "v.nii,0.5,class_1,class_1:0.8000 class_0:0.3000"
