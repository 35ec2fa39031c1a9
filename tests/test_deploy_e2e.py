"""End to end on loopback: a built Bento served as the Deployment runs it, scraped by a real
Prometheus through deploy/prometheus's scrape job and rules, drifting traffic raising the alert.

1. A toy bundle goes into a temporary model store, `bentoml build` packs it, `bentoml export`
   writes the Bento as a container image holds it (with its models/), and `bentoml serve` runs
   that folder with an empty BENTOML_HOME and the environment of the rendered cpu
   Deployment (API key, ORT threads from the CPU limit, gRPC), as the pod would.
2. Prometheus (Debian package `prometheus`) runs the scrape job of
   deploy/prometheus/scrape-config.yml with Kubernetes discovery swapped for a file listing
   what discovery would produce for the pod (meta labels from its annotations), plus a decoy
   pod without the scrape annotation, and evaluates deploy/prometheus/sculpt-rules.yml.
3. In-distribution traffic leaves sculpt_drift_alert at 0 in Prometheus; shifted traffic turns
   it to 1, and the SculptEmbeddingDrift rule goes pending. Every query of the Grafana
   dashboard and of the rules runs on the live data.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml
from bundle_factory import toy_weights
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_deploy_support import (
    RULES_FILE,
    SCRAPE_CONFIG,
    bentoml_env,
    build_bento,
    concrete_promql,
    container,
    cpus,
    dashboard_exprs,
    find,
    free_port,
    import_toy_bundle,
    prometheus,
    promql_metric_names,
    recorded_names,
    render,
    rule_exprs,
)

pytestmark = pytest.mark.slow

API_KEY = "e2e-secret"
NAMESPACE, POD = "ml", "sculpt-e2e-0"
SHAPE, LATENT = (1, 4, 4), 3  # the toy bundle's
SERVER_START_S = 120


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:  # not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


# The Bento folder as extracted, before the server starts: in the pod it is on the read-only
# root filesystem, so serving must not write there.
_UNTOUCHED: dict[Path, dict[str, tuple[int, int]]] = {}


def pod_environment(home: Path, grpc_port: int) -> dict[str, str]:
    """The rendered cpu Deployment's environment, resolved as the kubelet would, with the
    loopback and temp-dir substitutions a test on one machine needs."""
    c = container(find(render("overlays/cpu"), "Deployment", "sculpt"))
    env: dict[str, str] = {}
    for entry in c["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        source = entry["valueFrom"]
        if "secretKeyRef" in source:
            env[entry["name"]] = API_KEY
        elif "resourceFieldRef" in source:  # limits.cpu with divisor 1: rounded up
            env[entry["name"]] = str(math.ceil(cpus(c["resources"]["limits"]["cpu"])))
        else:
            pytest.fail(f"unhandled valueFrom in {entry}")
    assert env["BENTOML_HOME"].startswith("/tmp/")  # the emptyDir; here a fresh temp dir
    env["BENTOML_HOME"] = str(home)
    env["SCULPT_GRPC_HOST"] = "127.0.0.1"  # loopback only in tests
    env["SCULPT_GRPC_PORT"] = str(grpc_port)
    return env


@pytest.fixture(scope="module")
def bento_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built Bento as `bentoml containerize` lays it out in the image (with models/)."""
    store = tmp_path_factory.mktemp("store")
    import_toy_bundle(store, tmp_path_factory.mktemp("bundle") / "embedder")
    built = build_bento(store, "bentofile.yaml")
    archive = tmp_path_factory.mktemp("export") / "sculpt.bento"
    tag = f"{built.parent.name}:{built.name}"
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "export", tag, str(archive)],
        env=bentoml_env(store),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    target = tmp_path_factory.mktemp("bento")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    assert (target / "models" / "sculpt-embedder").is_dir()
    _UNTOUCHED[target] = tree(target)
    return target


@pytest.fixture(scope="module")
def service(
    bento_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, dict]]:
    """`bentoml serve BENTO` (the image's entrypoint) with the pod's environment."""
    port, grpc_port = free_port(), free_port()
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    image_env = {e["name"]: e["value"] for e in info["envs"]}  # ENV lines of the Dockerfile
    home = tmp_path_factory.mktemp("bentoml-home")  # the emptyDir: starts empty
    env = {**bentoml_env(home), **image_env, **pod_environment(home, grpc_port)}
    log = (tmp_path_factory.mktemp("logs") / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", str(bento_dir), "--port", str(port)],
        cwd=bento_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: proc.poll() is None and httpx.get(f"{url}/readyz").status_code == 200,
            SERVER_START_S,
            "the Bento to become ready",
        )
        yield url, grpc_port, env
    finally:
        stop(proc)
        log.close()


def prometheus_config(workdir: Path, target_port: int) -> Path:
    """prometheus.yml: the scrape job of deploy/prometheus, discovery replaced by a file."""
    job = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    targets = workdir / "targets.json"
    job["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
    job["scrape_interval"] = "1s"

    def pod(name: str, annotations: dict[str, str]) -> dict[str, Any]:
        labels = {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": "sculpt",
        }
        for key, value in annotations.items():
            sanitized = key.replace(".", "_").replace("/", "_")
            labels[f"__meta_kubernetes_pod_annotation_{sanitized}"] = value
        # Discovery lists the pod IP with the container's first port; the port annotation
        # must steer the scrape to the right one.
        return {"targets": ["127.0.0.1:9"], "labels": labels}

    deployment = find(render("overlays/cpu"), "Deployment", "sculpt")
    annotations = dict(deployment["spec"]["template"]["metadata"]["annotations"])
    annotations["prometheus.io/port"] = str(target_port)
    decoy = {k: v for k, v in annotations.items() if k != "prometheus.io/scrape"}
    targets.write_text(json.dumps([pod(POD, annotations), pod("not-annotated-0", decoy)]))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [job],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prom(
    service: tuple[str, int, dict], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    binary = prometheus()
    url, _, _ = service
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = prometheus_config(workdir, int(url.rsplit(":", 1)[1]))
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_for(
            lambda: proc.poll() is None and client.get("/-/ready").status_code == 200,
            60,
            "Prometheus to become ready",
        )
        yield client
    finally:
        client.close()
        stop(proc)
        log.close()
        if proc.returncode not in (0, -signal.SIGINT):
            print((workdir / "prometheus.log").read_text()[-3000:])


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def scalar(client: httpx.Client, expr: str) -> float | None:
    result = query(client, expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def embed(url: str, z: np.ndarray, key: str | None = API_KEY) -> httpx.Response:
    """POST /embed with inputs whose embeddings are ``z`` (the toy encoder is linear)."""
    w_enc, _ = toy_weights(SHAPE, LATENT)
    x = (z @ np.linalg.pinv(w_enc)).reshape(-1, *SHAPE)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/embed", json={"inputs": x.tolist()}, headers=headers, timeout=30)


def drift(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/drift", headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_pod_environment_works(service: tuple[str, int, dict], bento_dir: Path) -> None:
    """The Bento from the image layout serves the packed bundle under the Deployment's
    settings: API key enforced, health and metrics open, gRPC up, ORT threads = CPU limit."""
    url, grpc_port, env = service
    assert httpx.post(f"{url}/info", json={}).status_code == 401
    info = httpx.post(f"{url}/info", json={}, headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["name"] == "embedder"
    # Resolved in the Bento's own model store: BENTOML_HOME (the emptyDir) starts empty.
    assert Path(info["path"]).is_relative_to(bento_dir / "models" / "sculpt-embedder")
    assert not any((Path(env["BENTOML_HOME"]) / "models").iterdir())
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.get(f"{url}/livez").status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert env["SCULPT_ORT_THREADS"] == "2"
    assert tree(bento_dir) == _UNTOUCHED[bento_dir], "serving wrote into the read-only Bento"


def test_prometheus_sees_drift_raise_the_alert(
    service: tuple[str, int, dict], prom: httpx.Client
) -> None:
    url, _, _ = service
    started = time.time()

    # The scrape job keeps the annotated pod on the annotated port and drops the decoy.
    def targets() -> Any:
        data = prom.get("/api/v1/targets").json()["data"]
        up = [t for t in data["activeTargets"] if t["health"] == "up"]
        return (up, data["droppedTargets"]) if up else None

    active, dropped = wait_for(targets, 30, "the scrape target to be up")
    assert len(active) == 1
    assert active[0]["labels"]["namespace"] == NAMESPACE and active[0]["labels"]["pod"] == POD
    assert active[0]["scrapeUrl"] == f"{url}/metrics"
    assert any(
        t["discoveredLabels"].get("__meta_kubernetes_pod_name") == "not-annotated-0"
        for t in dropped
    )

    # In-distribution traffic: embeddings like the reference (N(0, I)); windows evaluate ok.
    rng = np.random.default_rng(3)
    for _ in range(4):
        assert embed(url, rng.standard_normal((64, LATENT))).status_code == 200
    assert embed(url, rng.standard_normal((4, LATENT)), key=None).status_code == 401
    report = wait_for(
        lambda: (r := drift(url))["windows_evaluated"] >= 2 and r, 30, "two drift windows"
    )
    assert report["state"] == "ok", report
    evaluated = report["windows_evaluated"]
    wait_for(
        lambda: scalar(prom, "sum(sculpt_drift_windows_evaluated_total)") == evaluated,
        30,
        "Prometheus to scrape the evaluated windows",
    )
    assert scalar(prom, f'max(sculpt_drift_alert{{pod="{POD}"}})') == 0.0

    # Shifted traffic: every latent moved by 3 standard deviations.
    for _ in range(4):
        assert embed(url, rng.standard_normal((64, LATENT)) + 3.0).status_code == 200
    wait_for(lambda: drift(url)["state"] == "drift", 30, "the monitor to report drift")
    wait_for(
        lambda: scalar(prom, f'max(sculpt_drift_alert{{pod="{POD}"}})') == 1.0,
        30,
        "sculpt_drift_alert to reach 1 in Prometheus",
    )
    over = query(prom, "sculpt_drift_mmd2 > on (pod, worker) sculpt_drift_mmd2_threshold")
    assert over and over[0]["metric"]["pod"] == POD

    # The gauge went 0 -> 1 in Prometheus' own history, never the other way. (Polled: the
    # range's last step can fall just before the scrape that saw the 1.)
    def history() -> list[float]:
        body = prom.get(
            "/api/v1/query_range",
            params={
                "query": f'max(sculpt_drift_alert{{pod="{POD}"}})',
                "start": started,
                "end": time.time(),
                "step": "1s",
            },
        ).json()
        return [float(v) for _, v in body["data"]["result"][0]["values"]]

    values = wait_for(lambda: (h := history())[-1] == 1.0 and h, 30, "the 1 in the history")
    assert values[0] == 0.0 and values == sorted(values), values

    # The alert rule from deploy/prometheus sees it (pending: its `for` is 2 minutes).
    def drift_alert() -> Any:
        alerts = prom.get("/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "SculptEmbeddingDrift"]

    (alert,) = wait_for(drift_alert, 30, "the SculptEmbeddingDrift alert")
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"]["pod"] == POD and alert["labels"]["namespace"] == NAMESPACE


def test_dashboard_and_rule_queries_run_on_live_data(
    service: tuple[str, int, dict], prom: httpx.Client
) -> None:
    url, _, _ = service
    assert embed(url, np.zeros((2, LATENT))).status_code == 200  # at least one API request
    wait_for(
        lambda: query(prom, "bentoml_service_request_duration_seconds_bucket"),
        30,
        "request metrics in Prometheus",
    )
    names = set(prom.get("/api/v1/label/__name__/values").json()["data"])
    used = {n for _, e in [*dashboard_exprs(), *rule_exprs()] for n in promql_metric_names(e)}
    used -= recorded_names()  # written by the rules themselves, once their inputs have rates
    assert used <= names, f"not in Prometheus: {sorted(used - names)}"
    for title, expr in dashboard_exprs():
        result = query(prom, concrete_promql(expr))  # status success: valid on this server
        if "sculpt_drift" in expr or "sculpt_embeddings" in expr:
            assert result, f"{title}: no data for {expr}"
    for _, expr in rule_exprs():
        query(prom, expr)  # status success
