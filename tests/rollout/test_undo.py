"""The undo of a deployment across replicas when one of them is down (often why the step
failed): the old version is put back on every replica that answers, the gateway goes back to
it, and config.pbtxt is pinned to it so the dead replica serves it when it restarts. Fakes for
Triton and the gateway; tests/integration/test_scaleout.py runs the happy paths for real."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from covidct.config import ModelSpec
from covidct.modelconfig import parse_config
from export.repository import write_config
from export.tritonconfig import TritonOptions, render_config
from rollout.control import DeployError, TritonFleet
from rollout.deployment import Deployment, DeployOptions


class FakeTriton:
    def __init__(self, url: str, ready: list[int] | None) -> None:
        self.url, self.ready, self.loads = url, ready, []  # ready None: the replica is down

    def ready_versions(self) -> list[int]:
        if self.ready is None:
            raise DeployError(f"Triton at {self.url} is not reachable: connection refused")
        return list(self.ready)

    def load_versions(self, model_dir: Path, versions: list[int], spec_version: int) -> None:
        if self.ready is None:
            raise DeployError(f"Triton at {self.url} is not reachable")
        self.loads.append(list(versions))
        self.ready = list(versions)


class FakeGateway:
    def __init__(self, version: str) -> None:
        self.version, self.switches, self.drained = version, [], []

    def status(self) -> dict:
        return {"version": self.version, "in_flight": {}}

    def switch(self, version: int) -> dict:
        self.switches.append(version)
        self.version = str(version)
        return self.status()

    def drain(self, version: int, timeout_s: float) -> float:
        self.drained.append(version)
        return 0.0


def _repository(root: Path) -> Path:
    spec = ModelSpec(image_size=64)
    model_dir = root / spec.name
    for v in (1, 2):
        (model_dir / str(v)).mkdir(parents=True)
        manifest = {
            "model_spec": spec.to_dict(),
            "serving": asdict(TritonOptions()),
            "cam_hw": [2, 2],
        }
        (model_dir / str(v) / "manifest.json").write_text(json.dumps(manifest))
    serving = TritonOptions(pinned_versions=(1, 2))
    write_config(model_dir, render_config(spec, serving, (2, 2)))
    return model_dir


def test_undo_after_the_switch_with_one_replica_down(tmp_path: Path) -> None:
    model_dir = _repository(tmp_path)
    opts = DeployOptions(repository=tmp_path, triton_url="a:1,b:1,c:1")
    d = Deployment(opts, lambda event: None, {"from_version": 1, "to_version": 2})
    replicas = [FakeTriton("a:1", [1, 2]), FakeTriton("b:1", [1, 2]), FakeTriton("c:1", None)]
    d.triton = TritonFleet(opts.triton_url, "covidct", replicas=replicas)  # type: ignore[arg-type]
    d.gateway = gateway = FakeGateway("2")  # type: ignore[assignment]
    d.put_back_old(remove_new=True)
    assert gateway.switches == [1] and gateway.drained == [2]
    assert [r.loads for r in replicas] == [[[1]], [[1]], []]
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [1]  # what c serves when back
    assert not (model_dir / "2").exists()


def test_a_forward_step_fails_naming_the_replica_that_is_down(tmp_path: Path) -> None:
    replicas = [FakeTriton("a:1", [1]), FakeTriton("c:1", None)]
    fleet = TritonFleet("a:1,c:1", "covidct", replicas=replicas)  # type: ignore[arg-type]
    try:
        fleet.load_versions(tmp_path, [1, 2], 2)
    except DeployError as e:
        assert "failed on 1 of 2 replicas" in str(e) and "c:1" in str(e) and "a:1" not in str(e)
    else:
        raise AssertionError("a load with a replica down must fail")
    assert replicas[0].loads == [[1, 2]]  # the others went ahead: the undo puts them back
