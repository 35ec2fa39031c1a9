"""Alert rules, the Grafana dashboard and the scrape set-up, checked offline.

The rules pass `promtool check rules` and the unit tests in deploy/prometheus (synthetic
series: each alert fires when it must and not before); the PrometheusRule object carries the
same rules; every metric name a rule or panel reads is one the service exports (a /metrics
captured from a real server, itself checked against sculptserve/serving/drift.py); every dashboard
query parses as PromQL. tests/test_deploy_e2e.py runs them against a live Prometheus.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_deploy_support import (
    DASHBOARD_FILE,
    RULES_FILE,
    RULES_TESTS,
    SCRAPE_CONFIG,
    concrete_promql,
    container,
    dashboard,
    dashboard_exprs,
    exported_metric_names,
    find,
    promql_metric_names,
    promtool,
    recorded_names,
    render,
    rule_exprs,
)

from sculptserve.serving import drift
from sculptserve.serving import metrics as core_metrics
from sculptserve.serving.grpc import metrics as grpc_metrics

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


# --- rules ----------------------------------------------------------------------------------


def test_prometheusrule_carries_the_rule_file() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    for overlay in ("overlays/cpu", "overlays/gpu"):
        obj = find(render(overlay), "PrometheusRule", "sculpt")
        assert obj["spec"] == rules, f"{overlay}: PrometheusRule differs from {RULES_FILE.name}"
    names = [g["name"] for g in rules["groups"]]
    assert len(names) == len(set(names))  # the CRD's list-map key


def test_the_issue_s_alerts_exist() -> None:
    alerts = dict(rule_exprs())
    assert "sculpt_drift_alert" in alerts["SculptEmbeddingDrift"]
    assert "histogram_quantile(0.99" in alerts["SculptHighLatencyP99"]
    assert 'http_response_code=~"5.."' in alerts["SculptHigh5xxRate"]
    # the Open Inference Protocol's REST infer routes (issue 14) are model routes too
    for name in ("SculptHighLatencyP99", "SculptHigh5xxRate"):
        assert "/v2/models/[^/]+(/versions/[^/]+)?/infer" in alerts[name]
    # gRPC (issue 14): latency and server-side errors of the API services alert too
    grpc_latency = alerts["SculptGrpcHighLatencyP99"]
    assert "histogram_quantile(0.99" in grpc_latency
    assert "grpc_server_handling_seconds_bucket" in grpc_latency
    grpc_errors = alerts["SculptGrpcHighErrorRate"]
    assert 'grpc_code=~"Unknown|DeadlineExceeded|Internal|Unavailable|DataLoss"' in grpc_errors
    for expr in (grpc_latency, grpc_errors):
        assert 'grpc_service=~"sculpt.v1.Sculpt|inference.GRPCInferenceService"' in expr
    # the core's metrics (issue 14): a stalled drift monitor by the age of its last evaluation
    # while embeddings flow, and the model's p99 against the requests' p99
    stalled = alerts["SculptDriftMonitorStalled"]
    age = (
        "time() - max by (namespace, pod, worker) (sculpt_drift_last_evaluation_timestamp_seconds)"
    )
    assert age in stalled
    assert "increase(sculpt_embeddings_served_total[15m])" in stalled
    assert (
        "sculpt_inference_duration_seconds_bucket"
        in alerts["sculpt:inference_duration_seconds:p99_5m"]
    )
    overhead = alerts["sculpt:embed_serving_overhead_seconds:p99_5m"]
    assert {"sculpt:embed_request_duration_seconds:p99_5m"} < promql_metric_names(overhead)


def test_promtool_checks_the_rules() -> None:
    result = _run(promtool(), "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = _run(promtool(), "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load(RULES_TESTS.read_text(encoding="utf-8"))["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    recorded = recorded_names()
    alerts = {name for name, _ in rule_exprs()} - recorded
    assert tested == alerts, "every alert has a unit test"
    read = {
        name
        for test in tests
        for case in test.get("promql_expr_test", [])
        for name in promql_metric_names(case["expr"])
    }
    assert recorded and read == recorded, "every recording rule has a unit test"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # expecting the drift alert for the quiet pod
        ("pod: sculpt-a", "pod: sculpt-b"),
        # the gRPC error alert must not count client mistakes: as NotFound, the 2% of
        # Internal calls no longer fire it
        ('grpc_method="Embed", grpc_code="Internal"', 'grpc_method="Embed", grpc_code="NotFound"'),
        # the stalled-monitor alert: a second stale worker under traffic fires too...
        (
            'pod="sculpt-c", worker="2"}\'\n        values: "0+60x40"',
            'pod="sculpt-c", worker="2"}\'\n        values: "60x40"',
        ),
        # ...and so does the stale idle worker once it serves
        (
            'pod="sculpt-d", worker="1"}\'\n        values: "0x40"',
            'pod="sculpt-d", worker="1"}\'\n        values: "0+200x40"',
        ),
        # the embedding requests' p99 reads /embed and /embed/files, not /reconstruct
        (
            'endpoint="/reconstruct", http_response_code="200", le="+Inf"',
            'endpoint="/embed/files", http_response_code="200", le="+Inf"',
        ),
    ],
)
def test_promtool_rule_unit_tests_can_fail(tmp_path: Path, old: str, new: str) -> None:
    """The unit tests are not vacuous: a wrong expectation or a changed input fails them."""
    (tmp_path / RULES_FILE.name).write_text(RULES_FILE.read_text())
    assert RULES_TESTS.read_text().count(old) == 1
    broken = RULES_TESTS.read_text().replace(old, new, 1)
    (tmp_path / RULES_TESTS.name).write_text(broken)
    result = _run(promtool(), "test", "rules", str(tmp_path / RULES_TESTS.name))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


# --- metric names ---------------------------------------------------------------------------


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, pod) (rate(foo_bucket{a="x|y", b=~"$pod"}'
        "[$__rate_interval]))) / on (pod) group_left bar_total > bool 0.5 unless baz"
    )
    assert promql_metric_names(expr) == {"foo_bucket", "bar_total", "baz"}


def test_metric_sample_matches_the_code() -> None:
    """The captured /metrics has exactly the drift monitor's metrics (as drift.py names them)
    and the gRPC server's (as grpc/metrics.py names them), plus BentoML's own."""
    names = exported_metric_names()
    sculpt = {n for n in names if n.startswith("sculpt_")}
    core = {
        core_metrics.MODEL_INFO,
        *(
            histogram + suffix
            for histogram in (core_metrics.INFERENCE_SECONDS, core_metrics.BATCH_ROWS)
            for suffix in HISTOGRAM_SUFFIXES
        ),
    }
    assert sculpt == set(drift._GAUGES) | set(drift._COUNTERS) | core
    histogram = grpc_metrics.HANDLING_SECONDS
    assert {n for n in names if n.startswith("grpc_")} == {
        grpc_metrics.STARTED,
        grpc_metrics.HANDLED,
        *(histogram + suffix for suffix in HISTOGRAM_SUFFIXES),
    }
    assert {
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
    } <= names


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_queries_read_only_exported_metrics(source: str) -> None:
    exported = exported_metric_names()
    pairs = rule_exprs() if source == "rules" else dashboard_exprs()
    if source == "rules":
        exported |= recorded_names()  # a rule may read what another records
    for title, expr in pairs:
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= exported, f"{title}: unknown metrics {sorted(names - exported)}"


# --- dashboard ------------------------------------------------------------------------------


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    board = dashboard()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}

    def panel_with(*needles: str) -> str:
        hits = [t for t, e in by_title.items() if all(n in e for n in needles)]
        assert hits, f"no panel reads all of {needles}"
        return hits[0]

    panel_with("rate(bentoml_service_request_total")  # request rate
    panel_with("histogram_quantile(0.5,", "histogram_quantile(0.99,")  # p50 / p99
    panel_with('http_response_code=~"5.."')  # 5xx
    panel_with("sculpt_embeddings_served_total")
    panel_with("sculpt_drift_mmd2{", "sculpt_drift_mmd2_threshold")  # MMD^2 vs threshold
    panel_with("sculpt_drift_lps_linear{", "sculpt_drift_lps_linear_threshold")
    panel_with("sculpt_drift_alert")
    panel_with("rate(grpc_server_started_total")  # gRPC call rate
    panel_with("histogram_quantile(0.99,", "grpc_server_handling_seconds_bucket")  # gRPC p99
    panel_with("grpc_server_handled_total", 'grpc_code!="OK"')  # gRPC errors by code
    # the core's metrics (issue 14)
    panel_with(  # model time per ONNX Runtime call, p50 and p99 per model
        "histogram_quantile(0.5,", "histogram_quantile(0.99,", "sculpt_inference_duration_seconds"
    )
    panel_with("sculpt_inference_duration_seconds", "bentoml_service_request_duration_seconds")
    panel_with("sculpt_batch_rows_sum", "sculpt_batch_rows_count")  # rows per call
    panel_with("sculpt_model_info")
    panel_with("time() - ", "sculpt_drift_last_evaluation_timestamp_seconds")
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0, panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        query = variables[name]["query"]["query"]
        metric = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", query)
        assert metric and metric.group(1) in exported_metric_names() and metric.group(3) == name


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every query (as a recording rule) with Grafana's variables filled in."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": concrete_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run(promtool(), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_ships_as_a_grafana_configmap() -> None:
    for overlay in ("overlays/cpu", "overlays/gpu"):
        configmap = find(render(overlay), "ConfigMap", "sculpt-grafana-dashboard")
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(configmap["data"][DASHBOARD_FILE.name]) == dashboard()


# --- scraping without prometheus-operator ---------------------------------------------------


def _meta_annotation(key: str) -> str:
    """Prometheus' meta label for a pod annotation (kubernetes_sd_configs, role pod)."""
    return "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def test_scrape_config_reads_the_deployment_s_annotations() -> None:
    job = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    deployment = find(render("overlays/cpu"), "Deployment", "sculpt")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    used = {label for rule in job["relabel_configs"] for label in rule.get("source_labels", [])}
    for key in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"):
        assert key in annotations and _meta_annotation(key) in used, key
    targets = {rule.get("target_label") for rule in job["relabel_configs"]}
    assert {"namespace", "pod", "__address__", "__metrics_path__"} <= targets
    assert container(deployment)["ports"][0]["name"] == "http"
