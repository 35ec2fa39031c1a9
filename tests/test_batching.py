"""Cross-request micro-batching: correctness under concurrency, the flush rules, errors, close.

The flush-rule tests make every other rule impossible (``max_latency_ms=inf`` and a held
reservation, or a batch size that is never reached), so they pass or hang rather than depend
on timing; the joins' timeouts only keep a broken batcher from hanging the suite.
"""

from __future__ import annotations

import gc
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, toy_encode, toy_weights
from prometheus_client import CollectorRegistry

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.batching import BatchConfig, MicroBatcher
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.settings import SculptDeprecationWarning, load_settings

LIVENESS_S = 60.0  # only a guard against a hung test, never a speed requirement
SHAPE = (1, 4, 4)
ON = BatchConfig(enabled=True)


class Recorder:
    """A batched function that records the rows of every call; optionally waits on a gate."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.fn = fn or (lambda x: x * 3.0 + 1.0)
        self.calls: list[np.ndarray] = []
        self.threads: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append(x.copy())
            self.threads.append(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(LIVENESS_S)
        return self.fn(x)

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


def rows(request_id: int, n: int, width: int = 3) -> np.ndarray:
    """n rows that name their request and row: value = request_id * 1000 + row."""
    ids = request_id * 1000.0 + np.arange(n, dtype=np.float64)
    return np.repeat(ids[:, None], width, axis=1)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, out


def joined(*threads: threading.Thread) -> None:
    for t in threads:
        t.join(LIVENESS_S)
        assert not t.is_alive(), "a batched request never finished"


def wait_queued(batcher: MicroBatcher, rows_queued: int) -> None:
    """Block until ``rows_queued`` rows wait in the batcher's queue (test-only peek)."""
    with batcher._cond:
        assert batcher._cond.wait_for(lambda: batcher._queued_rows == rows_queued, LIVENESS_S)


# --- correctness -----------------------------------------------------------------------------


def test_many_concurrent_requests_of_different_sizes_get_exactly_their_own_rows() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=32, max_latency_ms=1.0)
    sizes = np.random.default_rng(0).integers(1, 21, size=300)

    def request(i: int) -> tuple[int, np.ndarray]:
        with batcher.reserve() as slot:
            return i, slot.run(rows(i, int(sizes[i])))

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(request, range(len(sizes))))
    finally:
        batcher.close()
    for i, out in results:
        np.testing.assert_array_equal(out, rows(i, int(sizes[i])) * 3.0 + 1.0)  # bitwise
    # every row went through the model exactly once, and batches respected the size limit
    assert sum(fn.sizes) == int(sizes.sum())
    assert all(s <= 32 for s in fn.sizes)
    stats = batcher.stats()
    assert (stats.requests, stats.rows, stats.batches) == (len(sizes), sizes.sum(), len(fn.calls))


def test_results_are_copies_not_views_of_the_shared_batch() -> None:
    batcher = MicroBatcher(lambda x: x + 0.0, max_batch_size=8, max_latency_ms=math.inf)
    try:
        with batcher.reserve() as hold:  # keeps both requests waiting for the size rule
            t1, out1 = in_thread(lambda: batcher.run(rows(1, 4)))
            t2, out2 = in_thread(lambda: batcher.run(rows(2, 4)))
            joined(t1, t2)
            hold.release()
    finally:
        batcher.close()
    a, b = out1["result"], out2["result"]
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    assert a.base is None and b.base is None
    a[:] = -1.0  # one caller scribbling on its result cannot touch another's
    np.testing.assert_array_equal(b, rows(2, 4))


def test_batched_embeddings_match_unbatched_onnx_runtime(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", input_shape=SHAPE, latent_dim=3))
    w_enc, _ = toy_weights(SHAPE, 3)
    registry = CollectorRegistry()
    batched = EmbeddingApp(
        bundle,
        batch_config=BatchConfig(enabled=True, max_batch_size=24, max_latency_ms=2.0),
        metrics_registry=registry,
    )
    plain = EmbeddingApp(bundle, drift_enabled=False)  # batching is off by default
    rng = np.random.default_rng(1)
    inputs = [rng.random((int(n), *SHAPE), dtype=np.float32) for n in rng.integers(1, 12, 120)]
    try:
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda x: batched.embed(x.tolist()), inputs))
        for x, body in zip(inputs, got, strict=True):
            z = body.embeddings
            assert z.dtype == np.float32 and body.encoding == "float32"
            np.testing.assert_allclose(z, plain.embed(x.tolist()).embeddings, atol=1e-6)
            np.testing.assert_allclose(z, toy_encode(x, w_enc), atol=1e-5)
        stats = batched.batcher.stats()
        assert stats.rows == sum(len(x) for x in inputs)
        # the monitor observes every request's rows once, each in its own thread
        assert batched.monitor.report().embeddings_seen == stats.rows
        info = batched.info()["batching"]
        assert info["enabled"] is True and info["requests"] == len(inputs)
        assert plain.info()["batching"] == {
            "enabled": False,
            "max_batch_size": 64,
            "max_latency_ms": 2.0,
        }
    finally:
        batched.close()
        plain.close()


def test_client_errors_in_a_batched_app_stay_payload_errors(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", input_shape=SHAPE, latent_dim=3))
    app = EmbeddingApp(bundle, drift_enabled=False, batch_config=ON)
    try:
        with pytest.raises(PayloadError):
            app.embed([[[1.0, 2.0]]])  # wrong shape: rejected while decoding
        with pytest.raises(PayloadError):
            app.embed([], "float32")
        # the failed requests released their reservations: a lone request never waits
        assert app.batcher._reserved == 0
        assert len(app.embed(np.zeros((2, *SHAPE)).tolist()).embeddings) == 2
    finally:
        app.close()


# --- when a batch goes ------------------------------------------------------------------------


def test_a_batch_flushes_when_max_batch_size_rows_wait() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=4, max_latency_ms=math.inf)
    try:
        with batcher.reserve():  # someone is "preparing", and there is no timeout: only size
            t1, _ = in_thread(lambda: batcher.run(rows(1, 2)))
            wait_queued(batcher, 2)
            assert fn.calls == []  # 2 of 4 rows: nothing may run yet
            t2, _ = in_thread(lambda: batcher.run(rows(2, 2)))
            joined(t1, t2)
    finally:
        batcher.close()
    assert fn.sizes == [4]


def test_a_batch_flushes_when_the_oldest_request_has_waited_max_latency() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=1000, max_latency_ms=20.0)
    try:
        with batcher.reserve():  # never fills and someone is "preparing": only the timeout
            t, out = in_thread(lambda: batcher.run(rows(1, 3)))
            joined(t)
    finally:
        batcher.close()
    assert fn.sizes == [3]
    np.testing.assert_array_equal(out["result"], rows(1, 3) * 3.0 + 1.0)


def test_a_lone_request_runs_at_once_when_nobody_else_is_preparing() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=1000, max_latency_ms=math.inf)
    try:
        np.testing.assert_array_equal(batcher.run(rows(1, 2)), rows(1, 2) * 3.0 + 1.0)
        with batcher.reserve() as slot:  # the caller's own reservation is not "someone else"
            np.testing.assert_array_equal(slot.run(rows(2, 1)), rows(2, 1) * 3.0 + 1.0)
    finally:
        batcher.close()
    assert fn.sizes == [2, 1]


def test_releasing_a_reservation_lets_a_waiting_batch_go() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=1000, max_latency_ms=math.inf)
    try:
        slot = batcher.reserve()
        t, _ = in_thread(lambda: batcher.run(rows(1, 2)))
        wait_queued(batcher, 2)
        with pytest.raises(PayloadError), slot:  # the announced request fails to decode
            raise PayloadError("item 0: not an image")
        joined(t)
    finally:
        batcher.close()
    assert fn.sizes == [2]


def test_a_request_larger_than_max_batch_size_runs_alone() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=4, max_latency_ms=math.inf)
    try:
        with batcher.reserve():
            small, _ = in_thread(lambda: batcher.run(rows(1, 1)))
            wait_queued(batcher, 1)
            big, out = in_thread(lambda: batcher.run(rows(2, 10)))
            wait_queued(batcher, 0)  # both taken: 11 rows waiting >= 4 flushes them
            more, _ = in_thread(lambda: batcher.run(rows(3, 3)))
            wait_queued(batcher, 3)
            last, _ = in_thread(lambda: batcher.run(rows(4, 1)))
            joined(small, big, more, last)
    finally:
        batcher.close()
    assert fn.sizes == [1, 10, 4]  # the big one alone, never merged past the limit
    np.testing.assert_array_equal(fn.calls[1], rows(2, 10))
    np.testing.assert_array_equal(out["result"], rows(2, 10) * 3.0 + 1.0)


# --- errors ---------------------------------------------------------------------------------


def poison_fn(x: np.ndarray) -> np.ndarray:
    """Fails on rows of request 13, naming the failing value."""
    bad = x[:, 0] // 1000 == 13
    if bad.any():
        raise RuntimeError(f"cannot encode row {x[bad][0, 0]:.0f}")
    return x * 3.0 + 1.0


def test_an_error_reaches_only_the_request_that_caused_it() -> None:
    fn = Recorder(poison_fn)
    batcher = MicroBatcher(fn, max_batch_size=6, max_latency_ms=math.inf)
    try:
        with batcher.reserve():
            good1, out1 = in_thread(lambda: batcher.run(rows(1, 2)))
            wait_queued(batcher, 2)
            bad, out_bad = in_thread(lambda: batcher.run(rows(13, 2)))
            wait_queued(batcher, 4)
            good2, out2 = in_thread(lambda: batcher.run(rows(2, 2)))
            joined(good1, bad, good2)
    finally:
        batcher.close()
    assert fn.sizes == [6, 2, 2, 2]  # the shared call failed, then each request alone
    np.testing.assert_array_equal(out1["result"], rows(1, 2) * 3.0 + 1.0)
    np.testing.assert_array_equal(out2["result"], rows(2, 2) * 3.0 + 1.0)
    error = out_bad["error"]
    assert isinstance(error, RuntimeError) and str(error) == "cannot encode row 13000"
    assert "result" not in out_bad


def test_a_failing_model_call_raises_in_the_caller_and_the_batcher_keeps_serving() -> None:
    batcher = MicroBatcher(poison_fn, max_batch_size=8, max_latency_ms=0.0)
    try:
        with pytest.raises(RuntimeError, match="cannot encode row 13000"):
            batcher.run(rows(13, 1))
        assert batcher.alive
        np.testing.assert_array_equal(batcher.run(rows(1, 2)), rows(1, 2) * 3.0 + 1.0)
    finally:
        batcher.close()


def test_a_wrong_row_count_from_the_model_is_an_error_not_a_mixup() -> None:
    batcher = MicroBatcher(lambda x: x[:-1], max_batch_size=8, max_latency_ms=0.0)
    try:
        with pytest.raises(RuntimeError, match="returned shape"):
            batcher.run(rows(1, 3))
    finally:
        batcher.close()


def test_rows_of_the_wrong_shape_are_refused_before_queueing() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=8, max_latency_ms=0.0, item_shape=(3,))
    try:
        with pytest.raises(ValueError, match="cannot join batches"):
            batcher.run(np.zeros((2, 4)))
        with pytest.raises(ValueError, match="at least one row"):
            batcher.run(np.zeros((0, 3)))
        with batcher.reserve() as slot, pytest.raises(ValueError):
            slot.run(np.zeros((2, 5)))
        assert batcher._reserved == 0 and fn.calls == []
    finally:
        batcher.close()


# --- close ----------------------------------------------------------------------------------


def test_close_runs_requests_in_flight_and_later_ones_inline() -> None:
    fn = Recorder()
    fn.gate = threading.Event()
    batcher = MicroBatcher(fn, max_batch_size=4, max_latency_ms=0.0, name="test-batcher")
    first, out1 = in_thread(lambda: batcher.run(rows(1, 2)))
    assert fn.entered.wait(LIVENESS_S)  # request 1 is inside the model call
    queued = [in_thread(lambda i=i: batcher.run(rows(i, 1))) for i in (2, 3, 4)]
    wait_queued(batcher, 3)
    closer, _ = in_thread(batcher.close)
    fn.gate.set()
    joined(first, closer, *(t for t, _ in queued))
    assert not batcher.alive
    np.testing.assert_array_equal(out1["result"], rows(1, 2) * 3.0 + 1.0)
    for i, (_, out) in zip((2, 3, 4), queued, strict=True):
        np.testing.assert_array_equal(out["result"], rows(i, 1) * 3.0 + 1.0)
    assert sum(fn.sizes) == 5 and set(fn.threads) == {"test-batcher"}
    # after close: served in the caller's thread, unbatched
    np.testing.assert_array_equal(batcher.run(rows(5, 2)), rows(5, 2) * 3.0 + 1.0)
    assert fn.threads[-1] == threading.current_thread().name
    batcher.close()  # idempotent


def test_app_close_stops_the_batcher(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", input_shape=SHAPE, latent_dim=3))
    app = EmbeddingApp(bundle, drift_enabled=False, batch_config=ON)
    assert app.batcher is not None and app.batcher.alive
    app.close()
    assert not app.batcher.alive
    assert len(app.embed(np.zeros((1, *SHAPE)).tolist()).embeddings) == 1


def test_an_app_dropped_without_close_stops_its_dispatcher(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", input_shape=SHAPE, latent_dim=3))
    app = EmbeddingApp(bundle, drift_enabled=False, batch_config=ON)
    batcher = app.batcher
    assert batcher is not None and len(app.embed(np.zeros((1, *SHAPE)).tolist()).embeddings) == 1
    del app
    gc.collect()  # the dispatcher holds the app only weakly, so the app can go
    batcher._thread.join(LIVENESS_S)
    assert not batcher.alive


# --- configuration ------------------------------------------------------------------------------


def test_config_from_env() -> None:
    assert load_settings({}).batch_config() == BatchConfig() == BatchConfig(False, 64, 2.0)
    env = {
        "SCULPT_MICROBATCH": " OFF ",
        "SCULPT_MICROBATCH_MAX_ROWS": "128",
        "SCULPT_MICROBATCH_MAX_WAIT_MS": "0.5",
    }
    assert load_settings(env).batch_config() == BatchConfig(False, 128, 0.5)
    env = {"SCULPT_MICROBATCH": "1", "SCULPT_MICROBATCH_MAX_WAIT_MS": "0"}
    assert load_settings(env).batch_config() == BatchConfig(True, 64, 0.0)
    # the old names, deprecated for one release, give the same config
    old = {
        "SCULPT_BATCH": " OFF ",
        "SCULPT_BATCH_MAX_SIZE": "128",
        "SCULPT_BATCH_MAX_LATENCY_MS": "0.5",
    }
    with pytest.warns(SculptDeprecationWarning, match="SCULPT_BATCH_MAX_SIZE is deprecated"):
        assert load_settings(old).batch_config() == BatchConfig(False, 128, 0.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCULPT_MICROBATCH": "maybe"}, "SCULPT_MICROBATCH='maybe' is not a switch"),
        (
            {"SCULPT_MICROBATCH_MAX_ROWS": "lots"},
            "SCULPT_MICROBATCH_MAX_ROWS='lots' is not an integer",
        ),
        ({"SCULPT_MICROBATCH_MAX_ROWS": "0"}, "SCULPT_MICROBATCH_MAX_ROWS='0' must be >= 1"),
        ({"SCULPT_MICROBATCH_MAX_WAIT_MS": "soon"}, "is not a number"),
        ({"SCULPT_MICROBATCH_MAX_WAIT_MS": "-1"}, r"must be in \[0, 10000\]"),
        ({"SCULPT_MICROBATCH_MAX_WAIT_MS": "nan"}, r"must be in \[0, 10000\]"),
        # a deprecated name in use is the one the error names
        ({"SCULPT_BATCH": "maybe"}, "SCULPT_BATCH='maybe' is not a switch"),
        ({"SCULPT_BATCH_MAX_SIZE": "lots"}, "SCULPT_BATCH_MAX_SIZE='lots' is not an integer"),
        ({"SCULPT_BATCH_MAX_SIZE": "0"}, "SCULPT_BATCH_MAX_SIZE='0' must be >= 1"),
        ({"SCULPT_BATCH_MAX_LATENCY_MS": "soon"}, "is not a number"),
        ({"SCULPT_BATCH_MAX_LATENCY_MS": "-1"}, r"must be in \[0, 10000\]"),
        ({"SCULPT_BATCH_MAX_LATENCY_MS": "nan"}, r"must be in \[0, 10000\]"),
    ],
)
@pytest.mark.filterwarnings("ignore::sculptserve.serving.settings.SculptDeprecationWarning")
def test_config_from_env_names_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(env)
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1"):
        BatchConfig(max_batch_size=0)  # code-built configs are checked as well


def test_batcher_arguments_are_checked() -> None:
    for size, latency in ((0, 1.0), (True, 1.0), (4, -1.0), (4, math.nan)):
        with pytest.raises(ValueError):
            MicroBatcher(lambda x: x, max_batch_size=size, max_latency_ms=latency)
