"""clara-napari's Triton python-backend model: runs a model file with the project's runtime layer.

The embedded server (:mod:`clara_napari.core.triton.embedded`) copies this file as ``model.py`` into each
version folder of its generated repository; the model's ``config.pbtxt`` says what to run in its
``parameters``: ``clara_napari_model_folder`` and ``clara_napari_model_filename`` (the user's
``<folder>/<version>/model.onnx`` / ``model.xml`` / ``model.pt``), ``clara_napari_format`` (the original platform or backend), ``clara_napari_runtime``
(``openvino``, ``onnxruntime`` or ``torch``), ``clara_napari_threads``. ``clara_napari_sys_path.json`` beside this file lists this environment's
package folders, which the stub's interpreter does not have; the project's own folder comes
first, so the stub runs the same clara_napari as the launcher.
"""
import json
import os
import sys

# before numpy and triton_python_backend_utils are imported: this environment's packages first
# (the launcher writes the list beside this file), so that every module sees one numpy
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "clara_napari_sys_path.json")) as _file:
    sys.path[:0] = [p for p in json.load(_file) if p not in sys.path]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from clara_napari.core.runtimes import open_engine  # noqa: E402


def _parameters(config: dict) -> dict:
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        model_file = os.path.join(params["clara_napari_model_folder"], str(int(args["model_version"])),
                                  params["clara_napari_model_filename"])
        self.engine = open_engine(model_file, params["clara_napari_format"],
                                  runtime=params["clara_napari_runtime"] or None,
                                  threads=int(params["clara_napari_threads"] or 0) or None)
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        if hasattr(self.engine, "bind"):  # TorchScript: positions from the config's names
            self.engine.bind(self.inputs, self.outputs)
        self.dtypes = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                # inputs are read in place from the shared-memory slot; outputs are copied once, into the response
                results = self.engine.run(feed, self.outputs, copy=False)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result, dtype=self.dtypes[name]))
                           for name, result in zip(self.outputs, results, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - the server answers every request: the error goes to the client
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self):
        self.engine = None
