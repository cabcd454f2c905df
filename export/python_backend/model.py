"""Triton Python-backend model: runs the version's model.onnx with ONNX Runtime (CPU target).

Copied unchanged into every CPU version by ``covidct export``. The backend's stub does not
see the project's virtual environment, so the launcher (``covidct triton``) passes its
site-packages in COVIDCT_SITE_PACKAGES, put on sys.path before numpy/onnxruntime load.
Each ``execute`` call gets the requests the dynamic batcher grouped and runs them as one
ONNX Runtime batch.
"""

import json
import os
import sys

_site = os.environ.get("COVIDCT_SITE_PACKAGES")
if _site and _site not in sys.path:
    sys.path.insert(0, _site)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        spec = json.loads(params["covidct_model_spec"])
        self.input_name = spec["input_name"]
        self.output_names = [spec["probabilities_name"], spec["cam_name"]]
        instances = sum(g.get("count", 1) for g in config.get("instance_group", [])) or 1
        threads = int(os.environ.get("COVIDCT_ORT_THREADS") or 0) or max(
            1, (os.cpu_count() or 1) // instances
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        images = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        sizes = [len(x) for x in images]
        outputs = self.session.run(
            self.output_names, {self.input_name: np.concatenate(images, axis=0)}
        )
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(name, out[start : start + n].astype(np.float32))
                for name, out in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
