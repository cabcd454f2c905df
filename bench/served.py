"""What ``bench triton`` measures: the server (given, or started here) and its versions.

The served ModelSpec comes from the model's config on the server, as the gateway reads it;
what each version is (engine, precision, gate figures) from its manifest when the repository
is on this machine.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.sweep import BenchError
from covidct.config import ModelSpec


@contextlib.contextmanager
def triton(repository: Path | None, url: str | None, protocol: str) -> Iterator[str]:
    """The address to measure: ``url`` as given, or a tritonserver started on ``repository``."""
    if url:
        yield url
        return
    if repository is None:
        raise BenchError("give --repository DIR (a server is started) or --url HOST:PORT")
    from serving.server import TritonError, TritonServer, free_port

    with tempfile.TemporaryDirectory() as tmp:
        server = TritonServer(
            repository, free_port(), free_port(), free_port(), log_file=Path(tmp) / "triton.log"
        )
        try:
            server.start()
        except TritonError as e:
            raise BenchError(str(e)) from e
        try:
            yield server.grpc_address if protocol == "grpc" else server.url.removeprefix("http://")
        finally:
            server.stop()


def served_spec(url: str, model: str, version: str, protocol: str) -> ModelSpec:
    """The ModelSpec the server carries in the model's config (as the gateway reads it)."""
    from covidct.modelconfig import SPEC_PARAMETER, spec_of

    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        gclient = grpcclient.InferenceServerClient(url)
        config = gclient.get_model_config(model, version, as_json=True)["config"]
    else:
        import tritonclient.http as httpclient

        config = httpclient.InferenceServerClient(url).get_model_config(model, version)
    spec = spec_of(config)
    if spec is None:
        raise BenchError(f"model {model} carries no {SPEC_PARAMETER}; export it with covidct")
    return spec


def served_versions(
    repository: Path | None, model: str, versions: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """What each served version is, from its manifest (when the repository is local): the
    engine and precision (and ``bench engines``' name for it), and a reduced precision's gate
    figures against fp32."""
    if repository is None:
        return {}
    from export.repository import read_manifest

    info = {}
    for v in versions:
        if not v:
            continue
        manifest = read_manifest(repository / model, int(v))
        engine, bench_engine, gate = _engine_of(repository / model / v, manifest)
        info[v] = {
            "engine": engine,
            "bench_engine": bench_engine,
            "agreement": gate.get("top1_agreement_decisive"),
            "max_abs_prob_diff": gate.get("max_abs_prob_diff"),
        }
    return info


def _engine_of(version_dir: Path, manifest: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A version's engine as the report names it, as ``bench engines`` names it, and its gate
    figures (empty for fp32)."""
    openvino = manifest.get("openvino") or {}
    if openvino:
        from export.openvino import read_engine

        precision = openvino["precision"]
        engine, gate = f"OpenVINO {precision}", openvino.get("agreement") or {}
        bench_engine = f"openvino-{precision}"
        split = read_engine(version_dir)["streams_from_batch"]
        if split:  # in process as served: batches from ``split`` on the streams
            engine += f" (streams from batch {split})"
            bench_engine += f"-streams{split}"
        return engine, bench_engine, gate
    if manifest.get("int8"):
        return "ONNX Runtime int8", "ort-int8", manifest["int8"]
    return f"{manifest.get('target', '?')} fp32", "ort-fp32", {}


def local_onnx(repository: Path | None, model: str, version: str) -> Path | None:
    """The served version's model.onnx when the repository is on this machine."""
    if repository is None:
        return None
    from export.repository import versions as versions_of

    chosen = version or str(max(versions_of(repository / model), default=0))
    path = repository / model / chosen / "model.onnx"
    return path if path.is_file() else None
