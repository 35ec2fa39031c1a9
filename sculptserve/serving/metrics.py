"""The core's Prometheus metrics: the model's own time and rows per ONNX Runtime call, and the
bundle served; and :func:`registered`, the one per-registry metric cache of the serving code.

- ``sculpt_inference_duration_seconds{model}``: a histogram of the wall time of each
  ``session.run`` (the model alone: no decoding of requests, no encoding of answers, no wait
  in a micro-batch queue), ``model`` = ``encoder`` or ``decoder``; buckets 0.1 ms to 10 s.
- ``sculpt_batch_rows{model}``: a histogram of the rows of each of those calls (powers of two,
  1 to 1024). With micro-batching (:mod:`sculptserve.serving.batching`) it shows how full the
  merged batches are, without it the request sizes (split at ``SCULPT_ORT_MAX_ROWS``).
- ``sculpt_model_info{name, version, digest}``: 1, the manifest's name and version and the
  bundle digest of the bundle served.

:class:`CoreMetrics` is what :class:`~sculptserve.serving.core.EmbeddingApp` builds: its
:meth:`~CoreMetrics.observe_call` is the runtime's per-call observer
(:class:`~sculptserve.serving.runtime.EmbeddingRuntime` ``observer``), so every ONNX Runtime
call is counted whoever makes it (REST, gRPC, the micro-batcher's dispatcher thread), and the
runtime itself stays free of Prometheus (the benchmarks use it without a registry). Both
models' series exist from the start at zero, so ``rate()`` sees the first call.

Several processes (BentoML workers, ``PROMETHEUS_MULTIPROC_DIR``): the histograms are summed
across workers, like the drift monitor's counters; the info gauge uses ``livemax``, one series
per bundle some live worker serves (``max``-like, so the 1s of several workers do not add up,
and gone when the last worker that served it is marked dead).

Metric objects are created once per (registry, name) by :func:`registered`, so several apps
(and drift monitors, and gRPC servers) may share one registry; prometheus_client refuses a
second registration of a name.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Gauge, Histogram

if TYPE_CHECKING:
    from sculptserve.bundle.load import Bundle

__all__ = [
    "BATCH_ROWS",
    "INFERENCE_SECONDS",
    "INFERENCE_SECONDS_BUCKETS",
    "MODELS",
    "MODEL_INFO",
    "ROWS_BUCKETS",
    "CoreMetrics",
    "registered",
]

INFERENCE_SECONDS = "sculpt_inference_duration_seconds"  # a histogram: _bucket, _sum, _count
BATCH_ROWS = "sculpt_batch_rows"  # a histogram
MODEL_INFO = "sculpt_model_info"
MODELS = ("encoder", "decoder")  # the ``model`` label: the bundle's two graphs
# 1-2.5-5 steps from 0.1 ms (a small encoder's batch of 1) to 10 s (a large batch on a slow CPU)
INFERENCE_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
ROWS_BUCKETS = tuple(float(2**k) for k in range(11))  # 1 .. 1024 (SCULPT_ORT_MAX_ROWS' default)

M = TypeVar("M")

_lock = threading.Lock()
# Keyed weakly by registry so throwaway test registries do not pin their metrics forever.
_cache: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


def registered(registry: CollectorRegistry, name: str, create: Callable[[], M]) -> M:
    """The metric ``name`` of ``registry``: ``create()``'s (which must register it on
    ``registry``) the first time, the same object afterwards."""
    with _lock:
        metrics = _cache.setdefault(registry, {})
        if name not in metrics:
            metrics[name] = create()
        return metrics[name]


class CoreMetrics:
    """The core's metrics on ``registry``: per-call model time and rows, and the bundle served."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        seconds = registered(
            registry,
            INFERENCE_SECONDS,
            lambda: Histogram(
                INFERENCE_SECONDS,
                "Wall time of one ONNX Runtime call (session.run), by model",
                ("model",),
                registry=registry,
                buckets=INFERENCE_SECONDS_BUCKETS,
            ),
        )
        rows = registered(
            registry,
            BATCH_ROWS,
            lambda: Histogram(
                BATCH_ROWS,
                "Rows (inputs or latents) of one ONNX Runtime call, by model",
                ("model",),
                registry=registry,
                buckets=ROWS_BUCKETS,
            ),
        )
        # Label-bound once: the hot path is a dict lookup and two observe() calls.
        self._children = {model: (seconds.labels(model), rows.labels(model)) for model in MODELS}

    def observe_call(self, model: str, rows: int, seconds: float) -> None:
        """Record one ONNX Runtime call of ``model`` on ``rows`` rows that took ``seconds``."""
        duration, size = self._children[model]
        duration.observe(seconds)
        size.observe(rows)

    def serving(self, bundle: Bundle) -> None:
        """Set ``sculpt_model_info`` of ``bundle`` to 1."""
        info = registered(
            self._registry,
            MODEL_INFO,
            lambda: Gauge(
                MODEL_INFO,
                "The bundle served: its manifest's name and version and its digest (always 1)",
                ("name", "version", "digest"),
                registry=self._registry,
                multiprocess_mode="livemax",
            ),
        )
        manifest = bundle.manifest
        info.labels(manifest.name, manifest.version, bundle.digest).set(1)
