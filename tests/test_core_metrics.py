"""The core's own Prometheus metrics (sculptserve/serving/metrics.py, and the drift monitor's
last-evaluation timestamp): model time and rows per ONNX Runtime call, the bundle served.

Each test writes to a registry of its own; one runs two apps in child processes under
``PROMETHEUS_MULTIPROC_DIR`` and reads them the way BentoML's /metrics does. The REST
service's /metrics is checked in tests/test_service.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from test_batching import LIVENESS_S, in_thread, joined, wait_queued

from sculptserve.bundle.load import Bundle, load_bundle
from sculptserve.serving.batching import BatchConfig
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.metrics import (
    BATCH_ROWS,
    INFERENCE_SECONDS,
    MODEL_INFO,
    MODELS,
    CoreMetrics,
)
from sculptserve.serving.runtime import EmbeddingRuntime, RuntimeConfig

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)
LAST_EVALUATION = "sculpt_drift_last_evaluation_timestamp_seconds"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_bundle(tmp_path_factory.mktemp("core-metrics") / "b"))


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def make_app(bundle: Bundle, registry: CollectorRegistry, **kwargs: object) -> EmbeddingApp:
    kwargs.setdefault("background_drift", False)
    kwargs.setdefault("runtime_config", RuntimeConfig(intra_op_threads=1))
    return EmbeddingApp(bundle, metrics_registry=registry, **kwargs)  # type: ignore[arg-type]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def calls(registry: CollectorRegistry, model: str) -> tuple[float, float]:
    """(ONNX Runtime calls, rows over those calls) of ``model``."""
    count = value(registry, f"{INFERENCE_SECONDS}_count", model=model)
    assert value(registry, f"{BATCH_ROWS}_count", model=model) == count  # one of each per call
    return count, value(registry, f"{BATCH_ROWS}_sum", model=model)


# --- model time and rows per ONNX Runtime call ------------------------------------------------


def test_embed_is_one_encoder_call_of_its_rows_and_only_the_model_is_timed(
    bundle: Bundle,
) -> None:
    registry = CollectorRegistry()
    app = make_app(bundle, registry)
    for model in MODELS:  # every series exists from the start, so rate() sees the first call
        assert calls(registry, model) == (0, 0)
    began = time.perf_counter()
    app.embed(images(5).tolist())
    wall = time.perf_counter() - began
    assert calls(registry, "encoder") == (1, 5)
    assert calls(registry, "decoder") == (0, 0)
    seconds = value(registry, f"{INFERENCE_SECONDS}_sum", model="encoder")
    assert 0 < seconds < wall  # session.run alone: the request's decoding is outside it
    # 5 rows: in the bucket (4, 8]
    assert value(registry, f"{BATCH_ROWS}_bucket", model="encoder", le="4.0") == 0
    assert value(registry, f"{BATCH_ROWS}_bucket", model="encoder", le="8.0") == 1
    assert value(registry, f"{INFERENCE_SECONDS}_bucket", model="encoder", le="10.0") == 1


def test_each_chunk_of_a_split_batch_is_a_call(bundle: Bundle) -> None:
    """SCULPT_ORT_MAX_ROWS splits a request: the histograms count what ONNX Runtime ran."""
    registry = CollectorRegistry()
    app = make_app(bundle, registry, runtime_config=RuntimeConfig(intra_op_threads=1, max_batch=3))
    app.embed(images(7))  # a batch array, as the binary transports pass it
    assert calls(registry, "encoder") == (3, 7)  # 3 + 3 + 1
    assert value(registry, f"{BATCH_ROWS}_bucket", model="encoder", le="1.0") == 1


def test_decode_reconstruct_and_generate_count_the_decoder(bundle: Bundle) -> None:
    registry = CollectorRegistry()
    app = make_app(bundle, registry)
    app.decode(np.zeros((4, bundle.manifest.latent_dim), np.float32))
    assert calls(registry, "decoder") == (1, 4)
    assert calls(registry, "encoder") == (0, 0)
    app.reconstruct(images(2).tolist())  # encoder, then decoder
    assert calls(registry, "encoder") == (1, 2)
    assert calls(registry, "decoder") == (2, 6)
    app.generate(3, seed=1)
    assert calls(registry, "decoder") == (3, 9)


def test_with_micro_batching_the_rows_histogram_sees_the_merged_batches(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher's dispatcher thread calls the runtime too: one call for three requests."""
    registry = CollectorRegistry()
    batching = BatchConfig(enabled=True, max_batch_size=64, max_latency_ms=0)
    app = make_app(bundle, registry, batch_config=batching, drift_enabled=False)
    assert app.batcher is not None
    gate, entered = threading.Event(), threading.Event()
    encode = app.runtime.encode

    def first_call_waits(x: np.ndarray) -> np.ndarray:
        if not entered.is_set():  # only the dispatcher calls: no race on the flag
            entered.set()
            assert gate.wait(LIVENESS_S)
        return encode(x)

    monkeypatch.setattr(app.runtime, "encode", first_call_waits)
    first, first_out = in_thread(lambda: app.embed(images(2)))
    assert entered.wait(LIVENESS_S)  # the dispatcher holds the first request alone
    others = [in_thread(lambda i=i: app.embed(images(3, seed=i))) for i in range(3)]
    wait_queued(app.batcher, 9)  # the three wait together behind it
    gate.set()
    joined(first, *(thread for thread, _ in others))
    for _, out in (None, first_out), *others:
        assert "error" not in out, out
    assert calls(registry, "encoder") == (2, 11)
    bucket = {
        le: value(registry, f"{BATCH_ROWS}_bucket", model="encoder", le=le)
        for le in ("2.0", "8.0", "16.0")
    }
    assert bucket == {"2.0": 1, "8.0": 1, "16.0": 2}  # 2 rows alone, then 3 + 3 + 3 = 9 merged
    assert app.batcher.stats().batches == 2
    app.close()


def test_the_runtime_reports_every_call_to_its_observer(bundle: Bundle) -> None:
    seen: list[tuple[str, int, float]] = []
    config = RuntimeConfig(intra_op_threads=1, max_batch=4)
    runtime = EmbeddingRuntime(bundle, config, observer=lambda *call: seen.append(call))
    runtime.reconstruct(images(6))
    assert [(model, rows) for model, rows, _ in seen] == [
        ("encoder", 4),
        ("encoder", 2),
        ("decoder", 4),
        ("decoder", 2),
    ]
    assert all(0 < seconds < 10 for _, _, seconds in seen)
    bare = EmbeddingRuntime(bundle, config)  # no observer: no metrics, same results
    np.testing.assert_array_equal(bare.encode(images(6)), runtime.encode(images(6)))


# --- the bundle served ----------------------------------------------------------------------


def test_model_info_names_the_manifest_s_name_version_and_the_digest(bundle: Bundle) -> None:
    registry = CollectorRegistry()
    make_app(bundle, registry)
    manifest = bundle.manifest
    labels = {"name": manifest.name, "version": manifest.version, "digest": bundle.digest}
    assert registry.get_sample_value(MODEL_INFO, labels) == 1
    info = [s for f in registry.collect() for s in f.samples if s.name == MODEL_INFO]
    assert [s.labels for s in info] == [labels]
    assert bundle.digest.startswith("sha256:") and manifest.name == "toy"


def test_apps_sharing_a_registry_register_each_metric_once(bundle: Bundle) -> None:
    """prometheus_client refuses a second registration; the apps' counts add up instead."""
    registry = CollectorRegistry()
    apps = [make_app(bundle, registry) for _ in range(2)]
    CoreMetrics(registry)  # and any other user of the same registry
    for i, app in enumerate(apps):
        app.embed(images(i + 1))
    assert calls(registry, "encoder") == (2, 3)
    families = [f.name for f in registry.collect()]
    assert len(families) == len(set(families))
    info = [s for f in registry.collect() for s in f.samples if s.name == MODEL_INFO]
    assert len(info) == 1 and info[0].value == 1


# --- the drift monitor's last evaluation ------------------------------------------------------


def test_the_drift_timestamp_starts_at_the_monitor_start_and_moves_with_each_evaluation(
    bundle: Bundle,
) -> None:
    registry = CollectorRegistry()
    before = time.time()
    app = make_app(bundle, registry)
    started = value(registry, LAST_EVALUATION, worker="0")
    assert before <= started <= time.time()  # before the first window: the staleness clock
    window = bundle.manifest.drift.window
    app.embed(images(window - 1))
    assert value(registry, LAST_EVALUATION, worker="0") == started  # not full: no evaluation
    time.sleep(0.01)  # a clock step the timestamp must show
    before = time.time()
    app.embed(images(1, seed=1))  # the window is full: evaluated in the call (no thread)
    report = app.drift()
    assert report["windows_evaluated"] == 1
    evaluated = value(registry, LAST_EVALUATION, worker="0")
    assert started < before <= evaluated <= time.time()
    stamped = datetime.fromisoformat(report["last_evaluated_at"]).timestamp()
    assert evaluated == pytest.approx(stamped, abs=1e-3)  # /drift's time, ms resolution


# --- several worker processes ---------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sculptserve.serving.core import EmbeddingApp
    from sculptserve.serving.runtime import RuntimeConfig

    app = EmbeddingApp.from_source(
        sys.argv[1], runtime_config=RuntimeConfig(intra_op_threads=1), background_drift=False
    )
    app.embed(np.zeros((3, 1, 4, 4), np.float32))
    app.close()
    """
)


def test_multiprocess_mode_sums_the_histograms_and_not_the_info(
    bundle: Bundle, tmp_path: Path
) -> None:
    """Two workers under PROMETHEUS_MULTIPROC_DIR, read like BentoML's /metrics: calls add up,
    the bundle is one series of value 1 (not 2, and without a pid label), as is the drift
    timestamp per worker label."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(bundle.path)],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr[-3000:]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    by_name: dict[str, list[Sample]] = {}
    for family in registry.collect():
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    assert calls(registry, "encoder") == (2, 6)
    (info,) = by_name[MODEL_INFO]
    assert info.value == 1 and info.labels == {
        "name": bundle.manifest.name,
        "version": bundle.manifest.version,
        "digest": bundle.digest,
    }
    (stamp,) = by_name[LAST_EVALUATION]  # the later worker's start (no window was evaluated)
    assert stamp.labels == {"worker": "0"} and stamp.value <= time.time()
