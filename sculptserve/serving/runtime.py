"""ONNX Runtime sessions for a bundle: encode, decode, reconstruct, generate.

One :class:`EmbeddingRuntime` is built per process and shared by every request handler, REST
and gRPC alike: ONNX Runtime's ``InferenceSession.run`` is thread-safe, and the runtime holds
no mutable state after ``__init__`` (each call gets its own arrays and, for generation, its
own ``np.random.Generator``). No web framework and no torch here.

Configuration (:class:`RuntimeConfig`; from the environment through
:meth:`sculptserve.serving.settings.Settings.runtime_config`, variables in brackets):

- ``intra_op_threads`` (``SCULPT_ORT_THREADS``): intra-op threads. None: the CPUs this process
  may actually use (``os.sched_getaffinity``, capped by a cgroup CPU quota), never every core
  of the host: ONNX Runtime's default would oversubscribe a container.
- ``providers`` (``SCULPT_ORT_PROVIDERS``): execution providers, full names or short aliases
  (``cuda,cpu``). None: CUDA first when this onnxruntime build has it, then CPU.
- ``max_batch`` (``SCULPT_ORT_MAX_ROWS``): the largest batch handed to one ``session.run``;
  bigger requests are split into chunks (bounds peak memory; results are identical).
- ``spinning`` (``SCULPT_ORT_SPINNING``): True lets ONNX Runtime's pool threads busy-wait for
  the next parallel section (its default). False: they sleep. Measured on a 2-core machine with
  2 intra-op threads, batches of 8 spaced like requests: spinning took 1.4-1.8 ms of CPU per
  embedding against 0.7-0.8 ms without, for no lower latency; a server shares its cores with
  the HTTP event loop, which the spinning threads starve (benchmarks/RESULTS.md).

``observer`` (optional, a :data:`CallObserver`) is told the model, the rows and the wall time of
every ``session.run``; the service core records them as Prometheus metrics
(:mod:`sculptserve.serving.metrics`). Without one the runtime knows nothing of metrics.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sculptserve.bundle.load import Bundle, BundleError, validate_session
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.inputs import check_model_input, parse_fixed_dims

__all__ = [
    "PROVIDER_ALIASES",
    "CallObserver",
    "EmbeddingRuntime",
    "RuntimeConfig",
    "available_cpus",
]

# short, case-insensitive names a user may type; full ONNX Runtime names are accepted as well
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
_DEFAULT_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")
# graph input type -> numpy dtype to feed (an fp16 bundle may take float16 inputs)
_FEED_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# (model role "encoder" | "decoder", rows, seconds) of one session.run, after it returned
CallObserver = Callable[[str, int, float], None]


# ---------------------------------------------------------------------------------------------
# CPUs and providers
# ---------------------------------------------------------------------------------------------


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup CFS quota (v2 ``cpu.max``, or v1), None when unlimited."""
    try:
        quota_text, period_text = (root / "cpu.max").read_text().split()[:2]
        if quota_text == "max":
            return None
        quota, period = float(quota_text), float(period_text)
    except (OSError, ValueError):
        try:
            quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process can use: its affinity mask, capped by a cgroup CPU quota (>= 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:  # Kubernetes/Docker CPU limits are quotas, not affinity masks
        n = min(n, math.ceil(limit))
    return max(1, n)


def _available_providers() -> list[str]:
    import onnxruntime as ort  # lazy: importing ORT is slow and config parsing needs none of it

    return list(ort.get_available_providers())


def _canonical_provider(name: str) -> str:
    return PROVIDER_ALIASES.get(name.strip().lower(), name.strip())


def resolve_providers(providers: Sequence[str] | None, source: str) -> tuple[str, ...]:
    """Providers to ask ONNX Runtime for: the given ones (aliases expanded, each checked against
    this build) or the default preference. ``source`` names the setting in errors."""
    available = _available_providers()
    if providers is None:
        return tuple(p for p in _DEFAULT_PREFERENCE if p in available) or tuple(available[:1])
    wanted = tuple(_canonical_provider(p) for p in providers)
    missing = [p for p in wanted if p not in available]
    if not wanted or missing:
        what = "is empty" if not wanted else f"names {', '.join(missing)}"
        raise ValueError(
            f"{source} {what}, but this onnxruntime build offers only {', '.join(available)} "
            f"(aliases: {', '.join(PROVIDER_ALIASES)}); for CUDA install onnxruntime-gpu "
            "(instead of onnxruntime, not beside it)"
        )
    return wanted


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeConfig:
    """Threads, providers and batch chunking of an :class:`EmbeddingRuntime`.

    ``intra_op_threads=None`` uses :func:`available_cpus`. ``providers=None`` picks CUDA first
    when available, then CPU.
    ``spinning``: let idle pool threads busy-wait (see the module docstring; off by default).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    providers: tuple[str, ...] | None = None
    max_batch: int = 1024
    spinning: bool = False

    def __post_init__(self) -> None:
        checks = {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "max_batch": self.max_batch,
        }
        for name, value in checks.items():
            if value is None and name == "intra_op_threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RuntimeConfig.{name} must be an integer >= 1 (got {value!r})")
        if not isinstance(self.spinning, bool):
            raise ValueError(f"RuntimeConfig.spinning must be a bool (got {self.spinning!r})")
        if self.providers is not None:
            if isinstance(self.providers, str) or not self.providers:
                raise ValueError(
                    "RuntimeConfig.providers must be a non-empty tuple of provider names "
                    f"(got {self.providers!r})"
                )
            object.__setattr__(self, "providers", tuple(self.providers))

    def resolved_threads(self) -> int:
        """Intra-op threads to use: the field, else the CPUs this process may use."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return available_cpus()

    def resolved_providers(self) -> tuple[str, ...]:
        """Providers to request, checked against this onnxruntime build."""
        return resolve_providers(self.providers, "RuntimeConfig.providers")


# ---------------------------------------------------------------------------------------------
# The runtime
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    role: str  # "encoder" | "decoder"
    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    feed_dtype: type


class EmbeddingRuntime:
    """Encoder and decoder sessions of one bundle, plus its prior, safe to share across threads.

    Attributes: ``bundle``, ``manifest``, ``config``, ``providers`` (the providers the sessions
    actually use, e.g. CPU only when CUDA failed to initialize), ``intra_op_threads``,
    ``latent_dim``, ``input_shape``, ``prior``, ``observer`` (see the module docstring).
    """

    def __init__(
        self,
        bundle: Bundle,
        config: RuntimeConfig | None = None,
        *,
        observer: CallObserver | None = None,
    ) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        self.observer = observer
        self.manifest = bundle.manifest
        self.config = config if config is not None else RuntimeConfig()
        self.latent_dim = int(self.manifest.latent_dim)
        self.input_shape = tuple(int(d) for d in self.manifest.input.shape)
        self.prior = bundle.prior()
        self.intra_op_threads = self.config.resolved_threads()
        requested = self.config.resolved_providers()

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.config.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings would flood service logs
        spin = "1" if self.config.spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self._encoder = self._open("encoder", options, requested)
        self._decoder = self._open("decoder", options, requested)
        self.providers: list[str] = list(self._encoder.session.get_providers())

    def _open(self, role: str, options: Any, providers: tuple[str, ...]) -> _Graph:
        import onnxruntime as ort

        spec = getattr(self.manifest.onnx, role)
        file = self.bundle.file(spec.file)
        try:
            session = ort.InferenceSession(
                str(file), sess_options=options, providers=list(providers)
            )
        except Exception as exc:  # ORT raises its own pybind classes
            reason = " ".join(str(exc).split())[:300]
            raise BundleError(
                f"{file}: ONNX Runtime {ort.__version__} cannot open it with providers "
                f"{list(providers)} ({reason}); check SCULPT_ORT_PROVIDERS or re-export"
            ) from None
        validate_session(self.manifest, role, session, file)
        in_type = session.get_inputs()[0].type
        return _Graph(role, session, spec.input_name, spec.output_name, _FEED_DTYPES[in_type])

    def _run(self, graph: _Graph, x: np.ndarray) -> np.ndarray:
        """Run ``graph`` on ``x`` in chunks of at most ``max_batch`` rows; float32 out."""
        step = self.config.max_batch
        observe = self.observer
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step].astype(graph.feed_dtype, copy=False)
            began = time.perf_counter()
            outs.append(graph.session.run([graph.output_name], {graph.input_name: chunk})[0])
            if observe is not None:  # the model's own time: no request or answer coding
                observe(graph.role, len(chunk), time.perf_counter() - began)
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return np.asarray(out, dtype=np.float32)

    def session_options(self, role: str = "encoder") -> Any:
        """The ``onnxruntime.SessionOptions`` a session runs with (threads, for /info)."""
        graph = {"encoder": self._encoder, "decoder": self._decoder}[role]
        return graph.session.get_session_options()

    def encode(self, x: Any) -> np.ndarray:
        """Model-space inputs ``(B, *input_shape)`` -> latent means ``(B, latent_dim)``."""
        return self._run(self._encoder, check_model_input(x, self.input_shape))

    def decode(self, z: Any) -> np.ndarray:
        """Latents ``(B, latent_dim)`` -> model-space outputs ``(B, *input_shape)``."""
        return self._run(self._decoder, check_model_input(z, (self.latent_dim,), what="latent"))

    def reconstruct(self, x: Any) -> np.ndarray:
        """decode(encode(x))."""
        return self.decode(self.encode(x))

    def generate(
        self, n: int, seed: int, fixed: Mapping[Any, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``n`` latents from the prior and decode them: ``(latents, outputs)``.

        Deterministic for a seed (``np.random.default_rng(seed)``, independent of chunking).
        ``fixed`` maps dimension index -> value, overriding those dimensions in every sample
        (see :func:`sculptserve.serving.inputs.parse_fixed_dims`). Bad arguments are PayloadErrors.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise PayloadError(f"n must be an integer >= 1 (got {n!r})")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise PayloadError(f"seed must be an integer >= 0 (got {seed!r})")
        overrides = parse_fixed_dims(fixed, self.latent_dim)
        latents = self.prior.sample(int(n), np.random.default_rng(int(seed)))
        for dim, value in overrides.items():
            latents[:, dim] = value
        latents = latents.astype(np.float32)
        return latents, self.decode(latents)
