"""The online drift monitor: alerts on real calibrated thresholds, metrics, threads, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from bundle_factory import make_bundle
from prometheus_client import CollectorRegistry

from sculptserve.bundle.load import load_bundle
from sculptserve.bundle.schema import DriftCalibration
from sculptserve.serving.drift import DriftConfig, DriftMonitor
from sculptserve.stats.drift_windows import WindowScorer, WindowStatistics, calibrate_drift

DIM = 4
WINDOW = 128
EVERY = 64
BATCH = 32
LABELS = {"worker": "w0"}


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.random.default_rng(100).normal(size=(512, DIM))


@pytest.fixture(scope="module")
def calibration(reference: np.ndarray) -> DriftCalibration:
    """Real thresholds: N(0, I) held-out pool, disjoint from the reference (export defaults)."""
    pool = np.random.default_rng(101).normal(size=(4096, DIM))
    thresholds = calibrate_drift(
        pool, reference, window=WINDOW, false_alarm_rate=0.01, reference_rows=256, seed=0
    )
    return DriftCalibration(**thresholds.to_dict())


def monitor_for(reference, calibration, registry=None, **config) -> DriftMonitor:
    config.setdefault("every", EVERY)
    return DriftMonitor(
        reference,
        calibration,
        DriftConfig(**config),
        registry=registry if registry is not None else CollectorRegistry(),
        labels=LABELS,
        background=False,
    )


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, LABELS)


def feed(monitor, registry, batches):
    """Observe batches one by one; return (state, alert gauge) after each new evaluation."""
    out = []
    for batch in batches:
        before = monitor.report().windows_evaluated
        monitor.observe(batch)
        if monitor.report().windows_evaluated > before:
            out.append((monitor.report().state, sample(registry, "sculpt_drift_alert")))
    return out


def null_batches(rng, n, size=BATCH):
    return [rng.normal(size=(size, DIM)) for _ in range(n)]


def shifted_batches(kind, rng, n):
    out = []
    for _ in range(n):
        z = rng.normal(size=(BATCH, DIM))
        if kind == "mean+0.5":
            z = z + 0.5
        elif kind == "scale x2":
            z = 2.0 * z
        else:  # correlated, marginals still N(0, 1): dims start predicting each other
            z[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]
            z[:, 3] = 0.8 * z[:, 2] + 0.6 * z[:, 3]
        out.append(z)
    return out


def test_in_distribution_stays_quiet_over_20_windows(reference, calibration):
    """Seed 0, not a picked one. With the default rule (two fired windows in a row), 23
    half-overlapping null windows all stayed quiet for 59 of seeds 0-59 (a single-window rule:
    39 of 60), so this can fail by chance only rarely."""
    registry = CollectorRegistry()
    monitor = monitor_for(reference, calibration, registry)
    evaluations = feed(monitor, registry, null_batches(np.random.default_rng(0), 48))
    report = monitor.report()
    assert report.windows_evaluated >= 20
    assert len(evaluations) == report.windows_evaluated
    assert all(alert == 0 for _, alert in evaluations), evaluations
    assert all(state == "ok" for state, _ in evaluations)
    assert report.state == "ok" and report.fired == ()


@pytest.mark.parametrize("kind", ["mean+0.5", "scale x2", "correlated"])
def test_shift_raises_alert_within_two_windows_then_recovers(reference, calibration, kind):
    rng = np.random.default_rng(2)
    registry = CollectorRegistry()
    monitor = monitor_for(reference, calibration, registry)
    before = feed(monitor, registry, null_batches(rng, 8))  # one full in-distribution window
    assert before and before[-1] == ("ok", 0.0)

    # WINDOW // BATCH batches fill the window with shifted rows; then allow 2 more windows.
    shifted = feed(
        monitor, registry, shifted_batches(kind, rng, WINDOW // BATCH + 2 * EVERY // BATCH)
    )
    full = shifted[WINDOW // EVERY - 1 :]  # evaluations whose window is entirely shifted
    assert len(full) == 3
    assert ("drift", 1.0) in full[:2], shifted
    report = monitor.report()
    assert report.state == "drift" and report.fired
    if kind == "correlated":
        assert "lps_linear" in report.fired
        assert report.lps_linear > report.lps_linear_threshold

    recovered = feed(monitor, registry, null_batches(rng, WINDOW // BATCH + 2 * EVERY // BATCH))
    full = recovered[WINDOW // EVERY - 1 :]
    assert ("ok", 0.0) in full[:2], recovered
    assert monitor.report().state == "ok"


def test_false_alarm_rate_on_disjoint_null_windows(reference, calibration):
    """Every evaluation sees WINDOW fresh rows (every == window): disjoint null windows."""
    registry = CollectorRegistry()
    monitor = monitor_for(reference, calibration, registry, every=WINDOW)
    rng = np.random.default_rng(3)
    n_windows = 300
    alarms = {"alert": 0, "fired": 0, "mmd2": 0, "lps_linear": 0}
    for _ in range(n_windows):
        monitor.observe(rng.normal(size=(WINDOW, DIM)))
        report = monitor.report()
        alarms["alert"] += report.state == "drift"
        alarms["fired"] += bool(report.fired)
        for name in report.fired:
            alarms[name] += 1
    assert monitor.report().windows_evaluated == n_windows
    rates = {k: v / n_windows for k, v in alarms.items()}
    print(
        f"\nfalse-alarm rate per window over {n_windows} disjoint null windows "
        f"(false_alarm_rate={calibration.false_alarm_rate}, n_resamples="
        f"{calibration.n_resamples}): alert {rates['alert']:.4f}, a window fired "
        f"{rates['fired']:.4f} (mmd2 {rates['mmd2']:.4f}, "
        f"lps_linear {rates['lps_linear']:.4f})"
    )
    assert rates["fired"] <= 0.04
    assert rates["alert"] <= rates["fired"]


def test_prometheus_metrics_read_back_exactly(reference, calibration):
    registry = CollectorRegistry()
    monitor = monitor_for(reference, calibration, registry)
    assert sample(registry, "sculpt_drift_alert") == 0.0
    assert np.isnan(sample(registry, "sculpt_drift_mmd2"))  # no window yet
    rng = np.random.default_rng(4)
    sizes = [32, 7, 50, 32, 1, 60, 64, 32, 17, 33]  # 328 rows, uneven batches
    for n in sizes:
        monitor.observe(rng.normal(size=(n, DIM)))
    report = monitor.report()
    assert sample(registry, "sculpt_embeddings_served_total") == sum(sizes)
    assert report.embeddings_seen == sum(sizes)
    evaluated = sample(registry, "sculpt_drift_windows_evaluated_total")
    assert evaluated == report.windows_evaluated
    # a trigger every 64 rows; the ones before the window is full do not evaluate
    triggers, total = 0, 0
    for n in sizes:
        before, total = total, total + n
        if total // EVERY > before // EVERY and total >= WINDOW:
            triggers += 1
    assert evaluated == triggers
    assert sample(registry, "sculpt_drift_mmd2") == pytest.approx(report.mmd2)
    assert sample(registry, "sculpt_drift_lps_linear") == pytest.approx(report.lps_linear)
    assert sample(registry, "sculpt_drift_mmd2_threshold") == calibration.mmd2_threshold
    assert sample(registry, "sculpt_drift_lps_linear_threshold") == calibration.lps_linear_threshold
    assert sample(registry, "sculpt_drift_reference_lps_linear") == calibration.reference_lps_linear
    assert sample(registry, "sculpt_drift_max_abs_mean_shift") == pytest.approx(
        max(abs(s) for s in report.mean_shift)
    )
    assert sample(registry, "sculpt_drift_dropped_total") == 0.0


def test_dropped_rows_are_counted(reference, calibration):
    registry = CollectorRegistry()
    # every > total rows: nothing drains the pending queue, so it overflows
    monitor = monitor_for(reference, calibration, registry, every=10_000, max_pending=64)
    rng = np.random.default_rng(5)
    monitor.observe(rng.normal(size=(50, DIM)))
    monitor.observe(rng.normal(size=(50, DIM)))
    monitor.observe(rng.normal(size=(100, DIM)))
    assert sample(registry, "sculpt_drift_dropped_total") == 200 - 64
    assert monitor.report().dropped == 200 - 64
    assert sample(registry, "sculpt_embeddings_served_total") == 200


def test_monitors_share_a_registry_without_collisions(reference, calibration):
    registry = CollectorRegistry()
    kwargs = {"registry": registry, "background": False}
    a = DriftMonitor(reference, calibration, labels={"worker": "a"}, **kwargs)
    b = DriftMonitor(reference, calibration, labels={"worker": "b"}, **kwargs)
    a.observe(np.zeros((3, DIM)))
    b.observe(np.zeros((5, DIM)))
    served = "sculpt_embeddings_served_total"
    assert registry.get_sample_value(served, {"worker": "a"}) == 3
    assert registry.get_sample_value(served, {"worker": "b"}) == 5
    with pytest.raises(ValueError, match="same label names"):
        DriftMonitor(reference, calibration, labels={"pod": "x"}, **kwargs)


def test_background_worker_concurrent_observers(reference, calibration):
    registry = CollectorRegistry()
    monitor = DriftMonitor(
        reference,
        calibration,
        DriftConfig(every=EVERY),
        registry=registry,
        labels=LABELS,
        background=True,
    )
    assert monitor.worker_alive

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            monitor.observe(rng.normal(size=(BATCH, DIM)))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 10
    while monitor.report().windows_evaluated == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    report = monitor.report()
    assert report.windows_evaluated > 0
    assert report.embeddings_seen == 4 * 20 * BATCH
    assert sample(registry, "sculpt_embeddings_served_total") == 4 * 20 * BATCH
    assert report.state in ("ok", "drift") and report.last_evaluated_at is not None
    monitor.close()
    assert not monitor.worker_alive
    monitor.close()  # idempotent


class SlowScorer:
    """Blocks inside score() until released, so a test can observe during an evaluation."""

    def __init__(self, inner: WindowScorer) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def score(self, window: np.ndarray) -> WindowStatistics:
        self.started.set()
        self.release.wait(timeout=30)
        return self.inner.score(window)


def test_observe_does_not_wait_for_a_running_evaluation(reference, calibration):
    scorer = SlowScorer(WindowScorer(reference[: calibration.reference_rows], calibration.kernel))
    monitor = DriftMonitor(
        reference,
        calibration,
        DriftConfig(every=EVERY),
        registry=CollectorRegistry(),
        background=True,
        scorer=scorer,
    )
    rng = np.random.default_rng(6)
    try:
        for _ in range(WINDOW // BATCH):
            monitor.observe(rng.normal(size=(BATCH, DIM)))
        assert scorer.started.wait(timeout=10)
        durations = []
        for _ in range(50):
            batch = rng.normal(size=(BATCH, DIM))
            t0 = time.perf_counter()
            monitor.observe(batch)
            durations.append(time.perf_counter() - t0)
        assert not scorer.release.is_set()  # the evaluation was running throughout
        assert monitor.report().windows_evaluated == 0
        print(
            f"\nobserve() during an evaluation: median {np.median(durations) * 1e6:.0f} us, "
            f"max {max(durations) * 1e6:.0f} us"
        )
        assert max(durations) < 0.05
        assert np.median(durations) < 0.005
    finally:
        scorer.release.set()
        monitor.close()
    assert monitor.report().windows_evaluated >= 1


def test_warming_up_report_and_json(reference, calibration):
    monitor = monitor_for(reference, calibration)
    monitor.observe(np.random.default_rng(7).normal(size=(WINDOW - 1, DIM)))
    assert monitor.evaluate_now() is None
    report = monitor.report()
    assert report.state == "warming_up"
    assert report.mmd2 is None and report.windows_evaluated == 0
    assert report.window_rows == WINDOW - 1
    body = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    for key in ("state", "mmd2", "mmd2_threshold", "lps_linear", "lps_linear_threshold"):
        assert key in body
    assert body["mmd2_threshold"] == calibration.mmd2_threshold

    monitor.observe(np.random.default_rng(8).normal(size=(1, DIM)))
    evaluated = monitor.evaluate_now()
    assert evaluated is not None and evaluated.state in ("ok", "drift")
    body = json.loads(json.dumps(evaluated.to_dict(), allow_nan=False))
    assert len(body["mean_shift"]) == DIM and len(body["std_ratio"]) == DIM
    assert isinstance(body["last_evaluated_at"], str)


def test_degenerate_window_is_drift_and_strict_json(reference, calibration):
    monitor = monitor_for(reference, calibration)
    monitor.observe(np.ones((WINDOW, DIM)))  # collapsed encoder: every embedding identical
    report = monitor.evaluate_now()
    assert report is not None and report.state == "drift"
    json.dumps(report.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, DIM + 1)),
        np.zeros((2, 2, DIM)),
        np.array([[0.0, np.nan, 0.0, 0.0]]),
        np.array([[0.0, np.inf, 0.0, 0.0]] * 3),
        np.array([["a"] * DIM]),
    ],
    ids=["wrong-dim", "3-d", "nan", "inf", "strings"],
)
def test_bad_input_rejected_and_window_unchanged(reference, calibration, bad):
    registry = CollectorRegistry()
    monitor = monitor_for(reference, calibration, registry)
    monitor.observe(np.random.default_rng(9).normal(size=(WINDOW, DIM)))
    first = monitor.evaluate_now()
    with pytest.raises(ValueError):
        monitor.observe(bad)
    again = monitor.evaluate_now()
    assert again.mmd2 == first.mmd2 and again.mean_shift == first.mean_shift
    assert again.embeddings_seen == WINDOW
    assert sample(registry, "sculpt_embeddings_served_total") == WINDOW


def test_monitor_from_a_bundle(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", latent_dim=3), check_onnx=False)
    monitor = DriftMonitor(
        bundle.reference(), bundle.manifest.drift, registry=CollectorRegistry(), background=False
    )
    assert monitor.config.window == bundle.manifest.drift.window
    assert monitor.config.every == bundle.manifest.drift.window // 2
    monitor.observe(np.random.default_rng(10).normal(size=(bundle.manifest.drift.window, 3)))
    assert monitor.report().windows_evaluated == 1
    with pytest.raises(ValueError, match="batch, 3"):
        monitor.observe(np.zeros((2, 4)))


def test_prometheus_multiprocess_mode(tmp_path):
    """In PROMETHEUS_MULTIPROC_DIR mode: counters sum, stat gauges per pid, alert by max."""
    code = (
        "import os, numpy as np\n"
        "from prometheus_client import CollectorRegistry, multiprocess\n"
        "from sculptserve.bundle.schema import DriftCalibration\n"
        "from sculptserve.serving.drift import DriftConfig, DriftMonitor\n"
        "cal = DriftCalibration(window=32, false_alarm_rate=0.01, n_resamples=10, kernel='rbf',"
        " bandwidth=2.0, reference_rows=64, mmd2_threshold=0.1, lps_linear_threshold=0.2,"
        " reference_lps_linear=0.01, null_mmd2_mean=0.0, null_lps_linear_mean=0.0)\n"
        "rng = np.random.default_rng(0)\n"
        "m = DriftMonitor(rng.normal(size=(64, 3)), cal, DriftConfig(consecutive=1),"
        " registry=CollectorRegistry(), labels={'worker': '0'}, background=False)\n"
        "m.observe(rng.normal(size=(40, 3)) + 3.0)\n"
        "assert m.report().state == 'drift'\n"
        "out = CollectorRegistry()\n"
        "multiprocess.MultiProcessCollector(out)\n"
        "w, pid = {'worker': '0'}, {'worker': '0', 'pid': str(os.getpid())}\n"
        "assert out.get_sample_value('sculpt_embeddings_served_total', w) == 40\n"
        "assert out.get_sample_value('sculpt_drift_windows_evaluated_total', w) == 1\n"
        "assert out.get_sample_value('sculpt_drift_alert', w) == 1\n"
        "assert out.get_sample_value('sculpt_drift_mmd2', pid) == m.report().mmd2\n"
        "assert out.get_sample_value('sculpt_drift_mmd2_threshold', pid) == 0.1\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


def test_calibrated_run_length_in_report_metrics_and_json(reference, calibration):
    """A current calibration carries its alert rule (every, consecutive) and its expected
    run length; the monitor defaults to that rule and reports the ERL."""
    assert (calibration.rule, calibration.every, calibration.consecutive) == ("combined", EVERY, 2)
    registry = CollectorRegistry()
    monitor = DriftMonitor(
        reference, calibration, registry=registry, labels=LABELS, background=False
    )
    assert (monitor.config.every, monitor.config.consecutive) == (EVERY, 2)
    report = monitor.report()
    assert report.expected_run_length == calibration.expected_run_length > 0
    assert report.consecutive == 2
    assert json.loads(json.dumps(report.to_dict()))["expected_run_length"] == pytest.approx(
        calibration.expected_run_length
    )
    assert sample(registry, "sculpt_drift_expected_run_length") == pytest.approx(
        calibration.expected_run_length
    )


def test_run_length_is_not_claimed_for_another_rule(reference, calibration, caplog):
    registry = CollectorRegistry()
    with caplog.at_level("WARNING", logger="sculptserve.serving.drift"):
        monitor = monitor_for(reference, calibration, registry, every=WINDOW)
    assert monitor.report().expected_run_length is None
    assert np.isnan(sample(registry, "sculpt_drift_expected_run_length"))
    assert "expected run length" in caplog.text


def test_old_calibration_keeps_todays_behaviour(reference, calibration):
    """Bundles exported before the run-length fields: same thresholds, rule and defaults."""
    old_fields = {
        "window",
        "false_alarm_rate",
        "n_resamples",
        "kernel",
        "bandwidth",
        "reference_rows",
        "mmd2_threshold",
        "lps_linear_threshold",
        "reference_lps_linear",
        "null_mmd2_mean",
        "null_lps_linear_mean",
    }
    old = DriftCalibration.model_validate(
        {k: v for k, v in calibration.model_dump().items() if k in old_fields}
    )
    assert old.rule == "per_statistic" and old.expected_run_length is None
    registry = CollectorRegistry()
    monitor = DriftMonitor(reference, old, registry=registry, labels=LABELS, background=False)
    assert (monitor.config.every, monitor.config.consecutive) == (WINDOW // 2, 2)
    assert monitor.report().expected_run_length is None
    assert np.isnan(sample(registry, "sculpt_drift_expected_run_length"))
    monitor.observe(np.random.default_rng(11).normal(size=(WINDOW, DIM)) + 3.0)
    assert monitor.report().fired  # the stored thresholds are used as they are


def test_calibrated_every_and_consecutive_are_the_defaults(reference):
    pool = np.random.default_rng(12).normal(size=(2048, DIM))
    thresholds = calibrate_drift(
        pool,
        reference,
        window=WINDOW,
        every=32,
        consecutive=3,
        reference_rows=256,
        n_resamples=256,
    )
    monitor = DriftMonitor(
        reference,
        DriftCalibration(**thresholds.to_dict()),
        registry=CollectorRegistry(),
        background=False,
    )
    assert (monitor.config.every, monitor.config.consecutive) == (32, 3)
    assert monitor.report().expected_run_length == thresholds.expected_run_length
