"""The composed stack for real (``make compose-test``): docker-compose.yml's CPU profile built
and started with the host-network override (deploy/compose.test.yml, every port on 127.0.0.1),
answering real PNG and DICOM slices exactly as ``covidct serve`` does on the same repository,
exporting metrics, taking a ``covidct redeploy`` under load without a failed request, and its
containers running as non-root on read-only root filesystems; with the ``pacs`` profile, a real
CT series stored into the composed Orthanc comes back from the composed DICOM node as an SR.

Needs a Docker daemon (DOCKER_HOST; ``make compose-test`` starts its own) and docker-compose.
Images build on debootstrap bases (deploy/base-image.sh: the runtime base, and a build base
with a C compiler for the gateway's kernels) from a wheelhouse filled by ``pip download`` on this
host, since these machines reach no image registry; all are cached between runs
(COVIDCT_COMPOSE_BASE_IMAGE=python:3.11-slim-bookworm uses the public bases and PyPI instead).
COVIDCT_TEST_CI_RUN=RUN serves that run instead of training a small one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.corpus import real_data_dir, real_pngs
from serving.server import free_port
from tests.cli_helpers import TINY_TRAIN, covidct
from tests.loadclient import Load, assert_one_clean_switch, p99
from tests.waiting import http_status, poll

pytestmark = [pytest.mark.compose, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROJECT = "covidct-compose-test"
ADMIN = "compose-test-admin-key"
TAG = "compose-test"
GATEWAY_IMAGE_LIMIT = 400 * 1000 * 1000
STAMP = ".stamp"


def sh(*cmd: str | Path, env: dict[str, str] | None = None, timeout: int = 1500) -> str:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@dataclass
class Stack:
    env: dict[str, str]
    repository: Path
    run: Path
    gateway: str
    grpc: str
    triton_metrics: str
    timings: dict[str, float]

    def compose(self, *args: str, timeout: int = 1500) -> str:
        return sh(*compose_cmd(*args), env=self.env, timeout=timeout)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()


#: The host ports the test stack listens on (host network), each picked free.
PORTS = (
    "TRITON_GRPC_PORT", "TRITON_HTTP_PORT", "TRITON_METRICS_PORT", "GATEWAY_PORT",
    "PACS_HTTP_PORT", "PACS_DICOM_PORT", "NODE_DICOM_PORT", "NODE_HTTP_PORT",
)  # fmt: skip


def compose_cmd(*args: str) -> list[str | Path]:
    """docker-compose on the CPU profile with the test's host-network override."""
    files = ["-f", REPO / "docker-compose.yml", "-f", REPO / "deploy" / "compose.test.yml"]
    return ["docker-compose", "-p", PROJECT, *files, "--profile", "cpu", "--profile", "pacs", *args]


def compose_logs(env: dict[str, str], tail: int) -> str:
    """Each service's last ``tail`` log lines (and what docker-compose said on stderr)."""
    logs = subprocess.run(
        compose_cmd("logs", "--no-color", "--tail", str(tail)),
        capture_output=True,
        text=True,
        env=env,
    )
    return logs.stdout + logs.stderr


def fill_wheelhouse(env: dict[str, str]) -> None:
    """pip download of both images' packages on this host (skipped when the lock and the
    requirement files are unchanged since the last fill)."""
    house = REPO / "deploy" / "wheelhouse"
    reqs = [REPO / "requirements.lock", *sorted((REPO / "deploy").glob("*/requirements.txt"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in reqs)).hexdigest()
    if (house / STAMP).is_file() and (house / STAMP).read_text() == digest:
        return
    args = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", house]
    args += ["-c", reqs[0]]
    for req in reqs[1:]:
        args += ["-r", req]
    sh(*args, env=env)
    (house / STAMP).write_text(digest)


def small_run(tmp: Path) -> Path:
    """A small real training run (TINY_TRAIN: VGG16 32², 1 epoch) with its data folder beside it."""
    reuse = os.environ.get("COVIDCT_TEST_CI_RUN")
    if reuse:
        return Path(reuse)
    data, run = tmp / "data", tmp / "run"
    synth = covidct(
        "data",
        "synth",
        "--out",
        data,
        "--patients",
        "12",
        "--slices-per-patient",
        "3",
        "--seed",
        "3",
    )
    assert synth.returncode == 0, synth.stderr[-2000:]
    env = {**os.environ, "COVIDCT_CACHE_DIR": str(tmp / "cache")}
    trained = covidct("train", "--data", data, "--out", run, *TINY_TRAIN, "--epochs", "1", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists(), (
        "no Docker daemon: run `make compose-test` (it starts one)"
    )
    tmp = tmp_path_factory.mktemp("compose")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = os.environ.get("COVIDCT_COMPOSE_BASE_IMAGE", "")
    env = {**os.environ, "COVIDCT_IMAGE_TAG": TAG}
    if base:
        env["BASE_IMAGE"] = base
        env["ORTHANC_BASE_IMAGE"] = os.environ.get(
            "COVIDCT_COMPOSE_ORTHANC_BASE", "debian:bookworm-slim"
        )
        env["BUILD_IMAGE"] = os.environ.get("COVIDCT_COMPOSE_BUILD_IMAGE", "python:3.11-bookworm")
    else:
        sh("bash", REPO / "deploy" / "base-image.sh", "covidct/base:bookworm", env=env)
        sh("bash", REPO / "deploy" / "base-image.sh", "covidct/build:bookworm", "build", env=env)
        fill_wheelhouse(env)
        env.update(
            BASE_IMAGE="covidct/base:bookworm",
            BUILD_IMAGE="covidct/build:bookworm",
            ORTHANC_BASE_IMAGE="covidct/base:bookworm",
            PIP_NO_INDEX="1",
        )
    timings["base image and wheels"] = time.perf_counter() - t0

    run = small_run(tmp)
    repository = tmp / "models"
    exported = covidct("export", "--run", run, "--repository", repository, "--target", "cpu")
    assert exported.returncode == 0, exported.stderr[-2000:]
    timings["model"] = time.perf_counter() - t0 - sum(timings.values())

    env_file = tmp / "stack.env"  # .env.example as users copy it, with the admin key set
    env_file.write_text((REPO / ".env.example").read_text() + f"\nCOVIDCT_ADMIN_KEY={ADMIN}\n")
    env.update(MODEL_REPOSITORY=str(repository), COVIDCT_ENV_FILE=str(env_file))
    started = time.perf_counter()
    # The ports are picked after the build (minutes), so that nothing else takes one meanwhile;
    # the build does not use them.
    sh(*compose_cmd("build", "--force-rm"), env={**env, **dict.fromkeys(PORTS, "0")}, timeout=1500)
    timings["build"] = time.perf_counter() - started
    ports = {n: free_port() for n in PORTS}
    env.update({k: str(v) for k, v in ports.items()})
    s = Stack(
        env,
        repository,
        run,
        f"http://127.0.0.1:{ports['GATEWAY_PORT']}",
        f"127.0.0.1:{ports['TRITON_GRPC_PORT']}",
        f"http://127.0.0.1:{ports['TRITON_METRICS_PORT']}/metrics",
        timings,
    )
    started = time.perf_counter()
    up = False
    try:
        s.compose("down", "-v", "--timeout", "10")  # what a crashed run left (volumes too)
        s.compose("up", "-d")  # returns once triton-cpu and pacs are healthy (depends_on)
        wait_ready(s.gateway, 120)
        wait_answers(f"http://127.0.0.1:{ports['NODE_HTTP_PORT']}/status", 60)
        timings["up to ready"] = time.perf_counter() - started
        up = True
        yield s
    finally:
        (tmp / "compose.log").write_text(compose_logs(env, 200))
        if not up:  # pytest shows a failed setup's output: each service's last lines
            print(f"the stack did not come up; its last log lines:\n{compose_logs(env, 30)}")
        subprocess.run(
            compose_cmd("down", "-v", "--timeout", "40"),  # volumes too: the next run starts clean
            capture_output=True,
            env=env,
            timeout=300,
        )
        print(f"\ncompose test timings (s): { {k: round(v) for k, v in timings.items()} }")


def wait_answers(url: str, timeout: float) -> None:
    assert poll(lambda: http_status(url) == 200, timeout, every=0.5), (
        f"{url} did not answer in {timeout} s"
    )


def wait_ready(url: str, timeout: float) -> None:
    wait_answers(f"{url}/readyz", timeout)


def images_sent(real: Path) -> list[Path]:
    """Real PNG slices and every DICOM file of the real-data root (CT and the refused kinds)."""
    manifest = real / "dicom" / "MANIFEST.csv"
    with manifest.open() as f:
        dicoms = [real / "dicom" / row["file"] for row in csv.DictReader(f)]
    return real_pngs(real)[:4] + dicoms


def predict(url: str, files: list[Path]) -> dict[str, dict]:
    result = covidct("predict", "--url", url, *files)
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == len(files), result.stderr[-2000:]
    return {Path(a["file"]).name: a for a in answers}


def test_answers_equal_covidct_serve_on_the_same_repository(stack: Stack, tmp_path: Path) -> None:
    files = images_sent(real_data_dir())
    composed = predict(stack.gateway, files)
    port = free_port()
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--repository",
            stack.repository,
            "--port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        local = f"http://127.0.0.1:{port}"
        wait_ready(local, 120)
        reference = predict(local, files)
        latency = side_by_side(stack.gateway, local, real_pngs(real_data_dir())[0])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    ok = 0
    for name, ref in reference.items():
        got = composed[name]
        assert ("error" in got) == ("error" in ref), (name, got, ref)
        if "error" in ref:
            assert got["error"]["status"] == ref["error"]["status"], (name, got, ref)
            continue
        ok += 1
        assert got["label"] == ref["label"] and got["preprocessing"] == ref["preprocessing"]
        for cls, p in ref["probabilities"].items():
            assert abs(got["probabilities"][cls] - p) <= 1e-4, (name, cls)
    sent_dicoms = [n for n in reference if n.endswith(".dcm") and "error" not in reference[n]]
    assert ok >= 5 and sent_dicoms, reference
    assert "not a medical device" in json.dumps(next(iter(composed.values()))).lower()
    print(
        f"\n/v1/predict p50 over {latency['n']} interleaved requests: composed "
        f"{latency['composed']:.1f} ms, covidct serve {latency['serve']:.1f} ms "
        f"(ratio {latency['composed'] / latency['serve']:.2f})"
    )


def side_by_side(composed: str, local: str, png: Path, n: int = 40) -> dict[str, float]:
    """p50 latency of one real slice through both stacks, requests interleaved."""
    body, times = png.read_bytes(), {"composed": [], "serve": []}
    with httpx.Client(timeout=30) as client:
        for _ in range(3):  # warm both
            for url in (composed, local):
                client.post(f"{url}/v1/predict", content=body)
        for _ in range(n):
            for key, url in (("composed", composed), ("serve", local)):
                t0 = time.perf_counter()
                assert client.post(f"{url}/v1/predict", content=body).status_code == 200
                times[key].append((time.perf_counter() - t0) * 1000)
    return {"n": n, **{k: statistics.median(v) for k, v in times.items()}}


def metric_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }


def test_metrics_feed_the_dashboard(stack: Stack) -> None:
    gateway = httpx.get(f"{stack.gateway}/metrics").text
    triton = httpx.get(stack.triton_metrics).text
    served = re.search(r'covidct_requests_total\{route="/v1/predict",status="200"\} (\d+)', gateway)
    assert served and float(served.group(1)) >= 5, gateway[:2000]
    count = re.search(r'nv_inference_count\{model="covidct",version="1"\} (\d+)', triton)
    assert count and int(count.group(1)) >= 5, triton[:2000]
    dashboard = json.loads(
        (REPO / "deploy" / "grafana" / "dashboards" / "covidct.json").read_text()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b((?:covidct|nv)_[a-z_]+)\b", target["expr"])
    }
    missing = used - metric_names(gateway) - metric_names(triton) - {"nv_gpu_utilization"}
    assert used and not missing, f"dashboard queries metrics nobody exports: {missing}"


def test_redeploy_against_the_composed_stack_fails_no_request(stack: Stack) -> None:
    env = {
        **os.environ,
        "COVIDCT_ADMIN_KEY": ADMIN,
        "COVIDCT_CACHE_DIR": str(stack.repository.parent / "cache"),
    }
    with Load(stack.gateway, pause_s=0.1) as load:
        time.sleep(3)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "redeploy",
                "--from-run",
                stack.run,
                "--data",
                stack.run.parent / "data",
                "--repository",
                stack.repository,
                "--gateway",
                stack.gateway,
                "--triton",
                stack.grpc,
                "--watch-seconds",
                "5",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        finished = time.perf_counter()
        time.sleep(3)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    records = sorted(load.records)
    assert_one_clean_switch(records, finished, "1", "2")
    serving = httpx.get(f"{stack.gateway}/admin/v1/serving", headers={"x-admin-key": ADMIN}).json()
    assert serving["version"] == "2"
    print(
        f"\nredeploy through compose: {len(records)} requests, 0 failed, p99 {p99(records):.0f} ms"
    )


def test_a_series_stored_in_the_composed_pacs_comes_back_from_the_node_as_an_sr(
    stack: Stack, tmp_path: Path
) -> None:
    """storescu (the scanner) -> the composed Orthanc -> its routing (route-ct.lua) -> the
    composed node -> the gateway -> the SR and heatmaps back into the same study in Orthanc."""
    import pydicom

    from bench.pacs import fixture_series

    real = real_data_dir() / "dicom-series" / "P001"
    folder = real if real.is_dir() else fixture_series(tmp_path / "series", 24)
    first = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    study = str(first.StudyInstanceUID)
    pacs = f"http://127.0.0.1:{stack.env['PACS_HTTP_PORT']}"

    def find(modality: str) -> list[str]:
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study, "Modality": modality}}
        return list(httpx.post(f"{pacs}/tools/find", json=query, timeout=30).json())

    assert not find("CT") and not find("SR"), "the composed Orthanc is not empty"
    started = time.perf_counter()
    sh(
        "storescu", "-xs", "-aet", "SCANNER", "-aec", "PACS", "+sd", "+r",
        "127.0.0.1", stack.env["PACS_DICOM_PORT"], folder,
    )  # fmt: skip
    stored = time.perf_counter()

    deadline = time.monotonic() + 900
    while not find("SR"):
        assert time.monotonic() < deadline, stack.compose("logs", "--tail", "50", "covidct-node")
        time.sleep(1)
    back = time.perf_counter()
    [sr_id] = find("SR")
    assert len(find("OT")) >= 1  # the heatmap Secondary Captures
    sr_file = httpx.get(f"{pacs}/instances/{sr_id}/file", timeout=30).content
    sr = pydicom.dcmread(io.BytesIO(sr_file))
    assert str(sr.StudyInstanceUID) == study and "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription
    node = f"http://127.0.0.1:{stack.env['NODE_HTTP_PORT']}/status"
    deadline = time.monotonic() + 120  # the viewer's copy is written after the results left
    while httpx.get(node, timeout=10).json()["counts"] != {"done": 1}:
        assert time.monotonic() < deadline, httpx.get(node, timeout=10).json()
        time.sleep(1)
    print(
        f"\npacs profile: {len(list(folder.glob('*.dcm')))} instances stored in "
        f"{stored - started:.1f} s, the SR back in Orthanc {back - stored:.1f} s later"
    )


def test_containers_run_unprivileged_on_read_only_roots(stack: Stack) -> None:
    sizes = {}
    for service in ("gateway-cpu", "triton-cpu", "covidct-node"):
        cid = stack.container(service)
        info = json.loads(sh("docker", "inspect", cid, env=stack.env))[0]
        assert info["Config"]["User"] == "10001:10001" and info["HostConfig"]["ReadonlyRootfs"], (
            service
        )
        assert sh("docker", "exec", cid, "id", "-u", env=stack.env).strip() == "10001"
        touched = subprocess.run(
            ["docker", "exec", cid, "touch", "/probe"], capture_output=True, env=stack.env
        )
        assert touched.returncode != 0, f"{service} could write to its root filesystem"
        image = json.loads(sh("docker", "image", "inspect", info["Image"], env=stack.env))[0]
        sizes[service] = image["Size"]
    gateway = json.loads(sh("docker", "inspect", stack.container("gateway-cpu"), env=stack.env))[0]
    assert gateway["HostConfig"]["CapDrop"] == ["ALL"]
    assert sizes["gateway-cpu"] <= GATEWAY_IMAGE_LIMIT, (
        f"gateway image {sizes['gateway-cpu'] / 1e6:.0f} MB"
    )
    print(f"\nimage sizes (MB): { {k: round(v / 1e6) for k, v in sizes.items()} }")


def test_down_removes_the_stack(stack: Stack) -> None:
    stack.compose("down", "-v", "--timeout", "40")
    assert not stack.compose("ps", "-q").strip()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack.gateway}/readyz", timeout=2)


def test_every_profile_is_valid_compose() -> None:
    env = {**os.environ, "COVIDCT_ENV_FILE": str(REPO / ".env.example")}
    for profile in ("gpu", "cpu", "monitoring", "pacs"):
        sh(
            "docker-compose",
            "-f",
            REPO / "docker-compose.yml",
            "-f",
            REPO / "docker-compose.override.yml",
            "--profile",
            profile,
            "config",
            "-q",
            env=env,
        )
    assert shutil.which("docker-compose")
