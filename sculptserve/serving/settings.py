"""Every ``SCULPT_*`` setting of the service, defined and read from the environment here only.

:class:`Settings` (pydantic-settings, prefix ``SCULPT_``) is the one definition: each field is
one variable, with its type, default, bounds and description. :func:`load_settings` reads the
environment once, validates every value and raises a :class:`SettingsError` with one line
naming the variable (``SCULPT_ORT_THREADS='two' is not an integer; ...``). The entry points
(the BentoML service, the HTTP guard, the standalone gRPC server, ``sculpt serve``) load it
and pass plain values and config objects down: no other module reads ``SCULPT_*``.

Renamed variables keep their old name as a deprecated alias for one release (:data:`RENAMED`):
the old name still works, with a :class:`SculptDeprecationWarning` naming the new one; when
both are set the new one wins.

``python -m sculptserve.serving.settings --markdown`` prints the settings table of README.md (a test
keeps the two equal); ``sculpt serve --help`` lists the same from :func:`help_text`.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sculptserve.bundle.digest import TrustError, load_public_key, parse_digest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from sculptserve.serving.batching import BatchConfig
    from sculptserve.serving.core import ServiceLimits
    from sculptserve.serving.runtime import RuntimeConfig

__all__ = [
    "PREFIX",
    "RENAMED",
    "SculptDeprecationWarning",
    "Settings",
    "SettingsError",
    "help_text",
    "load_settings",
    "markdown_table",
]

PREFIX = "SCULPT_"

# old name -> new name; the old names are read, with a warning, for one release.
RENAMED: dict[str, str] = {
    "SCULPT_MAX_ITEMS": "SCULPT_REQUEST_MAX_ITEMS",
    "SCULPT_MAX_GENERATE": "SCULPT_REQUEST_MAX_SAMPLES",
    "SCULPT_MAX_BODY_BYTES": "SCULPT_REQUEST_MAX_BYTES",
    "SCULPT_MAX_BATCH": "SCULPT_ORT_MAX_ROWS",
    "SCULPT_BATCH": "SCULPT_MICROBATCH",
    "SCULPT_BATCH_MAX_SIZE": "SCULPT_MICROBATCH_MAX_ROWS",
    "SCULPT_BATCH_MAX_LATENCY_MS": "SCULPT_MICROBATCH_MAX_WAIT_MS",
}


class SettingsError(ValueError):
    """An invalid ``SCULPT_*`` value; the message is one line naming the variable."""


class SculptDeprecationWarning(FutureWarning):
    """A deprecated ``SCULPT_*`` name was used (shown by default: operators set these)."""


# The environment :func:`load_settings` reads from (None: ``os.environ``).
_ENV: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "sculpt_settings_env", default=None
)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``.

    Only upper-case ``SCULPT_*`` names count (as before); blank values mean unset; values are
    stripped of surrounding whitespace.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = {
            k.lower(): v.strip()
            for k, v in env.items()
            if k.startswith(PREFIX) and k == k.upper() and v.strip()
        }
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._mapping


class Settings(BaseSettings):
    """The service's settings; each field is the variable ``SCULPT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    bundle: str | None = Field(
        None,
        description="The bundle to serve: a bundle folder or a BentoML tag "
        "(`sculpt-NAME[:VERSION]`). Required by the service; `sculpt serve BUNDLE` sets it.",
    )
    api_key: str | None = Field(
        None,
        repr=False,
        description="When set, every REST API route needs `Authorization: Bearer KEY` (401 "
        "otherwise) and every `sculpt.v1.Sculpt` and `inference.GRPCInferenceService` gRPC "
        "call the same metadata (UNAUTHENTICATED); health (grpc.health.v1 and the inference "
        "service's ServerLive, ServerReady, ModelReady), metrics, docs and reflection stay "
        "open. Unset or empty: no key.",
    )
    api_threads: int = Field(
        32,
        ge=1,
        description="Threads a BentoML worker runs the sync REST APIs in (BentoML's own "
        "default, 1, serializes every request of a worker).",
    )
    workers: int = Field(
        1,
        ge=1,
        description="BentoML worker processes. Each loads its own ONNX Runtime sessions and "
        "drift monitor (metrics labelled by worker) and serves the HTTP port and, through "
        "SO_REUSEPORT, the gRPC port. A process runs Python, the protocol work of every "
        "request, on one core at a time: with a cheap encoder 2 workers on 2 CPUs served "
        "1.2-2.4x the requests of 1 (benchmarks/RESULTS.md); set it to the CPUs of the pod. "
        "ONNX Runtime threads, when `SCULPT_ORT_THREADS` is unset, are then the CPUs divided "
        "among the workers.",
    )
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Run the gRPC server inside the BentoML worker on this port (0: any free "
        "port); unset: HTTP only. `sculpt serve` sets it (`--grpc-port`).",
    )
    grpc_host: str = Field(
        "127.0.0.1",
        description="Address the in-worker gRPC server binds (`0.0.0.0` in a container).",
    )
    request_max_items: int = Field(
        256, ge=1, description="Most inputs in one /embed or /reconstruct request (400 above)."
    )
    request_max_samples: int = Field(
        256, ge=1, description="Largest `n` of one /generate request (400 above)."
    )
    request_max_bytes: int = Field(
        8 * 2**20,
        ge=1,
        description="Largest request body in bytes: HTTP answers 413, gRPC RESOURCE_EXHAUSTED.",
    )
    ort_threads: int | None = Field(
        None,
        ge=1,
        description="ONNX Runtime intra-op threads; unset: the CPUs this process may use "
        "(affinity mask, capped by a cgroup CPU quota).",
    )
    ort_providers: str | None = Field(
        None,
        description="Comma list of ONNX Runtime execution providers, full names or aliases "
        "(`cuda,cpu`); unset: CUDA first when this onnxruntime build has it, then CPU.",
    )
    ort_max_rows: int = Field(
        1024,
        ge=1,
        description="Most rows handed to one ONNX Runtime `session.run`; larger requests are "
        "run in chunks of this size (bounds peak memory; results are identical).",
    )
    ort_spinning: bool = Field(
        False,
        description="`on` lets ONNX Runtime's idle pool threads busy-wait (ORT's default); "
        "off, they sleep and leave the CPU to the HTTP path.",
    )
    microbatch: bool = Field(
        False,
        description="`on` merges concurrent /embed requests (REST and gRPC) into shared ONNX "
        "Runtime calls (the micro-batcher); off by default, see benchmarks/RESULTS.md.",
    )
    microbatch_max_rows: int = Field(
        64, ge=1, description="Most rows the micro-batcher puts in one shared call."
    )
    microbatch_max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        allow_inf_nan=False,
        description="Longest a request waits for others to join its batch, in ms (0: never "
        "linger; no wait at all while no other request is being decoded).",
    )
    drift: bool = Field(
        True,
        description="`off` disables the drift monitor (/drift answers `disabled`; benchmarks "
        "measure its cost).",
    )
    # -- bundle trust (issue 13): pin the bundle's digest, require its signature --------------
    bundle_digest: str | None = Field(
        None,
        description="Pin the bundle: its digest, `sha256:HEX` as `sculpt export` and `sculpt "
        "inspect` print it (`sculpt serve --expect-digest`); any other bundle is refused at "
        "start. Unset: any self-consistent bundle is served.",
    )
    bundle_verify_key: str | None = Field(
        None,
        description="Path of an ed25519 public key (PEM, `sculpt keygen`); the bundle must carry "
        "a signature.json by its private key (`sculpt export --signing-key`) or is refused at "
        "start (`sculpt serve --verify-key`). Unset: signatures are not required.",
    )
    # -- payload costs (issue 13): response size --
    grpc_response_max_bytes: int = Field(
        4 * 2**20 - 2**16,  # = core.DEFAULT_GRPC_RESPONSE_MAX_BYTES (not imported: heavy)
        ge=2**16,
        description="Largest gRPC response message in bytes. A request whose response would "
        "be larger (Generate, Reconstruct or Embed of many items) is refused with "
        "RESOURCE_EXHAUSTED naming how many items fit, before the model runs; the default "
        "fits a default gRPC client's 4 MiB receive limit. Raise it only with clients that "
        "raise theirs (`grpc.max_receive_message_length`).",
    )
    # --- shutdown drain and slow HTTP clients (issue 13, findings 5 and 6) -------------------
    shutdown_delay_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="On SIGTERM (or Ctrl-C): seconds the service goes on accepting and serving "
        "new requests while /readyz answers 503 and gRPC health NOT_SERVING, so balancers and "
        "clients move away before its ports close (Kubernetes: after the preStop sleep).",
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="Then the ports stop accepting, and in-flight or queued HTTP requests and "
        "gRPC calls get this many seconds to finish before they are cut off.",
    )
    http_header_timeout_s: float = Field(
        10.0,
        ge=0.1,
        le=3600,
        allow_inf_nan=False,
        description="Seconds a client may take to send a request's headers (from the "
        "connection's opening, or the request's first byte on a kept-alive one); slower "
        "connections get 408 and are closed.",
    )
    http_body_timeout_s: float = Field(
        30.0,
        ge=0.1,
        le=3600,
        allow_inf_nan=False,
        description="Seconds the service waits, in all, for a request's body to arrive; a "
        "slower client gets 408 and its connection is closed.",
    )

    # which variable supplied each field read from the environment (an old name, if so)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _one_grpc_port_for_all_workers(self) -> Settings:
        if self.workers > 1 and self.grpc_port == 0:
            raise ValueError(
                f"SCULPT_WORKERS={self.workers} with SCULPT_GRPC_PORT=0: each worker would take "
                "another free port; give the gRPC port a number (the workers share it)"
            )
        return self

    @field_validator("bundle_digest")
    @classmethod
    def _normal_digest(cls, value: str | None) -> str | None:
        return None if value is None else parse_digest(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _ENV.get()
        source = _MappingEnvSource(settings_cls, os.environ if env is None else env)
        return (init_settings, source)

    # -- names ------------------------------------------------------------------------------

    @staticmethod
    def variable(field: str) -> str:
        """The environment variable of ``field``: ``ort_threads`` -> ``SCULPT_ORT_THREADS``."""
        return PREFIX + field.upper()

    def source_of(self, field: str) -> str:
        """The variable ``field`` was read from (a deprecated name, if that was used)."""
        return self._origins.get(field, self.variable(field))

    # -- the config objects the modules take --------------------------------------------------

    def runtime_config(self) -> RuntimeConfig:
        """ONNX Runtime threads, providers (checked against this build), chunking, spinning."""
        from sculptserve.serving.runtime import RuntimeConfig, available_cpus, resolve_providers

        providers = None
        if self.ort_providers is not None:
            names = [p for p in self.ort_providers.split(",") if p.strip()]
            where = f"{self.source_of('ort_providers')}={self.ort_providers!r}"
            try:
                providers = resolve_providers(names, where)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        threads = self.ort_threads
        if threads is None and self.workers > 1:  # the workers share the CPUs
            threads = max(1, available_cpus() // self.workers)
        return RuntimeConfig(
            intra_op_threads=threads,
            providers=providers,
            max_batch=self.ort_max_rows,
            spinning=self.ort_spinning,
        )

    def verify_key(self) -> Ed25519PublicKey | None:
        """The bundle verify key read from its file (None when unset); an unreadable or wrong
        file is a SettingsError naming the variable."""
        if self.bundle_verify_key is None:
            return None
        try:
            return load_public_key(self.bundle_verify_key)
        except TrustError as exc:
            raise SettingsError(f"{self.source_of('bundle_verify_key')}: {exc}") from None

    def batch_config(self) -> BatchConfig:
        """The micro-batcher's switch and bounds."""
        from sculptserve.serving.batching import BatchConfig

        return BatchConfig(
            enabled=self.microbatch,
            max_batch_size=self.microbatch_max_rows,
            max_latency_ms=float(self.microbatch_max_wait_ms),
        )

    def limits(self) -> ServiceLimits:
        """Per-request limits."""
        from sculptserve.serving.core import ServiceLimits

        return ServiceLimits(
            max_items=self.request_max_items,
            max_generate=self.request_max_samples,
            max_body_bytes=self.request_max_bytes,
            max_grpc_response_bytes=self.grpc_response_max_bytes,
        )

    def child_env(self, **values: Any) -> dict[str, str]:
        """``{variable: text}`` for a child process, e.g. ``child_env(bundle="b", grpc_port=1)``
        (names checked against the fields)."""
        env = {}
        for field, value in values.items():
            if field not in type(self).model_fields:
                raise KeyError(f"no setting {field!r}")
            env[self.variable(field)] = _as_text(value)
        return env


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _resolve_renamed(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(env with old names copied to new ones, {field: old name}); warns for each old name."""
    resolved = dict(env)
    origins: dict[str, str] = {}
    for old, new in RENAMED.items():
        if not env.get(old, "").strip():
            continue
        if env.get(new, "").strip():
            note = f"; {new} is also set and wins"
        else:
            resolved[new] = env[old]
            origins[new[len(PREFIX) :].lower()] = old
            note = ""
        warnings.warn(
            f"{old} is deprecated and will be removed in the next release; use {new}{note}",
            SculptDeprecationWarning,
            stacklevel=3,
        )
    return resolved, origins


def _error_line(error: Mapping[str, Any], origins: Mapping[str, str]) -> str:
    """One pydantic error as ``VAR='text' <what is wrong>``."""
    if not error.get("loc") and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])  # a check across settings names its variables
    field = str(error["loc"][0]) if error.get("loc") else "?"
    var = origins.get(field, Settings.variable(field))
    head = f"{var}={error.get('input')!r}"
    info = Settings.model_fields.get(field)
    bounds = {}
    for meta in info.metadata if info is not None else ():
        for key in ("ge", "le"):
            if getattr(meta, key, None) is not None:
                bounds[key] = getattr(meta, key)
    kind = error.get("type", "")
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return f"{var}: {error['ctx']['error']}"  # a validator's own message quotes the value
    if kind in {"int_parsing", "int_from_float", "int_type"}:
        return f"{head} is not an integer; set a whole number"
    if kind in {"float_parsing", "float_type"}:
        return f"{head} is not a number"
    if kind in {"bool_parsing", "bool_type"}:
        return f"{head} is not a switch; set on or off"
    if kind in {"greater_than_equal", "less_than_equal", "finite_number"}:
        if "ge" in bounds and "le" in bounds:
            return f"{head} must be in [{bounds['ge']:g}, {bounds['le']:g}]"
        if "ge" in bounds:
            return f"{head} must be >= {bounds['ge']:g}"
        if "le" in bounds:
            return f"{head} must be <= {bounds['le']:g}"
    return f"{head}: {error.get('msg', 'invalid')}"


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read and validate every setting from ``env`` (default: ``os.environ``).

    ``overrides`` (field names) win over the environment. An invalid value raises a
    :class:`SettingsError` naming the variable; a deprecated name warns once per name.
    """
    resolved, origins = _resolve_renamed(os.environ if env is None else env)
    token = _ENV.set(resolved)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = [_error_line(e, origins) for e in exc.errors()]
        raise SettingsError("; ".join(lines)) from None
    finally:
        _ENV.reset(token)
    settings._origins.update({k: v for k, v in origins.items() if k not in overrides})
    return settings


def default_settings() -> Settings:
    """The defaults, whatever the environment says (for code that builds its own config)."""
    return load_settings({})


# ---------------------------------------------------------------------------------------------
# Documentation, generated from the definition
# ---------------------------------------------------------------------------------------------


# byte sizes shown with their meaning in the README table
_DEFAULT_NOTES = {"request_max_bytes": "8 MiB", "grpc_response_max_bytes": "4 MiB - 64 KiB"}


def _default_text(field: str) -> str:
    default = Settings.model_fields[field].default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if field in _DEFAULT_NOTES:
        return f"{default} ({_DEFAULT_NOTES[field]})"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, default, description, deprecated names) for every setting, in order."""
    old_names: dict[str, list[str]] = {}
    for old, new in RENAMED.items():
        old_names.setdefault(new, []).append(old)
    out = []
    for field, info in Settings.model_fields.items():
        var = Settings.variable(field)
        old = ", ".join(old_names.get(var, []))
        out.append((var, _default_text(field), info.description or "", old))
    return out


def markdown_table() -> str:
    """The settings as a Markdown table (README.md holds a copy; a test compares them)."""
    lines = [
        "| variable | default | what it sets | replaces (deprecated) |",
        "|---|---|---|---|",
    ]
    for var, default, description, old in rows():
        replaced = f"`{old}`" if old else ""
        lines.append(f"| `{var}` | {default} | {description} | {replaced} |")
    return "\n".join(lines) + "\n"


def help_text() -> str:
    """The settings for ``sculpt serve --help`` (click keeps ``\\b`` paragraphs as they are)."""
    lines = ["\b", "Environment (SCULPT_*; see README.md):"]
    for var, default, _, old in rows():
        alias = f", was {old}" if old else ""
        lines.append(f"  {var:<32} default {default}{alias}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sculptserve.serving.settings",
        description="Print the SCULPT_* settings, or check the environment's.",
    )
    parser.add_argument("--markdown", action="store_true", help="the README's settings table")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for field in Settings.model_fields:
        value = "***" if field == "api_key" and settings.api_key else getattr(settings, field)
        print(f"{settings.source_of(field)}={_as_text(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
