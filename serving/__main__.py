"""``python -m serving``: the tritonserver of ``covidct triton`` without the covidct command
line, for the CPU Triton image (deploy/triton-cpu/Dockerfile), which carries only this
package, nvidia-pytriton and ONNX Runtime. Same options, same run loop."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covidct.addresses import LOCALHOST, TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT
from serving.server import MODEL_CONTROL, TritonServer, run_until_stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--address", default=LOCALHOST, help="0.0.0.0 only in a container")
    parser.add_argument("--grpc-port", type=int, default=TRITON_GRPC_PORT)
    parser.add_argument("--http-port", type=int, default=TRITON_HTTP_PORT)
    parser.add_argument("--metrics-port", type=int, default=TRITON_METRICS_PORT)
    parser.add_argument("--model-control", choices=MODEL_CONTROL, default="explicit")
    parser.add_argument("--log-file", type=Path, default=None, help="'-': this stdout")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to get ready")
    args = parser.parse_args(argv)
    server = TritonServer(
        args.repository,
        args.grpc_port,
        args.http_port,
        args.metrics_port,
        args.model_control,
        log_file=args.log_file,
        address=args.address,
    )
    return run_until_stopped(server, args.timeout, say=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
