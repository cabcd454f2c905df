"""``covidct bench pacs``: the DICOM node against the real Orthanc and the gateway's study path.

1. Receive rate: the same ``storescu -xs +sd +r`` run of one series into the node's SCP and
   into Orthanc's own, and the same files as one STOW-RS request into the node's HTTP port,
   in interleaved rounds (the order rotated every round), each receiver fresh each round (a
   new spool, a new storage), so none answers a duplicate.
2. End to end: the series stored into the node, whose results go to Orthanc; the time from
   the last instance received to the SR stored in Orthanc (the outbox's delivery time),
   less the node's stable wait, beside the gateway's own time for the same files
   (``POST /v1/predict/study``), interleaved round by round. The parts come from the
   series' record (received, complete, processed), the pipeline's ``timings`` (infer,
   build SR and SC, queue) and the outbox's records (delivered).
3. Pull latency: the series stored in Orthanc (REST), then a fresh node in pull mode (QIDO-RS
   every second, WADO-RS, results STOWed back); the time from the last instance stored in
   the archive to the SR stored there (two polls to see the series stable and the node's
   stable wait included; both named in the result).

The series is the real ``dicom-series/P001`` (148 slices) when the real data is there, else
one made from the fixture slice (as the node's tests do); the result names which. The figures
and the section are bench/pacsreport.py's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

from bench.corpus import REPO, real_data_dir
from bench.pacsreport import ARMS, PULL_INTERVAL_S, breakdown, pacs_section, summarise
from bench.sweep import BenchError, save
from covidct.addresses import LOCALHOST
from dicomnode.multipart import encode_related
from dicomnode.node import Node, Outcome
from dicomnode.pipeline import ResultPipeline, open_outbox
from dicomnode.settings import NodeSettings
from serving.server import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
FIXTURE_SLICE = REPO / "tests" / "fixtures" / "dicom" / "normal002__IM0042.dcm"
FIXTURE_DATE = "20261201"  # the fixture series' Study and Series Date (pull mode searches by it)
PACS_AET, NODE_AET, SCU_AET = "PACS", "COVIDCT", "BENCH"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every Structured Report SOP Class


def find_series(work: Path, source: str = "auto", slices: int = 24) -> tuple[Path, str]:
    """The benchmark's series folder and what it is.

    Args:
        work: where a fixture series is written.
        source: ``auto`` (the real P001 when present), ``real`` or ``fixture``.
        slices: slices of a fixture series.

    Raises:
        BenchError: ``real`` was asked and the real series is not there.
    """
    if source in ("auto", "real"):
        folder = real_data_dir() / "dicom-series" / "P001"
        if folder.is_dir() and any(folder.glob("*.dcm")):
            return folder, f"the real P001 ({sum(1 for _ in folder.glob('*.dcm'))} slices)"
        if source == "real":
            raise BenchError(f"no real series at {folder}: set COVIDCT_REAL_DATA")
    return fixture_series(work / "series", slices), f"{slices} copies of the fixture slice"


def fixture_series(dest: Path, slices: int, seed: str = "covidct-bench-series") -> Path:
    """``slices`` CT files of one series made from the fixture slice, 2 mm apart, numeric
    UIDs derived from ``seed``, dated FIXTURE_DATE; file names in an order unlike the series
    order (as files arrive: receivers must sort). The tests' series
    (tests/dicomnode/series_data.py) too."""
    dest.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=[seed, "study"])
    series = generate_uid(entropy_srcs=[seed, "series"])
    for i in range(slices):
        ds = pydicom.dcmread(FIXTURE_SLICE)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate = ds.SeriesDate = FIXTURE_DATE
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "instance", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, -50.0 - 2.0 * i]
        ds.SliceLocation = -50.0 - 2.0 * i
        ds.save_as(dest / f"IM{(i * 7) % slices:04d}_{i}.dcm", enforce_file_format=True)
    return dest


def storescu_command(folder: Path, port: int, called_aet: str) -> list[str]:
    """One association sending every file of ``folder`` (JPEG Lossless proposed)."""
    return ["storescu", "-xs", "-aet", SCU_AET, "-aec", called_aet, "+sd", "+r",
            LOCALHOST, str(port), str(folder)]  # fmt: skip


def send(folder: Path, port: int, called_aet: str) -> float:
    """Seconds ``storescu`` took to send ``folder``.

    Raises:
        BenchError: storescu failed.
    """
    started = time.perf_counter()
    done = subprocess.run(storescu_command(folder, port, called_aet), capture_output=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"storescu to {called_aet} failed: {done.stderr.decode()[-500:]}")
    return seconds


@contextlib.contextmanager
def running_orthanc(root: Path) -> Iterator[tuple[str, int]]:
    """Orthanc (with its DICOMweb plugin) on free loopback ports with its storage under
    ``root``: (REST URL, DICOM port)."""
    http_port, dicom_port = free_port(), free_port()
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": PACS_AET, "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": PACS_AET, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],  # pull mode's QIDO-RS and WADO-RS, the results' STOW-RS
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config))
    url = f"http://{LOCALHOST}:{http_port}"
    with (root / "orthanc.log").open("ab") as log:
        proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{url}/system"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"Orthanc did not start: see {root / 'orthanc.log'}")
            time.sleep(0.1)
        yield url, dicom_port
    finally:
        proc.send_signal(signal.SIGKILL)  # nothing in it is kept
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def node_settings(
    spool: Path, gateway_url: str, stable_s: float, destination: str, **more: Any
) -> NodeSettings:
    """The node as the benchmark runs it: loopback, free ports."""
    return NodeSettings(
        ae_title=NODE_AET, host=LOCALHOST, port=free_port(), http_port=free_port(),
        gateway_url=gateway_url, stable_s=stable_s, spool_dir=spool, destination=destination,
        send_retry_initial_s=0.5, **more,
    )  # fmt: skip


def stow(files: Sequence[Path], port: int) -> float:
    """Seconds of one STOW-RS request of ``files`` into the node (reading and encoding the
    files included, as storescu reads them).

    Raises:
        BenchError: the node did not store every instance.
    """
    started = time.perf_counter()
    content_type, body = encode_related(f.read_bytes() for f in files)
    r = httpx.post(
        f"http://{LOCALHOST}:{port}/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type},
        timeout=600,
    )
    seconds = time.perf_counter() - started
    if r.status_code != 200:
        raise BenchError(f"STOW-RS into the node answered {r.status_code}: {r.text[:300]}")
    return seconds


def receive_round(folder: Path, tmp: Path, order: Sequence[str]) -> dict[str, float]:
    """One round: seconds to send the series into each receiver, fresh, in ``order``
    (``node``: storescu into the SCP; ``orthanc``: storescu into Orthanc; ``stow``: one
    STOW-RS request into the node)."""
    seconds: dict[str, float] = {}
    for arm in order:
        root = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{arm}-"))
        if arm == "orthanc":
            with running_orthanc(root) as (_, port):
                seconds[arm] = send(folder, port, PACS_AET)
        else:  # nothing completes during the round: the receive path alone
            node = Node(node_settings(root, "", 3600.0, ""), lambda _: Outcome())
            node.start(http=arm == "stow")
            try:
                if arm == "stow":
                    assert node.http_server is not None
                    seconds[arm] = stow(sorted(folder.glob("*.dcm")), node.http_server.port)
                else:
                    seconds[arm] = send(folder, node.receiver.port, NODE_AET)
            finally:
                node.stop(drain_s=5.0)
        shutil.rmtree(root, ignore_errors=True)
    return seconds


def pull_round(
    files: Sequence[Path], tmp: Path, orthanc: tuple[str, int], gateway_url: str, stable_s: float
) -> float:
    """Seconds from the series stored in the archive to its SR stored there, by a fresh node
    in pull mode.

    Raises:
        BenchError: no SR came back.
    """
    url, _ = orthanc
    root = Path(tempfile.mkdtemp(dir=tmp, prefix="pull-"))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    with httpx.Client(base_url=url, timeout=60) as rest:
        for f in files:
            rest.post("/instances", content=f.read_bytes()).raise_for_status()
        stored = time.time()
        settings = node_settings(
            root, gateway_url, stable_s, "", dicomweb_destination=f"{url}/dicom-web",
            pull_url=f"{url}/dicom-web", pull_interval_s=PULL_INTERVAL_S,
            pull_since=str(header.get("SeriesDate") or FIXTURE_DATE),
        )  # fmt: skip
        outbox = open_outbox(settings).start()
        node = Node(settings, ResultPipeline(settings, outbox), outbox_depth=lambda: outbox.depth)
        node.start(http=False)
        try:
            deadline = time.monotonic() + stable_s + 900
            while True:
                srs = [i for i in outbox.items() if i.sop_class_uid.startswith(SR_CLASS_PREFIX)]
                if srs and srs[0].delivered_at is not None:
                    return srs[0].delivered_at - stored
                if time.monotonic() > deadline:
                    raise BenchError(f"pull mode filed no SR: {node.status()}")
                time.sleep(0.1)
        finally:
            node.stop(drain_s=5.0)
            outbox.stop()
            for study in rest.get("/studies").json():  # the next round stores anew
                rest.delete(f"/studies/{study}")
            shutil.rmtree(root, ignore_errors=True)


def study_seconds(client: httpx.Client, files: Sequence[Path]) -> float:
    """Seconds of one ``POST /v1/predict/study`` of ``files`` (the gateway's own study time)."""
    parts = [("file", (f"{i:05d}.dcm", f.read_bytes(), "application/dicom"))
             for i, f in enumerate(files)]  # fmt: skip
    started = time.perf_counter()
    response = client.post("/v1/predict/study", files=parts)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"/v1/predict/study answered {response.status_code}: {response.text}")
    return seconds


def end_to_end_round(
    folder: Path, tmp: Path, orthanc: tuple[str, int], gateway_url: str, stable_s: float
) -> dict[str, float]:
    """One series through a fresh node into Orthanc; its ``breakdown``."""
    url, port = orthanc
    root = Path(tempfile.mkdtemp(dir=tmp, prefix="node-"))
    settings = node_settings(root, gateway_url, stable_s, f"{PACS_AET}@{LOCALHOST}:{port}")
    outbox = open_outbox(settings).start()
    pipeline = ResultPipeline(settings, outbox)
    node = Node(settings, pipeline, outbox_depth=lambda: outbox.depth)
    node.start(http=False)
    try:
        send(folder, node.receiver.port, NODE_AET)
        deadline = time.monotonic() + stable_s + 900

        def finished() -> bool:  # results delivered and the series' record closed
            records = node.spool.records()
            done = len(records) == 1 and records[0].finished_at is not None
            return bool(done and outbox.items() and outbox.wait_idle(0.1) and pipeline.timings)

        while not finished():
            if time.monotonic() > deadline:
                raise BenchError(f"the series produced no delivered result: {node.status()}")
            time.sleep(0.1)
        records = node.spool.records()
        r = records[0] if len(records) == 1 else None
        if r is None or r.finished_at is None or r.completed_at is None:
            raise BenchError(f"the series was not processed: {node.status()}")
        srs = [i for i in outbox.items() if i.sop_class_uid.startswith(SR_CLASS_PREFIX)]
        if not srs or srs[0].delivered_at is None:
            raise BenchError(f"no SR delivered: {[i.state for i in outbox.items()]}")
        stored = httpx.post(f"{url}/tools/find", json={"Level": "Instance", "Query": {
            "SOPInstanceUID": srs[0].sop_instance_uid}}, timeout=30).json()  # fmt: skip
        if len(stored) != 1:
            raise BenchError("the SR the outbox delivered is not in Orthanc")
        times = {"last_received": r.last_received, "completed_at": r.completed_at,
                 "finished_at": r.finished_at}  # fmt: skip
        return breakdown(times, pipeline.timings, srs[0].delivered_at, stable_s)
    finally:
        node.stop(drain_s=5.0)
        outbox.stop()
        for study in httpx.get(f"{url}/studies", timeout=30).json():  # the next round stores anew
            httpx.delete(f"{url}/studies/{study}", timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def run_pacs_bench(
    out: Path,
    gateway_url: str,
    rounds: int = 5,
    e2e_rounds: int = 3,
    stable_s: float = 2.0,
    source: str = "auto",
    slices: int = 24,
) -> dict[str, Any]:
    """Both measurements, interleaved; writes ``out`` and returns the result.

    Raises:
        BenchError: a receiver, the node or the gateway failed.
    """
    if not _answers(f"{gateway_url}/v1/models"):
        raise BenchError(f"the gateway at {gateway_url} does not answer /v1/models")
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as work:
        tmp = Path(work)
        folder, what = find_series(tmp, source, slices)
        files = sorted(folder.glob("*.dcm"))
        receive = [receive_round(folder, tmp, ARMS[i % 3 :] + ARMS[: i % 3])
                   for i in range(rounds)]  # fmt: skip
        e2e: list[dict[str, float]] = []
        study: list[float] = []
        pull: list[float] = []
        with (
            running_orthanc(tmp / "pacs") as orthanc,
            httpx.Client(base_url=gateway_url, timeout=900) as client,
        ):
            study_seconds(client, files[:2])  # warm the model before the first timed round
            for i in range(e2e_rounds):
                first_direct = i % 2 == 1
                if first_direct:
                    study.append(study_seconds(client, files))
                e2e.append(end_to_end_round(folder, tmp, orthanc, gateway_url, stable_s))
                if not first_direct:
                    study.append(study_seconds(client, files))
                pull.append(pull_round(files, tmp, orthanc, gateway_url, stable_s))
    result = summarise(receive, e2e, study, len(files), what, stable_s, pull)
    save(out, "pacs", pacs_section(result), result)
    return result


@contextlib.contextmanager
def served_gateway(url: str | None, repository: Path | None) -> Iterator[str]:
    """``url`` as it is, or a tritonserver on ``repository`` (version 1) and one gateway
    worker in front of it, for the length of a block; yields the gateway's URL."""
    if url is not None:
        yield url
        return
    if repository is None:
        raise BenchError("no gateway URL and no repository to serve")
    from bench.capacity import running_gateway, running_triton

    with (
        tempfile.TemporaryDirectory(prefix="bench-pacs-serve-") as tmp,
        running_triton(repository, Path(tmp) / "triton.log") as server,
        running_gateway(server, 1, Path(tmp) / "gateway.log", {"COVIDCT_MODEL_VERSION": "1"}) as (
            gateway,
            _,
        ),
    ):
        yield gateway
