"""deploy/k8s rendered (kubectl kustomize) for every overlay and checked offline: each object
against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail), then
what we require of every workload (probes, resources, locked-down security contexts) and of
the topology (headless Triton Service the gateway resolves, PDBs, HPA, NetworkPolicy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = K8S / "overlays"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests support


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize v5) is needed to render deploy/k8s"
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    }


#: Every kustomization rendered: the two overlays, the on-demand redeploy and training Jobs,
#: and the DICOM node.
RENDERED = [
    *(f"overlays/{p.name}" for p in sorted(OVERLAYS.iterdir())),
    "redeploy",
    "training",
    "dicom-node",
]


@pytest.fixture(scope="module", params=RENDERED)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_both_overlays_exist() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == ["cpu", "gpu-t4"]


def test_every_object_is_valid_for_the_kubernetes_api(overlay) -> None:
    name, docs = overlay
    kinds = sorted(d["kind"] for d in docs)
    expected = {
        "redeploy": {"Job"},
        "training": {"Job", "Service", "NetworkPolicy"},
        "dicom-node": {"StatefulSet", "Service", "NetworkPolicy"},
    }.get(name, {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"})
    assert expected <= set(kinds), kinds
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message}")


def test_every_container_has_probes_resources_and_a_locked_down_context(overlay) -> None:
    name, docs = overlay
    kinds = {d["metadata"]["name"]: d["kind"] for d in docs}
    for workload, spec in pod_specs(docs).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            where = f"{name}/{workload}/{c['name']}"
            # a Job's pod serves nothing: it is judged by its exit code, not by probes
            for probe in ("readinessProbe", "livenessProbe") if kinds[workload] != "Job" else ():
                assert probe in c, f"{where} has no {probe}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{where} {bound}"
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            writable = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in writable, f"{where}: a read-only root needs a writable /tmp"


@pytest.fixture(scope="module", params=sorted(p.name for p in OVERLAYS.iterdir()))
def stack(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(f"overlays/{request.param}")


def test_the_gateway_balances_over_the_headless_triton_service(stack) -> None:
    _, docs = stack
    services, deployments = by_kind(docs, "Service"), by_kind(docs, "Deployment")
    assert services["triton"]["spec"]["clusterIP"] == "None"
    grpc = next(p["port"] for p in services["triton"]["spec"]["ports"] if p["name"] == "grpc")
    (gateway,) = deployments["gateway"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["COVIDCT_TRITON_URL"] == f"dns:triton:{grpc}"
    triton = deployments["triton"]["spec"]["template"]
    assert "startupProbe" in triton["spec"]["containers"][0]
    for d in deployments.values():
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_every_gateway_pod_shares_one_serving_folder(stack) -> None:
    _, docs = stack
    spec = by_kind(docs, "Deployment")["gateway"]["spec"]["template"]["spec"]
    (gateway,) = spec["containers"]
    folder = {e["name"]: e.get("value") for e in gateway["env"]}["COVIDCT_SERVING_DIR"]
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == folder]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = by_kind(docs, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes


def test_the_redeploy_job_drives_every_replica_through_the_stack_s_names(stack) -> None:
    _, docs = stack
    (job,) = by_kind(render("redeploy"), "Job").values()
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:])
    assert container["args"][0] == "redeploy"
    services = by_kind(docs, "Service")
    grpc = next(p["port"] for p in services["triton"]["spec"]["ports"] if p["name"] == "grpc")
    http = services["gateway"]["spec"]["ports"][0]["port"]
    assert args["triton"] == f"dns:triton:{grpc}"  # every pod behind the headless Service
    assert args["gateway"] == f"http://gateway:{http}"
    # it writes the repository the Triton pods read, and may reach them (NetworkPolicy)
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert claims[mounts[args["repository"]]["name"]] == "model-repository"
    assert not mounts[args["repository"]].get("readOnly")
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "redeploy"
    assert job["spec"]["backoffLimit"] >= 1  # a rerun recovers an interrupted deployment
    assert "model-repository" in by_kind(docs, "PersistentVolumeClaim")


def test_disruption_budgets_autoscaling_and_network_policy(stack) -> None:
    _, docs = stack
    pdbs = by_kind(docs, "PodDisruptionBudget")
    labels = {
        n: p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for n, p in pdbs.items()
    }
    assert labels == {"triton": "triton", "gateway": "gateway"}
    deployments = by_kind(docs, "Deployment")
    assert pdbs["triton"]["spec"]["minAvailable"] < deployments["triton"]["spec"]["replicas"]
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "triton"
    inference = next(r for r in policy["spec"]["ingress"] if "from" in r)
    allowed = {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in inference["from"]}
    assert allowed == {"gateway", "redeploy"}
    assert {p["port"] for p in inference["ports"]} == {8000, 8001}
    open_to_all = [r for r in policy["spec"]["ingress"] if "from" not in r]
    assert [p["port"] for r in open_to_all for p in r["ports"]] == [8002]  # metrics only


def test_the_gpu_overlay_serves_the_compose_file_s_triton_on_one_gpu() -> None:
    docs = render("overlays/gpu-t4")
    triton = by_kind(docs, "Deployment")["triton"]["spec"]["template"]["spec"]
    (container,) = triton["containers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert container["image"] == compose["services"]["triton"]["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"] == ["tritonserver"]
    assert "--model-control-mode=explicit" in container["args"]
    cpu = by_kind(render("overlays/cpu"), "Deployment")["triton"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert cpu["securityContext"]["runAsUser"] == 10001  # our image's user


def test_the_training_job_gives_each_pod_its_worker_from_the_completion_index() -> None:
    """The Indexed Job, its headless Service and training/cluster.py agree on every name."""
    import json

    from training.cluster import ensure_tf_config

    docs = render("training")
    (job,) = by_kind(docs, "Job").values()
    (service,) = by_kind(docs, "Service").values()
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    workers = int(env["COVIDCT_CLUSTER_SIZE"])
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers >= 2
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]["port"]
    assert {p["containerPort"] for p in container["ports"]} == {port}
    name, subdomain = job["metadata"]["name"], pod["spec"]["subdomain"]
    hosts = [f"{name}-{i}.{subdomain}:{port}" for i in range(workers)]  # Kubernetes' pod DNS
    for index in range(workers):
        fake = {**env, "JOB_COMPLETION_INDEX": str(index)}
        worker = ensure_tf_config(fake)
        assert (worker.index, worker.workers, worker.is_chief) == (index, workers, index == 0)
        cluster = json.loads(fake["TF_CONFIG"])["cluster"]
        assert [*cluster["chief"], *cluster.get("worker", [])] == hosts
    script = " ".join(container["args"])
    assert "--strategy=multiworker" in script and "--resume" in script
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/cache"]["readOnly"] and mounts["/data"]["readOnly"]
    assert not mounts["/runs"].get("readOnly")  # the chief writes the run there
    assert "--cache-dir=/cache" in script and '--out="/runs/$RUN"' in script
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    assert rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "train"}


def test_the_dicom_node_keeps_its_spool_on_its_own_volume_and_lets_in_only_pacs_and_clients() -> (
    None
):
    docs = render("dicom-node")
    (node,) = by_kind(docs, "StatefulSet").values()
    spec = node["spec"]
    assert spec["replicas"] == 1
    services = by_kind(docs, "Service")
    assert services[spec["serviceName"]]["spec"]["clusterIP"] == "None"
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["command"] == ["python", "-m", "dicomnode"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts[env["COVIDCT_PACS_SPOOL_DIR"]] == claim["metadata"]["name"]
    assert spec["template"]["spec"]["securityContext"]["fsGroup"] == 10001
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "dicom": int(env["COVIDCT_PACS_PORT"]),
        "http": int(env["COVIDCT_PACS_HTTP_PORT"]),
    }
    served = {p["name"]: p["port"] for p in services["dicom-node"]["spec"]["ports"]}
    assert served == ports
    gateway = by_kind(render("overlays/cpu"), "Service")["gateway"]["spec"]["ports"][0]["port"]
    assert env["COVIDCT_PACS_GATEWAY_URL"] == f"http://gateway:{gateway}"
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "dicom-node"
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(rules) == {ports["dicom"], ports["http"]}
    assert all("from" in r for r in policy["spec"]["ingress"]), "no port open to every pod"
    labels = [f.get("podSelector", {}).get("matchLabels", {}) for f in rules[ports["dicom"]]]
    assert {"covidct.io/pacs": "true"} in labels
    clients = [f.get("podSelector", {}).get("matchLabels", {}) for f in rules[ports["http"]]]
    assert {"covidct.io/client": "true"} in clients
