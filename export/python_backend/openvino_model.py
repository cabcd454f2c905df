"""Triton Python-backend model: runs the version's model.onnx with OpenVINO (openvino target).

Copied unchanged as ``model.py`` into every openvino version by ``covidct export``; the
version's ``engine.json`` says the precision (fp32, bf16, int8: the QDQ model.onnx) and from
which batch size a batch is split over OpenVINO's THROUGHPUT streams (``streams_from_batch``;
0: never). Like the ONNX Runtime backend, it sees the project's packages through
COVIDCT_SITE_PACKAGES and answers each batch the dynamic batcher formed at once: smaller
batches as one LATENCY request on all the instance's threads, larger ones as one request per
stream, run together. The CPU's threads are split over the model's instances
(COVIDCT_OV_THREADS overrides). Export compiled the served model into the version's
``ov-cache/`` (keyed by the model's content, not its path), so a load skips compilation, also
from a read-only repository (:func:`cache_folder`). Self-contained like
``model.py`` (each is copied alone into a version folder, where the backend's stub cannot import
covidct), so the batch splitting below repeats that file's and ``export.openvino.Engine``'s.
"""

import json
import os
import sys

_site = os.environ.get("COVIDCT_SITE_PACKAGES")
if _site and _site not in sys.path:
    sys.path.insert(0, _site)

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the QDQ nodes decide


def cache_folder(version_dir):
    """The version's ``ov-cache/`` for OpenVINO's CACHE_DIR, or None.

    Export put the served model's blob there. OpenVINO reads a blob from a read-only folder
    (compose and Kubernetes mount the repository read-only) and, finding none, compiles without
    writing one; but a blob it cannot read fails the load, so the folder is used only when every
    file in it is readable by this process.
    """
    folder = os.path.join(version_dir, "ov-cache")
    if not os.path.isdir(folder):
        return None
    names = os.listdir(folder)
    return folder if all(os.access(os.path.join(folder, n), os.R_OK) for n in names) else None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        spec = json.loads(params["covidct_model_spec"])
        self.input_name = spec["input_name"]
        self.output_names = [spec["probabilities_name"], spec["cam_name"]]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "engine.json")) as f:
            engine = json.load(f)
        instances = sum(g.get("count", 1) for g in config.get("instance_group", [])) or 1
        threads = int(os.environ.get("COVIDCT_OV_THREADS") or 0) or max(
            1, (os.cpu_count() or 1) // instances
        )
        core = ov.Core()
        cache = cache_folder(version_dir)
        if cache is not None:
            core.set_property({"CACHE_DIR": cache})
        # The read model, not its path: OpenVINO keys a path's cached blob by the path, so
        # export's blob (compiled in its staging folder) is found only by content.
        model = core.read_model(os.path.join(version_dir, "model.onnx"))
        compile_config = {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[engine["precision"]],
            "INFERENCE_NUM_THREADS": threads,
        }
        latency = core.compile_model(
            model, "CPU", {**compile_config, "PERFORMANCE_HINT": "LATENCY"}
        )
        self.request = latency.create_infer_request()
        self.streams_from_batch = int(engine.get("streams_from_batch") or 0)
        self.queue, self.jobs, self.parts = None, 1, {}
        if self.streams_from_batch:
            streams = core.compile_model(
                model, "CPU", {**compile_config, "PERFORMANCE_HINT": "THROUGHPUT"}
            )
            self.jobs = int(streams.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self.queue = ov.AsyncInferQueue(streams, self.jobs)
            self.queue.set_callback(self._done)

    def _done(self, request, index):
        self.parts[index] = [
            np.array(request.get_tensor(n).data, dtype=np.float32) for n in self.output_names
        ]

    def _infer(self, batch):
        if self.queue is None or len(batch) < self.streams_from_batch:
            result = self.request.infer({self.input_name: batch})
            return [np.asarray(result[n], dtype=np.float32) for n in self.output_names]
        self.parts.clear()
        chunks = np.array_split(batch, min(self.jobs, len(batch)))
        for i, chunk in enumerate(chunks):
            self.queue.start_async({self.input_name: chunk}, i)
        self.queue.wait_all()
        return [
            np.concatenate([self.parts[i][k] for i in range(len(chunks))])
            for k in range(len(self.output_names))
        ]

    def execute(self, requests):
        images = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        sizes = [len(x) for x in images]
        outputs = self._infer(np.concatenate(images, axis=0))
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(name, out[start : start + n])
                for name, out in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.request = self.queue = None
