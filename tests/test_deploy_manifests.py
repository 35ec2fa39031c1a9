"""The Kubernetes manifests under deploy/kubernetes, rendered with the real kustomize.

Every kustomization renders and every object validates offline: built-in kinds with
kubernetes-validate in strict mode (unknown fields are errors) against the oldest and newest
Kubernetes we support, CRD kinds against the schemas in tests/data/deploy/crds. Then the
objects are checked against each other and against the code they configure: ports, probes,
selectors, the security context, environment variable names the service really reads, the
trainer's command line.
"""

from __future__ import annotations

import copy
import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from test_deploy_support import (
    K8S_VERSIONS,
    KSERVE,
    KUSTOMIZATIONS,
    REPO,
    SERVICE_OVERLAYS,
    SERVICE_WORKLOADS,
    container,
    cpus,
    crd_schema,
    env_of,
    find,
    pod_spec,
    render,
    service_workload,
    validate,
)

from sculptserve.serving.grpc.server import STOP_REFUSE_MAX_S
from sculptserve.serving.http.shutdown import worst_case_shutdown_s
from sculptserve.serving.runtime import PROVIDER_ALIASES
from sculptserve.serving.settings import RENAMED, Settings, load_settings

SERVICE_LABELS = {"app.kubernetes.io/name": "sculpt", "app.kubernetes.io/component": "server"}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- rendering and schema validation --------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates(kustomization: str, version: str) -> None:
    docs = render(kustomization)
    assert docs, f"{kustomization} rendered nothing"
    for doc in docs:
        try:
            validate(doc, version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{kustomization}: {doc['kind']}/{doc['metadata']['name']} {where}: {exc}")


def test_validation_is_strict() -> None:
    """A misspelt field is an error, for built-in and CRD kinds alike (else the check above
    would pass vacuously)."""
    docs = render("overlays/cpu")
    deployment = copy.deepcopy(find(docs, "Deployment"))
    container(deployment)["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        validate(deployment, K8S_VERSIONS[-1])
    monitor = copy.deepcopy(find(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(monitor, K8S_VERSIONS[-1])
    job = copy.deepcopy(find(render("training/pytorchjob"), "PyTorchJob"))
    pod_spec(job["spec"]["pytorchReplicaSpecs"]["Worker"])["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpus"):
        validate(job, K8S_VERSIONS[-1])


def test_crd_kinds_come_with_the_overlays_only() -> None:
    """The base needs no CRD (clusters without prometheus-operator apply it); the overlays add
    the ServiceMonitor, PrometheusRule and dashboard through the monitoring component."""
    base_kinds = {d["kind"] for d in render("base")}
    assert base_kinds == {
        "ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    for overlay in SERVICE_OVERLAYS:
        kinds = {d["kind"] for d in render(overlay)}
        assert kinds == base_kinds | {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


# --- the service Deployment and its neighbours ----------------------------------------------


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_ports_probes_and_selectors_agree(overlay: str) -> None:
    docs = render(overlay)
    deployment = find(docs, "Deployment", "sculpt")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(SERVICE_LABELS, pod_labels)
    assert deployment["spec"]["selector"]["matchLabels"] == SERVICE_LABELS
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 3000, "grpc": 50051}
    env = env_of(c)
    assert env["SCULPT_GRPC_PORT"]["value"] == str(ports["grpc"])
    assert env["SCULPT_GRPC_HOST"]["value"] == "0.0.0.0"  # the default binds loopback only
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    # Liveness must not kill a pod that is still loading: the startup probe covers that.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120

    service = find(docs, "Service", "sculpt")
    assert _matches(service["spec"]["selector"], pod_labels)
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (3000, "http"),
        "grpc": (50051, "grpc"),
    }

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"

    monitor = find(docs, "ServiceMonitor", "sculpt")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    hpa = find(docs, "HorizontalPodAutoscaler", "sculpt")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sculpt",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "sculpt")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    policy = find(docs, "NetworkPolicy", "sculpt")
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {"http", "grpc"}  # named container ports, so /metrics is covered
    sources = [s for rule in policy["spec"]["ingress"] for s in rule["from"]]
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert {"namespaceSelector": monitoring} in sources, "Prometheus must reach /metrics"
    assert policy["spec"]["egress"] == [] and "Egress" in policy["spec"]["policyTypes"]


@pytest.mark.parametrize("variant", SERVICE_WORKLOADS)
def test_security_context(variant: str) -> None:
    deployment = service_workload(variant)
    spec = pod_spec(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1034  # the bentoml user of the image
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False  # would inject SCULPT_PORT & co.
    c = container(deployment)
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # With a read-only root, everything BentoML writes must land on a writable volume.
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    writable = [Path(m["mountPath"]) for m in c["volumeMounts"] if m["name"] in empty_dirs]
    home = Path(env_of(c)["BENTOML_HOME"]["value"])
    assert any(home.is_relative_to(mount) for mount in writable), (home, writable)
    assert Path("/tmp") in writable  # tempfiles, BentoML's IPC sockets, upload spooling
    # ...and must not hide the Bento inside the image (BENTO_PATH=/home/bentoml/bento).
    assert not any(Path("/home/bentoml/bento").is_relative_to(m) for m in writable)


@pytest.mark.parametrize("variant", SERVICE_WORKLOADS)
def test_termination_grace_covers_the_prestop_sleep_and_the_drain(variant: str) -> None:
    """The kubelet kills the pod terminationGracePeriodSeconds after it starts stopping it,
    preStop hook included: that must cover the preStop sleep plus the worker's longest
    shutdown with the drain settings the pod sets (or their defaults)."""
    deployment = service_workload(variant)
    c = container(deployment)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 3  # endpoint updates take seconds to reach kube-proxy and balancers
    values = {name: e["value"] for name, e in env_of(c).items() if "value" in e}
    settings = load_settings(values)
    assert Settings.variable("shutdown_delay_s") in values  # the numbers are in the manifest
    assert Settings.variable("shutdown_grace_s") in values
    worker = worst_case_shutdown_s(
        settings.shutdown_delay_s, settings.shutdown_grace_s, beside_s=STOP_REFUSE_MAX_S
    )
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= pre_stop + worker
    # and not so much more that a stuck pod lingers for minutes
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] <= pre_stop + worker + 30


@pytest.mark.parametrize("variant", SERVICE_WORKLOADS)
def test_ort_threads_follow_the_cpu_limit(variant: str) -> None:
    c = container(service_workload(variant))
    ref = env_of(c)["SCULPT_ORT_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}
    # The downward API hands the limit rounded up to whole CPUs; the runtime accepts that.
    threads = math.ceil(cpus(c["resources"]["limits"]["cpu"]))
    config = load_settings({"SCULPT_ORT_THREADS": str(threads)}).runtime_config()
    assert config.resolved_threads() == threads >= 1
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("variant", SERVICE_WORKLOADS)
def test_api_key_comes_from_a_required_secret(variant: str) -> None:
    c = container(service_workload(variant))
    ref = env_of(c)[Settings.variable("api_key")]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "sculpt-api-key", "key": "api-key"}  # not optional: no silent open API


def test_every_sculpt_variable_is_one_the_code_reads() -> None:
    """A misspelt SCULPT_* name would be ignored silently by the service; a deprecated one
    would stop working after the next release."""
    known = {Settings.variable(field) for field in Settings.model_fields}
    names = {
        name
        for variant in SERVICE_WORKLOADS
        for name in env_of(container(service_workload(variant)))
        if name.startswith("SCULPT_")
    }
    assert {"SCULPT_GRPC_PORT", "SCULPT_ORT_THREADS", "SCULPT_API_KEY"} <= names
    for bentofile in ("bentofile.yaml", "bentofile.gpu.yaml"):
        envs = yaml.safe_load((REPO / bentofile).read_text()).get("envs", [])
        names |= {e["name"] for e in envs if e["name"].startswith("SCULPT_")}
    unknown = sorted(names - known)
    assert not unknown, f"not settings of sculptserve.serving.settings.Settings: {unknown}"
    deprecated = sorted(names & set(RENAMED))
    assert not deprecated, f"deprecated names (use {[RENAMED[n] for n in deprecated]})"


def test_gpu_overlay_differs_from_cpu_only_where_it_should() -> None:
    cpu = find(render("overlays/cpu"), "Deployment", "sculpt")
    gpu = find(render("overlays/gpu"), "Deployment", "sculpt")
    c_cpu, c_gpu = container(cpu), container(gpu)
    assert c_cpu["image"] == "sculpt:latest" and c_gpu["image"] == "sculpt-gpu:latest"
    assert "nvidia.com/gpu" not in c_cpu["resources"]["limits"]
    assert c_gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    providers = env_of(c_gpu)["SCULPT_ORT_PROVIDERS"]["value"].split(",")
    assert [PROVIDER_ALIASES.get(p, p) for p in providers] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(gpu)[
        "tolerations"
    ]
    # Everything else about the container is shared (probes, security, ports, other env).
    env_cpu, env_gpu = env_of(c_cpu), env_of(c_gpu)
    assert {k: v for k, v in env_gpu.items() if k != "SCULPT_ORT_PROVIDERS"} == env_cpu
    for key in ("ports", "securityContext", "readinessProbe", "livenessProbe", "volumeMounts"):
        assert c_cpu[key] == c_gpu[key], key
    hpa = find(render("overlays/gpu"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 1


# --- KServe ---------------------------------------------------------------------------------

KSERVE_CONTAINER = "kserve-container"  # KServe's name for a custom predictor's container
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_kserve_leaves_the_workload_objects_to_kserve() -> None:
    """KServe makes the predictor's Deployment, Service and HPA itself (sculpt-predictor); the
    base's would compete with them. Its ServiceAccount, PDB and NetworkPolicy stay."""
    kinds = sorted(d["kind"] for d in render(KSERVE))
    assert kinds == ["InferenceService", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount"]


def test_inference_service_meets_the_kserve_rules() -> None:
    """What KServe's webhook and controller require of a custom predictor (v0.15:
    inference_service_validation.go, predictor_custom.go, the raw-deployment HPA's checks)."""
    service = service_workload(KSERVE)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    predictor = service["spec"]["predictor"]
    # Exactly one implementation: containers, none of the built-in model servers (and no
    # workerSpec: multi-node serving is for those).
    servers = set(crd_schema("InferenceService")["$defs"]["predictorSpec"]["properties"])
    assert not servers & set(predictor)
    c = container(service)
    assert c["name"] == KSERVE_CONTAINER  # KServe renames a lone container to this anyway
    env = env_of(c)
    assert env["PROTOCOL"]["value"] in {"v1", "v2"}  # what the webhook accepts for a custom one
    assert env["PROTOCOL"]["value"] == "v2"  # the Open Inference Protocol
    assert "STORAGE_URI" not in env  # the bundle is in the image: no storage initializer
    # KServe's HPA: a resource metric, its target a utilization percentage.
    assert predictor["scaleMetric"] in {"cpu", "memory"}
    assert 1 <= predictor["scaleTarget"] <= 100
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def test_kserve_pods_run_as_the_deployments_do() -> None:
    """from-base/ copies the CPU overlay's pod: same pod fields, the same container but for
    KServe's name, the PROTOCOL variable and the downward API reference that follows the name;
    same pod labels and annotations (plus KServe's scraping switch), rollout strategy, and the
    HPA's replica bounds, metric and target."""
    docs = render("overlays/cpu")
    deployment = find(docs, "Deployment", "sculpt")
    hpa = find(docs, "HorizontalPodAutoscaler", "sculpt")
    predictor = service_workload(KSERVE)["spec"]["predictor"]

    pod = pod_spec(deployment)
    pod_fields = crd_schema("InferenceService")["$defs"]["podSpec"]["properties"]
    assert {k for k in predictor if k in pod_fields} == set(pod)
    for field, value in pod.items():
        if field != "containers":
            assert predictor[field] == value, field
    expected = copy.deepcopy(container(deployment))
    expected["name"] = KSERVE_CONTAINER
    expected["env"].append({"name": "PROTOCOL", "value": "v2"})
    ref = env_of(expected)["SCULPT_ORT_THREADS"]["valueFrom"]["resourceFieldRef"]
    ref["containerName"] = KSERVE_CONTAINER
    assert predictor["containers"] == [expected]

    template = deployment["spec"]["template"]["metadata"]
    assert predictor["labels"] == template["labels"]
    scraping_off = {"serving.kserve.io/enable-prometheus-scraping": "false"}
    assert predictor["annotations"] == {**template["annotations"], **scraping_off}
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["target"]["type"] == "Utilization"  # KServe's scaleMetricType default
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )
    assert predictor["scaleMetric"] == metric["resource"]["name"]
    assert predictor["scaleTarget"] == metric["resource"]["target"]["averageUtilization"]


def test_kserve_ports_selectors_and_scraping_agree() -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    docs = render(KSERVE)
    service = find(docs, "InferenceService", "sculpt")
    predictor = service["spec"]["predictor"]
    c = container(service)
    ports = [(p["name"], p["containerPort"]) for p in c["ports"]]
    # KServe's predictor Service sends its port 80 to the first container port: HTTP, where
    # `bentoml serve` (the image's command, no --port) listens and the v2 REST routes are. The
    # Service also exposes the other ports under their own numbers: gRPC.
    assert ports[0] == ("http", BentoMLContainer.http.port.get())
    settings = load_settings({name: e["value"] for name, e in env_of(c).items() if "value" in e})
    assert dict(ports)["grpc"] == settings.grpc_port
    assert settings.grpc_host == "0.0.0.0"  # the default binds loopback only
    for probe in PROBES:
        assert c[probe]["httpGet"]["port"] == "http"

    labels = predictor["labels"]
    assert _matches(SERVICE_LABELS, labels)
    assert _matches(find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    policy = find(docs, "NetworkPolicy")
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {name for name, _ in ports}
    for constraint in predictor["topologySpreadConstraints"]:
        assert _matches(constraint["labelSelector"]["matchLabels"], labels)
    assert predictor["serviceAccountName"] == find(docs, "ServiceAccount")["metadata"]["name"]

    # Scraped through the pod annotations (deploy/prometheus/scrape-config.yml keeps the pods
    # labelled app.kubernetes.io/name=sculpt), with KServe's own annotation switched off: it
    # would point prometheus.io/port at Knative's queue-proxy, absent here.
    annotations = predictor["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports[0][1]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"


def test_probes_are_open_routes_of_the_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every probe of every variant GETs a route the service answers 200 once ready, without
    the API key (the kubelet has none) while one is set."""
    from bundle_factory import make_bundle
    from test_service import _client

    paths = {
        container(service_workload(variant))[probe]["httpGet"]["path"]
        for variant in SERVICE_WORKLOADS
        for probe in PROBES
    }
    with _client(monkeypatch, make_bundle(tmp_path / "bundle"), SCULPT_API_KEY="k") as client:
        assert client.get("/info").status_code == 401  # the key is on
        for path in sorted(paths):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)


def test_kserve_validation_is_strict() -> None:
    """Misspelt fields fail, in the InferenceService's own fields and in its pod; so does
    protocolVersion on a custom predictor: only KServe's built-in model servers have the field
    (a custom container says PROTOCOL instead), and an API server would refuse it too."""
    service = service_workload(KSERVE)
    version = K8S_VERSIONS[-1]
    validate(service, version)

    def broken(edit: Callable[[dict], None]) -> dict:
        doc = copy.deepcopy(service)
        edit(doc["spec"]["predictor"])
        return doc

    for edit, phrase in (
        (lambda p: p.update(minReplica=2), "'minReplica' was unexpected"),
        (lambda p: p.update(protocolVersion="v2"), "'protocolVersion' was unexpected"),
        (lambda p: p.update(scaleMetric="gpu"), "'gpu' is not one of"),
        (lambda p: p.update(model={"protocolVersion": "v3"}), "'v3' is not one of"),
        (lambda p: p["deploymentStrategy"].update(rollingUpdates={}), "rollingUpdates"),
    ):
        with pytest.raises(jsonschema.ValidationError, match=phrase):
            validate(broken(edit), version)
    for edit, phrase in (
        (lambda p: p["containers"][0].update(readinesProbe={}), "readinesProbe"),
        (lambda p: p["securityContext"].update(runAsUsr=0), "runAsUsr"),
    ):
        with pytest.raises(kubernetes_validate.ValidationError, match=phrase):
            validate(broken(edit), version)


# --- distributed training -------------------------------------------------------------------


def _trainer_args(c: dict) -> list[str]:
    args = list(c["args"])
    script = c["command"][2]
    assert '"$@"' in script and "--out" in script, "args must reach `sculpt train`"
    return args


def _arg(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _check_args_parse(args: list[str], tmp_path: Path) -> None:
    """The manifest's arguments are valid for the real `sculpt train` (parsed, not run)."""
    from sculptserve.cli import cli

    command = cli.commands["train"]
    ctx = command.make_context("train", [*args, "--out", str(tmp_path / "run")])
    assert ctx.params["device"] == "cuda"


def test_indexed_job_is_consistent(tmp_path: Path) -> None:
    docs = render("training/indexed-job")
    job = find(docs, "Job", "sculpt-train")
    service = find(docs, "Service", "sculpt-train")
    claim = find(docs, "PersistentVolumeClaim", "sculpt-runs")
    spec = job["spec"]
    c = container(job)
    env = {k: v.get("value") for k, v in env_of(c).items()}
    nodes, per_node = int(env["NNODES"]), int(env["NPROC_PER_NODE"])

    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes >= 2
    assert c["resources"]["limits"]["nvidia.com/gpu"] == per_node
    # Pod 0 is reachable by name: a headless Service named like the pods' subdomain.
    assert service["spec"]["clusterIP"] == "None"
    assert pod_spec(job)["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "sculpt-train"}
    host, port = env["RDZV_ENDPOINT"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == c["ports"][0]["containerPort"]
    assert "--rdzv_backend=c10d" in c["command"][2]
    assert env_of(c)["RDZV_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/controller-uid']"
    )
    # The run dir is on the shared claim.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert Path(env["RUN_DIR"]).is_relative_to(mounts["runs"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    args = _trainer_args(c)
    assert int(_arg(args, "--batch-size")) % (nodes * per_node) == 0
    _check_args_parse(args, tmp_path)


def test_pytorchjob_meets_the_operator_rules(tmp_path: Path) -> None:
    """What the training operator's webhook enforces (pytorch_validation.go), and agreement
    with the Indexed Job's training."""
    job = find(render("training/pytorchjob"), "PyTorchJob", "sculpt-train")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # DNS-1035
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    indexed = container(find(render("training/indexed-job"), "Job"))
    for spec in replicas.values():
        c = container(spec, "pytorch")
        assert c["image"]
        assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in c["ports"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == int(job["spec"]["nprocPerNode"])
        assert c["args"] == indexed["args"], "both training variants train the same way"
        _check_args_parse(_trainer_args(c), tmp_path)
        for needed in ("PET_NNODES", "PET_NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
            assert needed in c["command"][2]
    assert shlex.split(replicas["Master"]["template"]["spec"]["containers"][0]["command"][2])
