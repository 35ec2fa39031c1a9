"""Window statistics for online drift monitoring, and their null calibration.

The service keeps a window of recently served embeddings and compares it with the bundle's
reference embeddings through two statistics:

- ``mmd2``: unbiased MMD^2 between the window and (a fixed subsample of) the reference, with
  the kernel's scale frozen at the reference's (so it does not move from window to window);
- ``lps_linear``: the window's in-sample linear LPS (mean of 1 - 1 / (C_ii P_ii)), which
  rises when dimensions start to predict each other.

A window *fires* when either statistic exceeds its threshold; the monitor raises its alert
after ``consecutive`` fired evaluations in a row, evaluating every ``every`` embeddings (half a
window by default, so consecutive windows share half their rows). The same functions run at
export and in the service.

Calibration (:func:`calibrate_drift`) uses held-out embeddings that are *not* in the
reference (the pool), in three steps:

1. **Null streams.** The pool is replayed as streams of embeddings and windows slide over
   each stream as the service slides them over traffic (``window`` rows every ``every``), so
   consecutive null windows overlap as served ones do. ``null_streams="bootstrap"`` (default)
   draws each stream from a bootstrap copy of the pool (a two-level bootstrap), so the null
   carries the pool's own sampling error: every window of one finite pool shares the pool's
   deviation from the population, which, against a fixed reference, shifts the whole MMD^2
   null (measured on a trained model: benchmarks/RESULTS.md). ``null_streams="pool"`` draws
   windows from the pool itself, as bundles before this calibration did.
2. **One test per window.** With ``rule="combined"`` (default) both thresholds are the null
   quantiles of their statistics at one common level, chosen so that the *union* (either
   statistic over its threshold) fires on ``false_alarm_rate`` of null windows: the max over
   statistics of their null tail probabilities, calibrated as a single test.
   ``rule="per_statistic"`` gives each statistic its own ``1 - false_alarm_rate`` quantile (a
   window then fires up to twice as often; the rule of bundles before this calibration).
3. **Expected run length.** On the same streams the alert rule runs as the service runs it
   and the starts of false alerts are counted. The expected run length (ERL: the mean number
   of embeddings between the starts of false alerts on in-distribution traffic) is
   ``every / P(an evaluation starts an alert)``, the budget alibi-detect's online detectors
   are set by. Given ``expected_run_length``, the per-window rate is lowered until the
   streams show at least that ERL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sculptserve.stats.lps import linear_r2_from_covariance
from sculptserve.stats.mmd import Kernel, get_kernel, pairwise_sq_dists
from sculptserve.stats.results import Result
from sculptserve.stats.validation import as_embeddings

STATISTICS = ("mmd2", "lps_linear")
# Windows per simulated stream: long enough to see alerts start after a quiet window.
STREAM_WINDOWS = 16
# Rows of the pool whose kernel values against the reference are computed at once (memory).
_CHUNK_ROWS = 2048


@dataclass(frozen=True)
class WindowStatistics(Result):
    mmd2: float
    lps_linear: float
    mean_shift: tuple[float, ...]  # per dimension, (window mean - reference mean) / reference std
    std_ratio: tuple[float, ...]  # per dimension, window std / reference std


@dataclass(frozen=True)
class DriftThresholds(Result):
    """What export stores in the bundle manifest (``drift``)."""

    window: int
    false_alarm_rate: float
    n_resamples: int
    kernel: str
    bandwidth: float
    reference_rows: int
    mmd2_threshold: float
    lps_linear_threshold: float
    reference_lps_linear: float
    null_mmd2_mean: float
    null_lps_linear_mean: float
    rule: str
    null_streams: str
    every: int
    consecutive: int
    pool_rows: int
    per_statistic_rate: float  # each statistic's null tail probability at its threshold
    window_fire_rate: float  # null windows that fired (either statistic)
    alert_rate: float  # null evaluations in the alert state
    expected_run_length: float  # embeddings between false alerts on the null streams
    target_expected_run_length: float | None


@dataclass(frozen=True)
class AlertRuns(Result):
    """How a fire/no-fire sequence of evaluations turns into alerts (see :func:`alert_runs`)."""

    evaluations: int  # evaluations where an alert could start (a full look-back available)
    onsets: int  # evaluations that started an alert
    fire_rate: float  # fraction of all evaluations that fired
    alert_rate: float  # fraction of evaluations in the alert state

    def expected_run_length(self, every: int) -> float:
        """Embeddings between alert onsets: ``every / P(onset)``.

        With no onset seen the ratio has no estimate; (evaluations + 1) / (onsets + 1) keeps it
        finite and on the safe side (like the +1 of a permutation p-value).
        """
        return float(every * (self.evaluations + 1) / (self.onsets + 1))


def window_lps_linear(window: np.ndarray) -> float:
    """In-sample linear LPS of a window (no fitting: one covariance and its inverse)."""
    return float(linear_r2_from_covariance(np.cov(window, rowvar=False)).mean())


class WindowScorer:
    """Scores windows against one reference; the reference-only parts are computed once.

    The unbiased MMD^2 splits into a window-window, a window-reference and a
    reference-reference term. With the kernel's scale frozen at the reference's, the last one
    is a constant, so each window costs n^2 + n*m kernel entries instead of (n + m)^2.
    """

    def __init__(self, reference: np.ndarray, kernel: str | Kernel = "rbf") -> None:
        self.reference = as_embeddings(reference, name="reference", min_rows=4, min_dims=2)
        self.kernel = get_kernel(kernel).fixed_to(self.reference)
        self.mean = self.reference.mean(axis=0)
        self.std = self.reference.std(axis=0)
        self.std[self.std == 0] = 1.0
        d2_ref = _self_distances(self.reference)
        self._base = self.kernel.base_scale(self.reference, d2_ref, n_self=len(self.reference))
        self._ref_term = _mean_off_diagonal(self.kernel(d2_ref, self._base))

    def window_mmd2(self, window: np.ndarray) -> float:
        """Unbiased MMD^2 of ``window`` against the reference (equals ``mmd.mmd2``)."""
        return self.mmd2_from_terms(
            _mean_off_diagonal(self.self_kernel(window)),
            float(self.reference_kernel(window).mean()),
        )

    def self_kernel(self, rows: np.ndarray) -> np.ndarray:
        """Kernel matrix (n, n) of ``rows`` with themselves, at the reference's scale."""
        return self.kernel(_self_distances(rows), self._base)

    def pair_kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Kernel matrix (n, m) between the rows of ``a`` and ``b``, at the reference's scale."""
        return self.kernel(pairwise_sq_dists(a, b), self._base)

    def reference_kernel(self, rows: np.ndarray) -> np.ndarray:
        """Mean kernel value of each row against the reference: (n,), computed in chunks."""
        out = np.empty(len(rows))
        for start in range(0, len(rows), _CHUNK_ROWS):
            part = rows[start : start + _CHUNK_ROWS]
            k = self.pair_kernel(part, self.reference)
            out[start : start + len(part)] = k.mean(axis=1)
        return out

    def mmd2_from_terms(self, window_term: float, cross_term: float) -> float:
        """MMD^2 from the window's mean kernel over distinct pairs and its mean kernel to the
        reference (the reference-reference term is the constant computed once)."""
        return float(window_term + self._ref_term - 2.0 * cross_term)

    def score(self, window: np.ndarray) -> WindowStatistics:
        win = as_embeddings(window, name="window", min_rows=4, min_dims=2)
        if win.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"window has {win.shape[1]} dimensions, the reference {self.reference.shape[1]}"
            )
        return self.statistics(win, self.window_mmd2(win))

    def statistics(self, window: np.ndarray, mmd2: float) -> WindowStatistics:
        """The window's statistics, given its MMD^2 (however that was computed)."""
        return WindowStatistics(
            mmd2=mmd2,
            lps_linear=window_lps_linear(window),
            mean_shift=tuple(((window.mean(axis=0) - self.mean) / self.std).tolist()),
            std_ratio=tuple((window.std(axis=0) / self.std).tolist()),
        )


class SlidingWindow:
    """The last ``size`` rows of a stream, as a ring (row order matters to no statistic)."""

    def __init__(self, size: int, dim: int) -> None:
        self.rows = np.zeros((size, dim), dtype=np.float64)
        self.filled = 0
        self._next = 0  # the ring position the next row overwrites

    @property
    def full(self) -> bool:
        return self.filled == len(self.rows)

    def push(self, rows: np.ndarray) -> list[slice]:
        """Write ``rows`` (only the last ``size`` count); returns the ring spans written (one,
        or two where the ring wraps around)."""
        size = len(self.rows)
        rows = rows[-size:]
        spans: list[slice] = []
        start, left = self._next, rows
        while len(left):
            stop = min(size, start + len(left))
            self.rows[start:stop] = left[: stop - start]
            spans.append(slice(start, stop))
            left, start = left[stop - start :], stop % size
        self._next = start
        self.filled = min(size, self.filled + len(rows))
        return spans


class IncrementalWindowScorer:
    """:meth:`WindowScorer.score` of a sliding window, paying only for the rows that entered.

    The service slides a window of ``size`` rows by ``every`` (256 by 128): scoring each window
    from scratch computes every row's kernel to the reference twice and most window pairs
    twice. Here each row's mean kernel to the reference is computed once, when it enters, and
    the window's kernel matrix is kept and updated by the entering rows' rows and columns: per
    evaluation ``every * (size + m)`` kernel entries instead of ``size * (size + m)``. The
    statistics equal :meth:`WindowScorer.score` of :attr:`rows` up to rounding (tested).
    """

    def __init__(self, scorer: WindowScorer, size: int) -> None:
        self.scorer = scorer
        self.window = SlidingWindow(size, scorer.reference.shape[1])
        self._cross = np.zeros(size)  # each ring row's mean kernel to the reference
        self._pairs = np.zeros((size, size))  # kernel between ring rows (diagonal unused)

    @property
    def rows(self) -> np.ndarray:
        return self.window.rows

    @property
    def full(self) -> bool:
        return self.window.full

    def push(self, rows: np.ndarray) -> None:
        for span in self.window.push(rows):
            entered = self.window.rows[span]
            self._cross[span] = self.scorer.reference_kernel(entered)
            # against the whole ring as it is now: pairs with rows yet to enter are recomputed
            # then (spans, not index arrays: a column block by index costs 4x a slice)
            k = self.scorer.pair_kernel(entered, self.window.rows)
            self._pairs[span, :] = k
            self._pairs[:, span] = k.T

    def score(self) -> WindowStatistics:
        """Statistics of the current window (it must be full)."""
        if not self.full:
            raise ValueError(f"the window holds {self.window.filled} of {len(self.rows)} rows")
        window_term = _mean_off_diagonal(self._pairs)
        mmd2 = self.scorer.mmd2_from_terms(window_term, float(self._cross.mean()))
        return self.scorer.statistics(self.window.rows, mmd2)


def _self_distances(z: np.ndarray) -> np.ndarray:
    d2 = pairwise_sq_dists(z, z)
    np.fill_diagonal(d2, 0.0)
    return d2


def _mean_off_diagonal(k: np.ndarray) -> float:
    n = len(k)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


# --- null windows over simulated streams ----------------------------------------------------


class PoolWindows:
    """Scores windows given as row indices into a calibration pool.

    Each pool row's mean kernel to the reference is computed once, so a window costs only its
    own n^2 kernel entries. A window may repeat a pool row (bootstrap streams): pairs of the
    same row are left out of the window term, as fresh traffic never holds two copies of one
    embedding; without repeats the statistics equal :meth:`WindowScorer.score`'s.
    """

    def __init__(self, pool: np.ndarray, scorer: WindowScorer) -> None:
        self.pool = pool
        self.scorer = scorer
        self._cross = scorer.reference_kernel(pool)

    def statistics(self, rows: np.ndarray) -> tuple[float, float]:
        """(mmd2, lps_linear) of the window ``pool[rows]``."""
        z = self.pool[rows]
        k = self.scorer.self_kernel(z)
        same = rows[:, None] == rows[None, :]
        window_term = (k.sum() - k[same].sum()) / (same.size - np.count_nonzero(same))
        mmd2 = self.scorer.mmd2_from_terms(window_term, self._cross[rows].mean())
        return mmd2, window_lps_linear(z)


def _pool_stream(rng: np.random.Generator, n_pool: int, length: int) -> np.ndarray:
    """The pool's rows in random order (a longer stream continues with a new order)."""
    laps = -(-length // n_pool)
    return np.concatenate([rng.permutation(n_pool) for _ in range(laps)])[:length]


def _bootstrap_stream(rng: np.random.Generator, n_pool: int, length: int) -> np.ndarray:
    """Two-level bootstrap: a bootstrap copy of the pool, then rows drawn from it at random.

    A window's spread around the pool's centre is then that of fresh traffic around the
    pool's centre: its own sampling error plus the pool's (variance ~ 1/n + 1/N for a mean),
    where windows of the pool itself see only the first part (and less: without replacement).
    """
    copies = rng.multinomial(n_pool, np.full(n_pool, 1.0 / n_pool))
    return rng.choice(n_pool, size=length, p=copies / n_pool)


NULL_STREAMS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "bootstrap": _bootstrap_stream,
    "pool": _pool_stream,
}


def null_window_statistics(
    windows: PoolWindows,
    *,
    window: int,
    every: int,
    n_windows: int,
    null_streams: str = "bootstrap",
    rng: np.random.Generator,
    stream_windows: int = STREAM_WINDOWS,
) -> np.ndarray:
    """Statistics of null windows sliding over simulated streams: (streams, windows, 2).

    Each stream holds ``window + (stream_windows - 1) * every`` rows drawn by
    ``null_streams`` (a name in :data:`NULL_STREAMS`); its windows start every ``every`` rows,
    like the service's.
    The last axis follows :data:`STATISTICS`.
    """
    draw = _lookup(NULL_STREAMS, null_streams, "null_streams")
    length = window + (stream_windows - 1) * every
    n_streams = max(1, -(-n_windows // stream_windows))
    out = np.empty((n_streams, stream_windows, len(STATISTICS)))
    for s in range(n_streams):
        rows = draw(rng, len(windows.pool), length)
        for w in range(stream_windows):
            out[s, w] = windows.statistics(rows[w * every : w * every + window])
    return out


# --- threshold rules ----------------------------------------------------------------------


def _per_statistic(null: np.ndarray, rate: float) -> tuple[np.ndarray, float]:
    """Each statistic's own (1 - rate) null quantile."""
    return np.quantile(null, 1.0 - rate, axis=0), rate


def _combined(null: np.ndarray, rate: float) -> tuple[np.ndarray, float]:
    """One level for all statistics, chosen so that their union fires at ``rate``.

    A window's combined score is the max over statistics of its null rank (the min of their
    tail probabilities); its (1 - rate) quantile is the level at which each statistic's
    quantile becomes its threshold.
    """
    n = len(null)
    ranks = np.argsort(np.argsort(null, axis=0, kind="stable"), axis=0, kind="stable") + 1
    level = float(np.quantile(ranks.max(axis=1) / n, 1.0 - rate))
    return np.quantile(null, level, axis=0), 1.0 - level


THRESHOLD_RULES: dict[str, Callable[[np.ndarray, float], tuple[np.ndarray, float]]] = {
    "combined": _combined,
    "per_statistic": _per_statistic,
}


def alert_runs(fired: np.ndarray, consecutive: int) -> AlertRuns:
    """Alert onsets of the monitor's rule on fire/no-fire sequences ``fired`` (streams, T).

    The alert is on at an evaluation when it and the ``consecutive - 1`` before it fired; it
    *starts* where the evaluation ``consecutive`` back did not fire. Only evaluations with
    that much look-back count as chances to start one.
    """
    fired = np.atleast_2d(np.asarray(fired, dtype=bool))
    k, t = int(consecutive), fired.shape[1]
    if k < 1:
        raise ValueError(f"consecutive must be >= 1, got {consecutive}")
    if t <= k:
        raise ValueError(f"need more than {k} evaluations per stream to see alerts start, got {t}")
    on = fired[:, k - 1 :].copy()  # on[:, j]: evaluation j + k - 1 and the k - 1 before fired
    for lag in range(1, k):
        on &= fired[:, k - 1 - lag : t - lag]
    onsets = on[:, 1:] & ~fired[:, : t - k]
    return AlertRuns(
        evaluations=int(onsets.size),
        onsets=int(onsets.sum()),
        fire_rate=float(fired.mean()),
        alert_rate=float(on.mean()),
    )


def _lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}") from None


@dataclass(frozen=True)
class ChosenThresholds:
    thresholds: np.ndarray  # one per statistic, in STATISTICS order
    per_statistic_rate: float  # each statistic's null tail probability at its threshold
    runs: AlertRuns  # the null streams under these thresholds


# Per-window rates tried, from the nominal one down, when an ERL target raises the thresholds.
_RATE_STEPS = 2.0 ** (-np.arange(0, 64) / 4.0)


def choose_thresholds(
    streams: np.ndarray,
    *,
    rule: str = "combined",
    false_alarm_rate: float = 0.01,
    expected_run_length: float | None = None,
    every: int,
    consecutive: int = 2,
) -> ChosenThresholds:
    """Thresholds from null window statistics on streams (streams, windows, statistics).

    ``rule`` (a name in :data:`THRESHOLD_RULES`) sets them at the per-window
    ``false_alarm_rate``. With ``expected_run_length`` the rate is then lowered step by step
    (factors of 2^(-1/4)) to the largest one from which every lower step shows at least that
    ERL on the streams; ValueError if even the lowest does not.
    """
    rule_fn = _lookup(THRESHOLD_RULES, rule, "threshold rule")
    flat = streams.reshape(-1, streams.shape[-1])

    def outcome(rate: float) -> ChosenThresholds:
        thresholds, per_statistic = rule_fn(flat, rate)
        fired = (streams > thresholds).any(axis=-1)
        return ChosenThresholds(thresholds, float(per_statistic), alert_runs(fired, consecutive))

    if expected_run_length is None:
        return outcome(false_alarm_rate)
    tried = [outcome(false_alarm_rate * step) for step in _RATE_STEPS]
    erls = [c.runs.expected_run_length(every) for c in tried]
    if erls[-1] < expected_run_length:
        raise ValueError(
            f"{len(flat)} null windows cannot show an expected run length of "
            f"{expected_run_length:.0f} embeddings (at most {max(erls):.0f}); raise "
            "n_resamples or lower the target"
        )
    misses = [i for i, erl in enumerate(erls) if erl < expected_run_length]
    return tried[misses[-1] + 1 if misses else 0]


def calibrate_drift(
    pool: np.ndarray,
    reference: np.ndarray,
    *,
    window: int = 256,
    every: int | None = None,
    consecutive: int = 2,
    false_alarm_rate: float = 0.01,
    expected_run_length: float | None = None,
    n_resamples: int = 512,
    kernel: str = "rbf",
    reference_rows: int = 512,
    rule: str = "combined",
    null_streams: str = "bootstrap",
    seed: int = 0,
) -> DriftThresholds:
    """Null thresholds for the monitor's window statistics, from held-out ``pool`` rows.

    ``pool`` holds held-out embeddings disjoint from ``reference``. ``n_resamples`` null
    windows slide over simulated streams (``window`` rows every ``every``, default half a
    window); ``rule`` turns them into thresholds at the per-window ``false_alarm_rate``; with
    ``expected_run_length`` (embeddings between false alerts under the monitor's rule of
    ``consecutive`` fired windows) the rate is lowered until the streams' estimate reaches it.
    The MMD compares against the first ``reference_rows`` rows of the reference (the service
    does the same). See the module docstring.
    """
    pool = as_embeddings(pool, name="calibration pool", min_rows=4, min_dims=2)
    _lookup(THRESHOLD_RULES, rule, "threshold rule")
    _lookup(NULL_STREAMS, null_streams, "null_streams")
    every = max(1, window // 2) if every is None else int(every)
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    if every < 1 or consecutive < 1:
        raise ValueError(f"every and consecutive must be >= 1, got {every} and {consecutive}")
    if expected_run_length is not None and not expected_run_length > 0:
        raise ValueError(f"expected_run_length must be > 0 embeddings, got {expected_run_length}")
    if window > len(pool):
        raise ValueError(
            f"the calibration pool has {len(pool)} held-out rows, fewer than one window of "
            f"{window}; lower the window or export with more held-out data"
        )
    scorer = WindowScorer(np.asarray(reference)[:reference_rows], kernel)
    streams = null_window_statistics(
        PoolWindows(pool, scorer),
        window=window,
        every=every,
        n_windows=n_resamples,
        null_streams=null_streams,
        rng=np.random.default_rng(seed),
        stream_windows=max(STREAM_WINDOWS, consecutive + 2),
    )
    chosen = choose_thresholds(
        streams,
        rule=rule,
        false_alarm_rate=false_alarm_rate,
        expected_run_length=expected_run_length,
        every=every,
        consecutive=consecutive,
    )
    flat = streams.reshape(-1, len(STATISTICS))
    return DriftThresholds(
        window=window,
        false_alarm_rate=false_alarm_rate,
        n_resamples=int(flat.shape[0]),
        kernel=kernel,
        bandwidth=float(scorer.kernel.fixed_scale),
        reference_rows=len(scorer.reference),
        mmd2_threshold=float(chosen.thresholds[0]),
        lps_linear_threshold=float(chosen.thresholds[1]),
        reference_lps_linear=window_lps_linear(np.asarray(reference, dtype=np.float64)),
        null_mmd2_mean=float(flat[:, 0].mean()),
        null_lps_linear_mean=float(flat[:, 1].mean()),
        rule=rule,
        null_streams=null_streams,
        every=every,
        consecutive=int(consecutive),
        pool_rows=len(pool),
        per_statistic_rate=chosen.per_statistic_rate,
        window_fire_rate=chosen.runs.fire_rate,
        alert_rate=chosen.runs.alert_rate,
        expected_run_length=chosen.runs.expected_run_length(every),
        target_expected_run_length=expected_run_length,
    )
