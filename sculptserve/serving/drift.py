"""Online drift monitoring of served embeddings, off the request path.

The service hands every batch of embeddings it serves to :meth:`DriftMonitor.observe`. That
call only copies the batch into a bounded pending queue and bumps counters (O(batch)); it never
computes a statistic. Every ``every`` new embeddings it wakes a background daemon thread, which
moves the pending rows into the window (a ring buffer of the last ``window`` embeddings) and
scores that window against the bundle's reference with :class:`~sculptserve.stats.drift_windows.
WindowScorer` — the same statistics ``sculpt export`` calibrated the thresholds on.

Alert rule. A window *fires* when::

    mmd2 > mmd2_threshold  OR  lps_linear > lps_linear_threshold

and the monitor is in ``drift`` once ``consecutive`` evaluated windows in a row (default 2)
have fired. A statistic that is not finite (a degenerate window, e.g. every embedding
identical: a collapsed encoder) raises the alert at once.

What the thresholds promise depends on the bundle's calibration (``sculpt export``, see
:mod:`sculptserve.stats.drift_windows`). Current bundles (``rule = combined``) were calibrated
on simulated streams of overlapping windows with this very rule: a window fires on
``false_alarm_rate`` of in-distribution windows (both statistics together), and false alerts
start on average every ``expected_run_length`` embeddings (the ERL, reported by ``/drift`` and
the ``sculpt_drift_expected_run_length`` gauge). That promise holds for the calibrated
``window``, ``every`` and ``consecutive``, which are therefore the defaults here; with other
values the monitor warns and reports no ERL. Older bundles (``rule = per_statistic``) hold
each statistic's (1 - false_alarm_rate) null quantile: a window fired on 3.6-4% of
in-distribution windows at 0.01 (benchmarks/RESULTS.md), and they report no ERL.

Prometheus metrics and several workers
--------------------------------------
Each monitor writes to a ``prometheus_client`` registry (the global ``REGISTRY`` by default).
prometheus_client has no constant labels, so ``labels`` (e.g. ``{"worker": "3"}``) become the
metrics' label names and each monitor writes its own child series. Metric objects are created
lazily, once per (registry, metric name), and cached, so two monitors on one registry never
raise "Duplicated timeseries"; they must use the same label *names*, and should use different
label *values* (monitors with identical labels share series: counters add up, gauges show
whichever evaluated last).

With several worker processes each worker has its own monitor and its own window (it sees only
its share of traffic), so drift is reported per worker, labelled by worker. In
``PROMETHEUS_MULTIPROC_DIR`` mode (set before prometheus_client is imported, and the exposition
built with ``multiprocess.MultiProcessCollector``):

- counters are summed across processes by prometheus_client per label set, so totals are exact
  (``sum(sculpt_embeddings_served_total)`` over workers);
- statistic and threshold gauges use ``multiprocess_mode="liveall"``: one series per live
  process (prometheus_client adds a ``pid`` label), dropped when the process dies (the server
  must call ``multiprocess.mark_process_dead(pid)`` on worker exit, as gunicorn's
  ``child_exit`` hook does);
- the alert gauge uses ``"livemax"``: 1 if any live process with those labels is in drift, so
  it stays a correct alert even if workers are not given distinct labels;
- ``sculpt_drift_last_evaluation_timestamp_seconds`` (unix time of the latest evaluated window;
  the monitor's start until the first one, so a monitor that never evaluates looks stale too)
  uses ``"max"``: timestamps only grow, so the largest over every process that had those labels
  is the latest evaluation, and a restarted worker's start time supersedes its predecessor's.

Alert in PromQL with ``max(sculpt_drift_alert) == 1``.

Cost, and BLAS threads
----------------------
Windows are scored incrementally (:class:`~sculptserve.stats.drift_windows.
IncrementalWindowScorer`): each embedding's kernel to the reference is computed once, when it
enters the window, and the window's kernel matrix is updated by the entering rows only. On the
main job's bundle (latent 5, IMQ kernel, 512 reference rows, windows of 256 every 128) an
evaluation takes 0.7 ms of CPU, 5.5 us per served embedding; before (from scratch, the IMQ
kernel allocating three arrays per scale) 3.2 ms, 25 us per embedding, which about doubled
the service's CPU with a cheap encoder (20-30 us of ONNX Runtime per embedding; issue 14).
With OpenBLAS's default pool (one thread per core) a from-scratch scoring took 16 ms and,
counting the pool's threads busy-waiting after each call, 35 ms of CPU (measured on 2
cores). So a process that hosts a monitor should run with
``OPENBLAS_NUM_THREADS=1``; the BentoML service passes it to its workers
(:mod:`sculptserve.serving.http.service`), and it must be set before numpy is imported.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

from sculptserve.bundle.schema import DriftCalibration
from sculptserve.serving.metrics import registered
from sculptserve.stats.drift_windows import (
    IncrementalWindowScorer,
    SlidingWindow,
    WindowScorer,
    WindowStatistics,
)
from sculptserve.stats.results import Result

log = logging.getLogger(__name__)

STATES = ("ok", "drift", "warming_up")


class Scorer(Protocol):
    """What the monitor needs from a scorer (``WindowScorer``; tests inject slow ones)."""

    def score(self, window: np.ndarray) -> WindowStatistics: ...


class SlidingScorer(Protocol):
    """A sliding window and its statistics: rows enter with ``push``, ``score`` when full."""

    @property
    def full(self) -> bool: ...

    def push(self, rows: np.ndarray) -> None: ...

    def score(self) -> WindowStatistics: ...


class _Rescoring:
    """A sliding window scored from scratch by any :class:`Scorer` on every evaluation."""

    def __init__(self, scorer: Scorer, size: int, dim: int) -> None:
        self.scorer = scorer
        self.window = SlidingWindow(size, dim)

    @property
    def full(self) -> bool:
        return self.window.full

    def push(self, rows: np.ndarray) -> None:
        self.window.push(rows)

    def score(self) -> WindowStatistics:
        return self.scorer.score(self.window.rows)


@dataclass(frozen=True)
class DriftConfig:
    """How the monitor windows traffic; ``None`` fields take defaults from the calibration.

    - ``window``: rows per evaluated window (default ``calibration.window``: the thresholds are
      only calibrated for that size);
    - ``every``: evaluate every K new embeddings (default the calibrated one, else
      ``window // 2``);
    - ``max_pending``: bound on embeddings waiting to enter the window; beyond it the oldest
      are dropped and counted (default ``window``: rows older than a full window would be
      pushed out of it before any evaluation anyway);
    - ``consecutive``: fired windows in a row that raise the alert (default the calibrated
      one, else 2; see the module docstring).
    """

    window: int | None = None
    every: int | None = None
    max_pending: int | None = None
    consecutive: int | None = None

    def resolved(self, calibration: DriftCalibration) -> DriftConfig:
        """A copy with every field set, checked."""
        window = int(self.window if self.window is not None else calibration.window)
        default_every = calibration.every if window == calibration.window else None
        every = _first_set(self.every, default_every, max(1, window // 2))
        max_pending = int(self.max_pending if self.max_pending is not None else window)
        consecutive = _first_set(self.consecutive, calibration.consecutive, 2)
        if window < 4:
            raise ValueError(f"window must be >= 4 embeddings, got {window}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if consecutive < 1:
            raise ValueError(f"consecutive must be >= 1, got {consecutive}")
        return replace(
            self, window=window, every=every, max_pending=max_pending, consecutive=consecutive
        )

    def calibrated_for(self, calibration: DriftCalibration) -> bool:
        """Whether the calibration's alert budget (its ERL) holds for this resolved config."""
        return (self.window, self.every, self.consecutive) == (
            calibration.window,
            calibration.every,
            calibration.consecutive,
        )


def _first_set(*values: int | None) -> int:
    return int(next(v for v in values if v is not None))


def _finite_or_none(value: Any) -> Any:
    # Strict JSON has no NaN/inf; a degenerate window can produce them.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass(frozen=True)
class DriftReport(Result):
    """The monitor's latest state; ``to_dict()`` is the REST ``/drift`` response.

    Statistics are ``None`` while ``state == "warming_up"`` (no full window evaluated yet).
    ``fired`` names the statistics over their threshold on the latest window.
    ``expected_run_length`` is the calibration's (embeddings between false alerts on
    in-distribution traffic); ``None`` for bundles calibrated before it existed or a
    window/every/consecutive other than the calibrated ones.
    """

    state: str
    mmd2: float | None
    mmd2_threshold: float
    lps_linear: float | None
    lps_linear_threshold: float
    reference_lps_linear: float
    max_abs_mean_shift: float | None
    mean_shift: tuple[float, ...] | None
    std_ratio: tuple[float, ...] | None
    fired: tuple[str, ...]
    window: int
    every: int
    window_rows: int
    embeddings_seen: int
    windows_evaluated: int
    dropped: int
    false_alarm_rate: float
    consecutive: int
    expected_run_length: float | None  # calibrated embeddings between false alerts, if known
    last_evaluated_at: str | None = field(default=None)

    def to_dict(self) -> dict:
        """Plain JSON values (strict: non-finite floats become ``None``)."""
        return {key: _finite_or_none(value) for key, value in super().to_dict().items()}


# --- Prometheus metrics: created lazily, once per (registry, name) --------------------------

_GAUGES: dict[str, tuple[str, str]] = {
    # name: (help, multiprocess_mode); see the module docstring for the modes.
    "sculpt_drift_mmd2": ("MMD^2 of the latest drift window against the reference", "liveall"),
    "sculpt_drift_mmd2_threshold": ("Calibrated alarm threshold for sculpt_drift_mmd2", "liveall"),
    "sculpt_drift_lps_linear": ("Linear LPS of the latest drift window", "liveall"),
    "sculpt_drift_lps_linear_threshold": (
        "Calibrated alarm threshold for sculpt_drift_lps_linear",
        "liveall",
    ),
    "sculpt_drift_reference_lps_linear": ("Linear LPS of the reference embeddings", "liveall"),
    "sculpt_drift_alert": ("1 when the latest window is in drift, else 0", "livemax"),
    "sculpt_drift_expected_run_length": (
        "Embeddings between false drift alerts the thresholds were calibrated for "
        "(NaN: not calibrated for this window/every/consecutive)",
        "liveall",
    ),
    "sculpt_drift_max_abs_mean_shift": (
        "Largest per-dimension |window mean - reference mean| / reference std",
        "liveall",
    ),
    "sculpt_drift_last_evaluation_timestamp_seconds": (
        "Unix time of the latest evaluated drift window (the monitor's start before the first)",
        "max",
    ),
}
_COUNTERS: dict[str, str] = {
    "sculpt_embeddings_served_total": "Embeddings seen by the drift monitor (served)",
    "sculpt_drift_windows_evaluated_total": "Drift windows evaluated",
    "sculpt_drift_dropped_total": "Embeddings dropped before reaching a drift window (backlog)",
}


def _metric(registry: CollectorRegistry, name: str, labelnames: tuple[str, ...]) -> Any:
    def create() -> Any:
        if name in _GAUGES:
            doc, mode = _GAUGES[name]
            return Gauge(name, doc, labelnames, registry=registry, multiprocess_mode=mode)
        return Counter(name, _COUNTERS[name], labelnames, registry=registry)

    metric = registered(registry, name, create)
    if tuple(metric._labelnames) != labelnames:
        raise ValueError(
            f"metric {name} already exists on this registry with labels "
            f"{list(metric._labelnames)}; every drift monitor on one registry must use the "
            f"same label names, got {list(labelnames)}"
        )
    return metric


class _Metrics:
    """The label-bound children one monitor writes."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        names = tuple(sorted(labels))
        values = {k: str(v) for k, v in labels.items()}

        def child(name: str) -> Any:
            metric = _metric(registry, name, names)
            return metric.labels(**values) if names else metric

        self.mmd2 = child("sculpt_drift_mmd2")
        self.mmd2_threshold = child("sculpt_drift_mmd2_threshold")
        self.lps_linear = child("sculpt_drift_lps_linear")
        self.lps_linear_threshold = child("sculpt_drift_lps_linear_threshold")
        self.reference_lps_linear = child("sculpt_drift_reference_lps_linear")
        self.alert = child("sculpt_drift_alert")
        self.expected_run_length = child("sculpt_drift_expected_run_length")
        self.max_abs_mean_shift = child("sculpt_drift_max_abs_mean_shift")
        self.last_evaluation = child("sculpt_drift_last_evaluation_timestamp_seconds")
        self.served = child("sculpt_embeddings_served_total")
        self.evaluated = child("sculpt_drift_windows_evaluated_total")
        self.dropped = child("sculpt_drift_dropped_total")


# --- the monitor ---------------------------------------------------------------------------


class DriftMonitor:
    """Window statistics of served embeddings against a reference, evaluated in the background.

    ``reference`` is the bundle's reference (only its first ``calibration.reference_rows``
    rows are used, as at calibration). With ``background=False`` evaluations run synchronously
    inside :meth:`observe` (deterministic; for tests and batch use). ``scorer`` replaces the
    default :class:`WindowScorer` (tests inject slow ones).

    Locking: ``observe`` only takes ``_pending_lock`` (append a batch, O(1) under the lock);
    evaluations hold ``_eval_lock``, swap the pending batches out under ``_pending_lock`` and
    score outside it, so a slow evaluation never blocks the request path.
    """

    def __init__(
        self,
        reference: np.ndarray,
        calibration: DriftCalibration,
        config: DriftConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        labels: dict[str, str] | None = None,
        background: bool = True,
        scorer: Scorer | None = None,
    ) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or len(ref) < 4 or not np.isfinite(ref).all():
            raise ValueError(
                f"reference must be a finite (n >= 4, d) array, got shape {list(ref.shape)}"
            )
        self.calibration = calibration
        self.config = (config or DriftConfig()).resolved(calibration)
        self.dim = int(ref.shape[1])
        self._window_size = int(self.config.window)  # type: ignore[arg-type]
        self._every = int(self.config.every)  # type: ignore[arg-type]
        self._max_pending = int(self.config.max_pending)  # type: ignore[arg-type]
        if self._window_size <= self.dim + 1:
            raise ValueError(
                f"window ({self._window_size}) must exceed latent_dim + 1 ({self.dim + 1}) for "
                "the window covariance behind lps_linear"
            )
        if self._window_size != calibration.window:
            log.warning(
                "drift window %d differs from the calibrated window %d: the thresholds' "
                "false-alarm rate no longer holds",
                self._window_size,
                calibration.window,
            )
        # the calibrated run length only holds for the alert rule it was simulated with
        self.expected_run_length = (
            calibration.expected_run_length if self.config.calibrated_for(calibration) else None
        )
        if calibration.expected_run_length is not None and self.expected_run_length is None:
            log.warning(
                "drift monitor runs window=%d every=%d consecutive=%d, calibrated for %d/%s/%s: "
                "the calibrated expected run length (%.0f embeddings) does not hold",
                self._window_size,
                self._every,
                self.config.consecutive,
                calibration.window,
                calibration.every,
                calibration.consecutive,
                calibration.expected_run_length,
            )
        # The window and what scores it, only touched under _eval_lock.
        self._window: SlidingScorer
        if scorer is None:
            default = WindowScorer(ref[: calibration.reference_rows], calibration.kernel)
            scale = default.kernel.fixed_scale
            if scale is not None and not math.isclose(scale, calibration.bandwidth, rel_tol=1e-2):
                log.warning(
                    "kernel scale of the reference (%.6g) differs from the calibrated one "
                    "(%.6g): is this the bundle's own reference?",
                    scale,
                    calibration.bandwidth,
                )
            self._window = IncrementalWindowScorer(default, self._window_size)
        else:
            self._window = _Rescoring(scorer, self._window_size, self.dim)

        # Request-path state, under _pending_lock.
        self._pending_lock = threading.Lock()
        self._pending: deque[np.ndarray] = deque()
        self._n_pending = 0
        self._since_signal = 0
        self._seen = 0
        self._dropped = 0

        # Evaluation state, under _eval_lock.
        self._eval_lock = threading.Lock()
        self._streak = 0  # fired windows in a row, under _eval_lock
        # (statistics, fired, windows evaluated, evaluated at, alert): replaced as one tuple, so
        # report() reads a consistent state without waiting on a running evaluation.
        self._state: tuple[WindowStatistics | None, tuple[str, ...], int, str | None, bool] = (
            None,
            (),
            0,
            None,
            False,
        )

        self._metrics = _Metrics(registry or prometheus_client.REGISTRY, dict(labels or {}))
        m = self._metrics
        m.mmd2_threshold.set(calibration.mmd2_threshold)
        m.lps_linear_threshold.set(calibration.lps_linear_threshold)
        m.reference_lps_linear.set(calibration.reference_lps_linear)
        m.expected_run_length.set(
            math.nan if self.expected_run_length is None else self.expected_run_length
        )
        m.alert.set(0)
        m.last_evaluation.set(time.time())  # the staleness clock starts now (module docstring)
        for gauge in (m.mmd2, m.lps_linear, m.max_abs_mean_shift):
            gauge.set(math.nan)  # no window yet: "no value", not a misleading 0

        self._closed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, name="sculpt-drift-monitor", daemon=True
            )
            self._thread.start()

    # -- request path ----------------------------------------------------------------------

    def observe(self, embeddings: np.ndarray) -> None:
        """Record a served batch (B, d): an O(B) copy and counters, no statistics.

        Raises ValueError on a wrong shape or a non-finite value, leaving the window as it was.
        An empty batch is a no-op.
        """
        batch = np.array(embeddings, dtype=np.float64, copy=True)  # copy: callers may reuse it
        if batch.ndim == 1 and batch.size == self.dim:
            batch = batch.reshape(1, self.dim)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(
                f"embeddings must have shape (batch, {self.dim}), got {list(batch.shape)}"
            )
        n = len(batch)
        if n == 0:
            return
        if not np.isfinite(batch).all():
            raise ValueError("embeddings contain NaN or Inf; the drift window rejects them")
        if n > self._max_pending:
            batch = batch[-self._max_pending :]
        with self._pending_lock:
            self._pending.append(batch)
            self._n_pending += len(batch)
            dropped = n - len(batch)
            while self._n_pending > self._max_pending:  # drop the oldest pending rows
                excess = self._n_pending - self._max_pending
                head = self._pending[0]
                if len(head) <= excess:
                    self._pending.popleft()
                    self._n_pending -= len(head)
                    dropped += len(head)
                else:
                    self._pending[0] = head[excess:]
                    self._n_pending -= excess
                    dropped += excess
            self._seen += n
            self._dropped += dropped
            self._since_signal += n
            due = self._since_signal >= self._every
            if due:
                self._since_signal %= self._every
        self._metrics.served.inc(n)
        if dropped:
            self._metrics.dropped.inc(dropped)
        if not due:
            return
        if self._thread is not None:
            self._wake.set()
        elif not self._closed:
            try:
                self._evaluate()
            except Exception:  # monitoring must never fail a request
                log.exception("drift evaluation failed")

    # -- evaluation ------------------------------------------------------------------------

    def evaluate_now(self) -> DriftReport | None:
        """Evaluate the current window now if it is full (else None); returns the report."""
        return self.report() if self._evaluate() else None

    def _evaluate(self) -> bool:
        with self._eval_lock:
            with self._pending_lock:  # O(1): swap the batches out, copy outside the lock
                batches, self._pending = self._pending, deque()
                self._n_pending = 0
            with np.errstate(divide="ignore", invalid="ignore"):
                for rows in batches:
                    self._window.push(rows)
                if not self._window.full:
                    return False
                stats = self._window.score()
            cal = self.calibration
            fired = tuple(
                name
                for name, value, threshold in (
                    ("mmd2", stats.mmd2, cal.mmd2_threshold),
                    ("lps_linear", stats.lps_linear, cal.lps_linear_threshold),
                )
                if not math.isfinite(value) or value > threshold
            )
            shift = np.abs(np.asarray(stats.mean_shift, dtype=np.float64))
            m = self._metrics
            m.mmd2.set(stats.mmd2)
            m.lps_linear.set(stats.lps_linear)
            m.max_abs_mean_shift.set(float(shift.max()) if shift.size else math.nan)
            self._streak = self._streak + 1 if fired else 0
            broken = not (math.isfinite(stats.mmd2) and math.isfinite(stats.lps_linear))
            alert = broken or self._streak >= int(self.config.consecutive)
            m.alert.set(1 if alert else 0)
            m.evaluated.inc()
            now = datetime.now(UTC)
            m.last_evaluation.set(now.timestamp())
            at = now.isoformat(timespec="milliseconds")
            self._state = (stats, fired, self._state[2] + 1, at, alert)
            return True

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                self._evaluate()
            except Exception:  # keep the worker alive; the next window may be fine
                log.exception("drift evaluation failed")

    # -- state -----------------------------------------------------------------------------

    def report(self) -> DriftReport:
        """The latest state: ``warming_up`` until a full window has been evaluated."""
        with self._pending_lock:
            seen, dropped = self._seen, self._dropped
        stats, fired, evaluated, last_at, alert = self._state
        cal = self.calibration
        if stats is None:
            state = "warming_up"
            max_shift = None
        else:
            state = "drift" if alert else "ok"
            max_shift = float(np.max(np.abs(stats.mean_shift)))
        return DriftReport(
            state=state,
            mmd2=None if stats is None else stats.mmd2,
            mmd2_threshold=cal.mmd2_threshold,
            lps_linear=None if stats is None else stats.lps_linear,
            lps_linear_threshold=cal.lps_linear_threshold,
            reference_lps_linear=cal.reference_lps_linear,
            max_abs_mean_shift=max_shift,
            mean_shift=None if stats is None else stats.mean_shift,
            std_ratio=None if stats is None else stats.std_ratio,
            fired=fired,
            window=self._window_size,
            every=self._every,
            window_rows=min(self._window_size, seen - dropped),
            embeddings_seen=seen,
            windows_evaluated=evaluated,
            dropped=dropped,
            false_alarm_rate=cal.false_alarm_rate,
            consecutive=int(self.config.consecutive),  # type: ignore[arg-type]
            expected_run_length=self.expected_run_length,
            last_evaluated_at=last_at,
        )

    def close(self) -> None:
        """Stop the background worker (idempotent); observe() then no longer evaluates."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    @property
    def background(self) -> bool:
        """Whether windows are scored on a background worker thread (else synchronously)."""
        return self._thread is not None

    @property
    def worker_alive(self) -> bool:
        """Whether the background worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> DriftMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
