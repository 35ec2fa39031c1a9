"""Cross-request micro-batching: concurrent requests share one model call.

Request threads (BentoML's sync-API threads, gRPC's ``asyncio.to_thread`` workers) hand their
decoded arrays to one :class:`MicroBatcher`. Its dispatcher thread concatenates what is
waiting, calls the model once, and hands each request its own rows back, copied, in order.
Validation, the encoding and the drift monitor's ``observe`` stay per request, in the
request's thread; only the model call is shared.

When a batch goes (the adaptive part)
-------------------------------------
The dispatcher takes the queued requests (oldest first, at most ``max_batch_size`` rows; a
request larger than that goes alone) as soon as one of these holds:

- ``max_batch_size`` rows are waiting;
- the oldest waiting request has waited ``max_latency_ms``;
- no other request is being prepared: callers announce themselves with :meth:`reserve`
  before decoding, so when nobody is decoding, waiting could only add latency. A lone
  client (concurrency 1) therefore never waits, and under load batches grow by themselves
  while the previous batch runs.

Errors
------
If a batch of several requests fails, each of its requests is run again on its own, so an
error reaches only the request(s) that cause it, each as its own exception instance, and the
others still get their results. Requests queued when :meth:`close` is called are still run;
after ``close`` a request runs in its caller's thread, unbatched (requests racing a shutdown
are served, not failed).

Configuration (:class:`BatchConfig`; from the environment through
:meth:`sculptserve.serving.settings.Settings.batch_config`): ``enabled``
(``SCULPT_MICROBATCH``, default off), ``max_batch_size`` (``SCULPT_MICROBATCH_MAX_ROWS``,
rows, default 64), ``max_latency_ms``
(``SCULPT_MICROBATCH_MAX_WAIT_MS``, default 2; 0 means never linger: run whatever is waiting as
soon as the model is free).

Why off by default: on CPU the encoder's cost grows linearly with the rows (the shapes model
with 2 intra-op threads: about 0.7-0.9 ms of CPU per embedding at batch 1, 8 or 64), so
merging calls saves no model work. Measured over REST on 2 cores (benchmarks/RESULTS.md):
with 8 inputs per request batching lowered throughput in 10 of 12 cells (-15% to +6%); with
64 inputs at concurrency 64 it raised it by 5-21% with 10-15% less CPU per request, most
likely because one call at a time replaces dozens of concurrent large calls competing for
cache. So turn it on for large requests at high concurrency, and where a call has a large
fixed cost (a GPU: kernel launches, idle SMs at small batches; not measured here).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

__all__ = [
    "BatchConfig",
    "BatchStats",
    "MicroBatcher",
    "Slot",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """Whether /embed batches across requests, and how big and how long a batch may grow."""

    enabled: bool = False
    max_batch_size: int = 64
    max_latency_ms: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"BatchConfig.enabled must be a bool (got {self.enabled!r})")
        size = self.max_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"BatchConfig.max_batch_size must be an integer >= 1 (got {size!r})")
        latency = self.max_latency_ms
        if isinstance(latency, bool) or not isinstance(latency, int | float):
            raise ValueError(f"BatchConfig.max_latency_ms must be a number (got {latency!r})")
        if not (math.isfinite(latency) and 0 <= latency <= 10_000):
            raise ValueError(f"BatchConfig.max_latency_ms must be in [0, 10000] (got {latency!r})")


@dataclass(frozen=True)
class BatchStats:
    """Totals since start: model calls, requests and rows that went through them."""

    batches: int
    requests: int
    rows: int
    largest_batch: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "rows": self.rows,
            "largest_batch": self.largest_batch,
            "mean_rows_per_batch": self.rows / self.batches if self.batches else None,
        }


class _Request:
    """One caller's rows, waiting for its slice of a batch result."""

    __slots__ = ("arrived", "done", "error", "result", "rows", "x")

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.rows = len(x)
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None

    def finish(self, result: np.ndarray | None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Slot:
    """A reservation from :meth:`MicroBatcher.reserve`: "a request is on its way".

    Use it as a context manager around the request's preparation and call :meth:`run` once
    inside it; leaving the block without running (an invalid request) cancels the
    reservation.
    """

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True

    def run(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` (rows along axis 0), wait for its rows of the batch, return them."""
        if not self._open:
            raise RuntimeError("this slot was already used or released")
        self._open = False
        return self._batcher._submit(x, reserved=True)

    def release(self) -> None:
        """Cancel the reservation (idempotent; :meth:`run` releases it too)."""
        if self._open:
            self._open = False
            self._batcher._unreserve()

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class MicroBatcher:
    """Run ``fn`` on the concatenation of concurrent callers' arrays, one call at a time.

    ``fn`` maps an array of ``n`` rows to an array whose first axis also has ``n`` rows (e.g.
    ``EmbeddingRuntime.encode``); it is only ever called from the dispatcher thread (or, after
    :meth:`close`, from callers). ``item_shape``, when given, is checked on every submitted
    array (so batches always concatenate). ``max_latency_ms=math.inf`` never flushes on time,
    only on size or when nobody is preparing a request. Thread-safe; see the module docstring
    for the policy.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 64,
        max_latency_ms: float = 2.0,
        item_shape: Sequence[int] | None = None,
        name: str = "sculpt-batcher",
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise ValueError(f"max_batch_size must be an integer >= 1 (got {max_batch_size!r})")
        if max_batch_size < 1 or not max_latency_ms >= 0:  # inf: flush on size or idle only
            raise ValueError(
                f"need max_batch_size >= 1 and max_latency_ms >= 0 "
                f"(got {max_batch_size!r}, {max_latency_ms!r})"
            )
        self._fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_latency_ms = float(max_latency_ms)
        self._max_latency_s = self.max_latency_ms / 1e3
        self.item_shape = None if item_shape is None else tuple(int(d) for d in item_shape)

        # Everything below is guarded by _cond's lock.
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._reserved = 0  # callers preparing a request (see reserve())
        self._closed = False
        self._batches = self._requests = self._rows = self._largest = 0

        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def from_config(
        cls,
        fn: Callable[[np.ndarray], np.ndarray],
        config: BatchConfig,
        item_shape: Sequence[int] | None = None,
    ) -> MicroBatcher:
        return cls(
            fn,
            max_batch_size=config.max_batch_size,
            max_latency_ms=config.max_latency_ms,
            item_shape=item_shape,
        )

    # -- callers ---------------------------------------------------------------------------

    def reserve(self) -> Slot:
        """Announce a request that is being prepared; the dispatcher may wait for it (up to
        ``max_latency_ms``) rather than run a smaller batch now."""
        with self._cond:
            self._reserved += 1
        return Slot(self)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Queue ``x`` without a reservation and return its rows of the batch result."""
        return self._submit(x, reserved=False)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"a batched request needs at least one row, got shape {x.shape}")
        if self.item_shape is not None and x.shape[1:] != self.item_shape:
            raise ValueError(
                f"rows of shape {list(x.shape[1:])} cannot join batches of {list(self.item_shape)}"
            )
        return x

    def _unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1
            self._cond.notify_all()  # the dispatcher may have been waiting for this one

    def _submit(self, x: np.ndarray, *, reserved: bool) -> np.ndarray:
        try:
            x = self._check(x)
        except BaseException:
            if reserved:
                self._unreserve()
            raise
        request = _Request(x)
        with self._cond:
            if reserved:
                self._reserved -= 1
            closed = self._closed
            if not closed:
                self._queue.append(request)
                self._queued_rows += request.rows
                self._cond.notify_all()
        if closed:  # shutting down: serve it here rather than fail it
            return np.asarray(self._fn(x))
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    # -- dispatcher ------------------------------------------------------------------------

    def _take(self) -> list[_Request]:
        """Wait for the next batch (under the lock); [] once closed and drained."""
        while True:
            if not self._queue:
                if self._closed:
                    return []
                self._cond.wait()
                continue
            if self._closed or self._reserved <= 0 or self._queued_rows >= self.max_batch_size:
                break
            if math.isinf(self._max_latency_s):
                self._cond.wait()
                continue
            left = self._queue[0].arrived + self._max_latency_s - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
            request = self._queue.popleft()
            batch.append(request)
            rows += request.rows
        self._queued_rows -= rows
        self._cond.notify_all()  # for observers of the queue (tests); the dispatcher is us
        self._batches += 1
        self._requests += len(batch)
        self._rows += rows
        self._largest = max(self._largest, rows)
        return batch

    def _dispatch(self, batch: list[_Request]) -> None:
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            out = np.asarray(self._fn(x))
            if out.ndim < 1 or len(out) != len(x):
                raise RuntimeError(
                    f"the batched function returned shape {list(out.shape)} for {len(x)} rows"
                )
        except Exception as exc:
            if len(batch) == 1:
                batch[0].finish(None, exc)
                return
            # Someone's rows failed the whole batch: run each alone, so only the culprit(s)
            # get an error (each its own exception instance) and the rest their results.
            for request in batch:
                self._dispatch([request])
            return
        start = 0
        for request in batch:
            # A copy, so no caller holds a view into another caller's rows.
            request.finish(out[start : start + request.rows].copy())
            start += request.rows

    def _loop(self) -> None:
        batch: list[_Request] = []
        try:
            while True:
                with self._cond:
                    batch = self._take()
                if not batch:
                    return
                self._dispatch(batch)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("the micro-batcher's dispatcher stopped")
            with self._cond:
                self._closed = True  # later requests run in their callers' threads
                stranded = [*batch, *self._queue]
                self._queue.clear()
                self._queued_rows = 0
            for request in stranded:
                if not request.done.is_set():
                    request.finish(None, RuntimeError(f"the micro-batcher stopped: {exc!r}"))

    # -- state -----------------------------------------------------------------------------

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(self._batches, self._requests, self._rows, self._largest)

    @property
    def alive(self) -> bool:
        """Whether the dispatcher thread runs."""
        return self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Run what is queued, stop the dispatcher (idempotent). Later calls run inline."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
