"""Triton Python-backend model that costs nothing: uniform probabilities, a zero CAM.

Served by ``covidct bench capacity`` under the ModelSpec's tensor names so the gateway
does all its real work (upload, decode, body box, resize, gRPC, JSON) while the model
does none: what remains is the gateway's own ceiling.
"""

import json
import os
import sys

_site = os.environ.get("COVIDCT_SITE_PACKAGES")  # the stub does not see the venv (docs/design.md)
if _site and _site not in sys.path:
    sys.path.insert(0, _site)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        outputs = {o["name"]: o["dims"] for o in config["output"]}
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        spec = json.loads(params["covidct_model_spec"])
        self.input_name = spec["input_name"]
        self.prob_name, self.cam_name = spec["probabilities_name"], spec["cam_name"]
        self.cam_dims = [int(d) for d in outputs[self.cam_name]]
        self.classes = int(outputs[self.prob_name][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().shape[0]
            probs = np.full((n, self.classes), 1.0 / self.classes, np.float32)
            cam = np.zeros((n, *self.cam_dims), np.float32)
            tensors = [pb_utils.Tensor(self.prob_name, probs), pb_utils.Tensor(self.cam_name, cam)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
