"""The embedding service's core, shared by the REST (BentoML) and gRPC front ends.

One :class:`EmbeddingApp` holds the verified bundle, the ONNX Runtime sessions, the drift monitor
and the request limits. Its request methods take plain Python request values and return small result
dataclasses holding numpy arrays (:class:`EmbedResult`, :class:`ReconstructResult`,
:class:`GenerateResult`); each transport serializes them in its own form (REST: JSON lists and
base64 PNGs in :mod:`sculptserve.serving.http.service`; gRPC: tensors and PNG bytes in
:mod:`sculptserve.serving.grpc.server`). ``info()`` and ``drift()`` are JSON-able dicts, the same on
both. Every client mistake is a :class:`~sculptserve.serving.errors.PayloadError` (REST: 400, gRPC:
INVALID_ARGUMENT). The app reads no environment: :meth:`EmbeddingApp.from_settings` takes a
:class:`~sculptserve.serving.settings.Settings`. No torch anywhere.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import prometheus_client

from sculptserve.bundle.load import Bundle, load_bundle, summarize
from sculptserve.serving.batching import BatchConfig, MicroBatcher
from sculptserve.serving.drift import DriftConfig, DriftMonitor
from sculptserve.serving.encodings import ENCODINGS, encode_embeddings, get_encoding, images_to_png
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.inputs import (
    check_model_input,
    decode_batch,
    decode_inputs,
    parse_fixed_dims,
)
from sculptserve.serving.metrics import CoreMetrics
from sculptserve.serving.runtime import EmbeddingRuntime, RuntimeConfig

if TYPE_CHECKING:
    from sculptserve.serving.settings import Settings

__all__ = [
    "DEFAULT_GRPC_RESPONSE_MAX_BYTES",
    "OUTPUT_FORMATS",
    "EmbedResult",
    "EmbeddingApp",
    "GenerateResult",
    "PayloadError",
    "ReconstructResult",
    "ServiceLimits",
]

OUTPUT_FORMATS = ("array", "png")
# the quantiles that describe "the prior's range" of a latent dimension in error messages
_PRIOR_RANGE_QUANTILES = (0.001, 0.999)


# A default gRPC client refuses messages over 4 MiB; the margin is slack for a client whose
# limit counts a little more than the message.
DEFAULT_GRPC_RESPONSE_MAX_BYTES = 4 * 2**20 - 2**16


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request limits (from the environment: ``Settings.limits()``, the variables
    SCULPT_REQUEST_MAX_ITEMS, SCULPT_REQUEST_MAX_SAMPLES, SCULPT_REQUEST_MAX_BYTES,
    SCULPT_GRPC_RESPONSE_MAX_BYTES). ``max_grpc_response_bytes`` bounds one gRPC response
    message: the gRPC server refuses a request whose response would be larger before running
    the model (REST answers are not bounded by it)."""

    max_items: int = 256
    max_generate: int = 256
    max_body_bytes: int = 8 * 2**20
    max_grpc_response_bytes: int = DEFAULT_GRPC_RESPONSE_MAX_BYTES

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServiceLimits.{name} must be an integer >= 1 (got {value!r})")


# --- results: arrays; each transport serializes them ---------------------------------------


@dataclass(frozen=True, eq=False)
class EmbedResult:
    """``embeddings``: ``(n, latent_dim)`` codes in ``encoding``'s dtype (float32, float16,
    uint8 or int8)."""

    embeddings: np.ndarray
    encoding: str


@dataclass(frozen=True, eq=False)
class ReconstructResult:
    """``outputs``: ``(n, *input_shape)`` float32, in model space."""

    outputs: np.ndarray


@dataclass(frozen=True, eq=False)
class GenerateResult:
    """``latents``: ``(n, latent_dim)`` float32 prior samples; ``samples``: their decodings
    ``(n, *input_shape)`` float32; ``png``: one PNG file per sample when ``output='png'``
    (None otherwise)."""

    latents: np.ndarray
    samples: np.ndarray
    seed: int
    output: str
    png: list[bytes] | None = None


def check_finite(
    values: np.ndarray,
    what: str,
    cause: str = "the inputs",
    advice: str = "values too large for float32? check the value range of the inputs",
) -> None:
    """Refuse non-finite model outputs ``values`` (``what``: "embeddings", "samples"...) as
    the client's to fix: finite but huge values sent by the client (``cause``) overflowed the
    model. The one check of embed, reconstruct and generate (NaN/Inf never reach a response
    or the drift monitor)."""
    if np.isfinite(values).all():
        return
    rows = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    raise PayloadError(
        f"item {rows[0]}: {cause} give non-finite {what} ({rows.size} of {len(values)} "
        f"items); {advice}"
    )


def _encoder_of(app: weakref.ref[EmbeddingApp]) -> Callable[[np.ndarray], np.ndarray]:
    """The batcher's model call: the app's current runtime, looked up per call, through a
    weak reference (the dispatcher thread must not keep the app alive)."""

    def encode(x: np.ndarray) -> np.ndarray:
        target = app()
        if target is None:
            raise RuntimeError("the embedding app was garbage-collected")
        return target.runtime.encode(x)

    return encode


class EmbeddingApp:
    """Embed, reconstruct, generate, and watch the served embeddings for drift."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        runtime_config: RuntimeConfig | None = None,
        limits: ServiceLimits | None = None,
        drift_config: DriftConfig | None = None,
        metrics_registry: Any = None,
        metric_labels: dict[str, str] | None = None,
        background_drift: bool = True,
        drift_enabled: bool = True,
        batch_config: BatchConfig | None = None,
    ) -> None:
        self.bundle = bundle
        self.limits = limits or ServiceLimits()
        # Where the app's metrics go: its own (serving.metrics), the drift monitor's, and the
        # gRPC server's built on it.
        self.metrics_registry = (
            metrics_registry if metrics_registry is not None else prometheus_client.REGISTRY
        )
        self.metrics = CoreMetrics(self.metrics_registry)
        # Every ONNX Runtime call is timed where it runs, whoever calls (batcher included).
        self.runtime = EmbeddingRuntime(bundle, runtime_config, observer=self.metrics.observe_call)
        self.batch_config = batch_config or BatchConfig()
        self.prior = self.runtime.prior
        self.spec = bundle.manifest.input
        self.monitor = (
            DriftMonitor(
                bundle.reference(),
                bundle.manifest.drift,
                drift_config,
                registry=self.metrics_registry,
                # One label set for every app in a process, so monitors can share a registry.
                labels=metric_labels or {"worker": "0"},
                background=background_drift,
            )
            if drift_enabled
            else None
        )
        self.metrics.serving(bundle)  # once the bundle's sessions and monitor are up
        # Last, so a failure above leaves no dispatcher thread behind. Concurrent embed requests
        # share encoder calls (serving.batching); None: each request is its own ORT call.
        self.batcher: MicroBatcher | None = None
        if self.batch_config.enabled:
            self.batcher = MicroBatcher.from_config(
                _encoder_of(weakref.ref(self)),
                self.batch_config,
                item_shape=self.runtime.input_shape,
            )
            # An app dropped without close() must not leave its dispatcher thread behind.
            weakref.finalize(self, self.batcher.close, 0.0)

    @classmethod
    def from_source(cls, source: str, **kwargs: Any) -> EmbeddingApp:
        """Load and verify a bundle (folder or BentoML tag); config from ``kwargs``."""
        return cls(load_bundle(source), **kwargs)

    @classmethod
    def from_settings(
        cls, settings: Settings, source: str | None = None, **kwargs: Any
    ) -> EmbeddingApp:
        """Load and verify ``source`` (default: ``settings.bundle``; against the pinned digest
        and verify key, where set) and configure the app (runtime, limits, micro-batcher,
        drift monitor on/off) from ``settings``."""
        source = source or settings.bundle
        if not source:
            raise ValueError(
                f"no bundle given: set {settings.variable('bundle')} to a bundle folder or a "
                "BentoML tag (sculpt-NAME[:VERSION])"
            )
        kwargs.setdefault("runtime_config", settings.runtime_config())
        kwargs.setdefault("limits", settings.limits())
        kwargs.setdefault("batch_config", settings.batch_config())
        kwargs.setdefault("drift_enabled", settings.drift)
        bundle = load_bundle(
            source, expect_digest=settings.bundle_digest, verify_key=settings.verify_key()
        )
        return cls(bundle, **kwargs)

    def ready(self) -> bool:
        """Whether the app can serve: the bundle is verified (it is, once constructed), and the
        drift worker and the micro-batcher's dispatcher, where used, are alive. REST's
        /readyz and gRPC health both follow this."""
        monitor = self.monitor
        monitor_ok = monitor is None or not monitor.background or monitor.worker_alive
        return monitor_ok and (self.batcher is None or self.batcher.alive)

    # -- requests ---------------------------------------------------------------------------

    def embed(self, inputs: Any, encoding: str = "float32") -> EmbedResult:
        """Inputs -> embeddings (encoder means), optionally quantized through the prior CDF."""
        get_encoding(encoding)  # an unknown encoding fails before any work
        if self.batcher is None:
            z = self.runtime.encode(self._decode(inputs))
        else:
            # Reserve before decoding: the batcher may hold a batch briefly for a request
            # that is still decoding, but never for nobody.
            with self.batcher.reserve() as slot:
                z = slot.run(self._decode(inputs))
        check_finite(z, "embeddings")  # before the monitor: it must never see NaN/Inf
        if self.monitor is not None:
            self.monitor.observe(z)
        return EmbedResult(encode_embeddings(z, self.prior, encoding), encoding)

    def _decode(self, inputs: Any) -> np.ndarray:
        """Request items (lists, base64, raw) or a whole batch array (binary transports)."""
        if isinstance(inputs, np.ndarray):
            return decode_batch(inputs, self.spec, max_items=self.limits.max_items)
        return decode_inputs(inputs, self.spec, max_items=self.limits.max_items)

    def decode(self, latents: np.ndarray) -> ReconstructResult:
        """Latents ``(B, latent_dim)`` -> decoder outputs in model space (the decoder model of
        the Open Inference Protocol; generation from the prior is :meth:`generate`)."""
        z = check_model_input(latents, (self.runtime.latent_dim,), what="latents")
        if len(z) > self.limits.max_items:
            raise PayloadError(
                f"too many items: {len(z)}, at most {self.limits.max_items} per request; "
                "split the batch"
            )
        outputs = self.runtime.decode(z)
        check_finite(outputs, "outputs", cause="the latents", advice="keep latents near the prior")
        return ReconstructResult(outputs)

    def reconstruct(self, inputs: Any) -> ReconstructResult:
        """Inputs -> decoder(encoder(inputs)), in model space."""
        x = self._decode(inputs)
        outputs = self.runtime.reconstruct(x)
        check_finite(outputs, "outputs")
        return ReconstructResult(outputs)

    def generate(
        self,
        n: int,
        seed: int = 0,
        fixed: Mapping[Any, Any] | None = None,
        output: str = "array",
    ) -> GenerateResult:
        """n decoded prior samples, deterministic for a seed; PNGs for image models."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.limits.max_generate:
            raise PayloadError(
                f"n must be an integer in [1, {self.limits.max_generate}], got {n!r}"
            )
        if output not in OUTPUT_FORMATS:
            raise PayloadError(f"unknown output '{output}'; valid: {', '.join(OUTPUT_FORMATS)}")
        if output == "png" and self.spec.modality != "image":
            raise PayloadError("output 'png' needs an image model; this bundle is tabular")
        overrides = parse_fixed_dims(fixed, self.runtime.latent_dim)
        latents, samples = self.runtime.generate(n, seed, overrides)
        self._check_samples(samples, overrides, seed)
        png = None
        if output == "png":
            png = images_to_png(samples, self.spec.value_range or (0.0, 1.0))
        return GenerateResult(latents, samples, seed, output, png)

    def _check_samples(self, samples: np.ndarray, overrides: dict[int, float], seed: int) -> None:
        """Non-finite samples: the client's ``fixed`` values overflowed the decoder (400), or,
        with no ``fixed`` values, the bundle's decoder fails on its own prior (500)."""
        if not overrides:
            if not np.isfinite(samples).all():
                raise RuntimeError(
                    f"the decoder gave non-finite samples for prior draws (seed {seed}): the "
                    "bundle's decoder is broken; re-export it"
                )
            return
        lo, hi = self.prior.ppf(np.array([_PRIOR_RANGE_QUANTILES] * self.prior.dim).T)
        ranges = ", ".join(f"dimension {d} in [{lo[d]:.3g}, {hi[d]:.3g}]" for d in overrides)
        fixed = "{" + ", ".join(f"{d}: {v:.3g}" for d, v in overrides.items()) + "}"
        low_q, high_q = (f"{100 * q:g}%" for q in _PRIOR_RANGE_QUANTILES)
        check_finite(
            samples,
            "samples",
            cause=f"the fixed values {fixed}",
            advice=f"keep fixed values near the prior's range ({low_q}..{high_q} quantiles: "
            f"{ranges})",
        )

    def info(self) -> dict[str, Any]:
        return {
            **summarize(self.bundle),
            "providers": list(self.runtime.providers),
            "limits": asdict(self.limits),
            "encodings": list(ENCODINGS),
            "batching": {
                **asdict(self.batch_config),
                **(self.batcher.stats().to_dict() if self.batcher is not None else {}),
            },
        }

    def drift(self) -> dict[str, Any]:
        if self.monitor is None:
            return {"state": "disabled", "reason": "the drift monitor is off (SCULPT_DRIFT=off)"}
        return self.monitor.report().to_dict()

    def close(self) -> None:
        """Run the queued embed requests, then stop the batcher and the drift worker."""
        if self.batcher is not None:
            self.batcher.close()
        if self.monitor is not None:
            self.monitor.close()
