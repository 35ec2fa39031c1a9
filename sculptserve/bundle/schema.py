"""The bundle manifest: the contract between `sculpt export` (writes it) and serving /
`sculpt inspect` (read and verify it). One schema, pydantic models, no torch.

A bundle is a folder:

    manifest.json    this schema
    encoder.onnx     input (B, *input.shape) float32 -> latent mean (B, latent_dim)
    decoder.onnx     latent (B, latent_dim) -> output (B, *input.shape) in model space
    reference.npy    (n, latent_dim) float32 encoder means of held-out data
    prior_bank.npy   only for an empirical prior: its sample bank
    signature.json   only for a signed bundle: :class:`SignatureFile` (sculptserve.bundle.digest)

Every file but manifest.json and signature.json is listed in ``files`` with its sha256. A bundle
folder holds regular files only (no links, no sub-folders); other regular files are ignored
(the BentoML model store adds its model.yaml).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the encoder takes, and how raw data becomes that (the service applies it)."""

    modality: Literal["image", "tabular"]
    shape: list[int] = Field(description="one example, no batch axis: [C, H, W] or [F]")
    dtype: Literal["float32"] = "float32"
    layout: str = Field(description="NCHW for images, NF for tabular")
    color: str | None = Field(default=None, description="L (gray) or RGB for images")
    value_range: list[float] | None = Field(
        default=None, description="range of model inputs after normalization, e.g. [0, 1]"
    )
    normalization: dict[str, Any] = Field(
        description="raw -> model input: (x - shift) / scale, as the dataset's describe() gives"
    )
    columns: list[str] | None = Field(default=None, description="tabular column names, in order")


class OnnxGraph(_Strict):
    file: str
    input_name: str
    output_name: str
    input_shape: list[int | str] = Field(description="with 'batch' for the dynamic axis")
    output_shape: list[int | str]


class OnnxSpec(_Strict):
    opset: int
    precision: Literal["fp32", "fp16"] = "fp32"
    encoder: OnnxGraph
    decoder: OnnxGraph


class ParityReport(_Strict):
    """ONNX Runtime against torch, measured before the bundle was written."""

    tolerance: float
    batch_sizes: list[int]
    encoder_max_abs_error: float
    decoder_max_abs_error: float
    n_heldout_inputs: int


class DriftCalibration(_Strict):
    """Null thresholds for the service's window statistics, from held-out resampling.

    ``n_resamples`` windows of ``window`` held-out embeddings (disjoint from the reference)
    slide over simulated streams, ``every`` rows apart, as the service slides them over
    traffic (sculptserve.stats.drift_windows). ``rule`` says how the thresholds come from them:
    ``combined`` (one null level for both statistics, so that a window fires, on either, on
    ``false_alarm_rate`` of null windows; then lowered until the streams' expected run length
    reaches ``target_expected_run_length``) or ``per_statistic`` (each statistic's own
    1 - false_alarm_rate quantile). Bundles written before these fields existed load with
    ``rule = per_statistic`` and no run-length figures, and are monitored as before.
    """

    window: int
    false_alarm_rate: float = Field(
        description="nominal null fire rate per window (per statistic for per_statistic)"
    )
    n_resamples: int = Field(description="null windows the thresholds come from")
    kernel: str
    bandwidth: float = Field(
        description="fixed kernel base scale (RBF median distance / IMQ sigma2) of the reference"
    )
    reference_rows: int = Field(description="reference rows the window MMD^2 compares against")
    mmd2_threshold: float
    lps_linear_threshold: float
    reference_lps_linear: float
    null_mmd2_mean: float
    null_lps_linear_mean: float
    # Calibration for overlapping windows and the alert rule (absent in older bundles).
    rule: Literal["combined", "per_statistic"] = "per_statistic"
    null_streams: Literal["bootstrap", "pool"] = Field(
        default="pool",
        description="null windows from a bootstrap copy of the pool per stream, or the pool",
    )
    every: int | None = Field(default=None, description="evaluation step calibrated for")
    consecutive: int | None = Field(
        default=None, description="fired windows in a row that raise the alert, calibrated for"
    )
    pool_rows: int | None = Field(default=None, description="held-out rows of the null pool")
    per_statistic_rate: float | None = Field(
        default=None, description="each statistic's null tail probability at its threshold"
    )
    window_fire_rate: float | None = Field(
        default=None, description="null windows that fired at these thresholds"
    )
    alert_rate: float | None = Field(
        default=None, description="null evaluations in the alert state"
    )
    expected_run_length: float | None = Field(
        default=None,
        description="embeddings between false alerts (alert onsets) on the null streams",
    )
    target_expected_run_length: float | None = Field(
        default=None, description="the run length the thresholds were raised to reach, if any"
    )


class ReferenceSpec(_Strict):
    file: str = "reference.npy"
    n: int
    source: str = Field(description="which held-out data the embeddings came from")


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created_at: str = Field(description="ISO 8601, UTC")
    sculptserve_version: str
    input: InputSpec
    latent_dim: int
    prior: dict[str, Any] = Field(description="prior spec (sculptserve.stats.priors JSON form)")
    objective: dict[str, Any]
    training: dict[str, Any] = Field(description="the run's config.json and final step")
    metrics: dict[str, Any] = Field(description="validation metrics of the run at export")
    onnx: OnnxSpec
    parity: ParityReport
    reference: ReferenceSpec
    drift: DriftCalibration
    files: dict[str, str] = Field(description="file name -> sha256 hex, every file but this one")


class SignatureFile(_Strict):
    """signature.json: who vouches for the bundle's digest (see sculptserve.bundle.digest)."""

    algorithm: Literal["ed25519"]
    digest: str = Field(description="the bundle digest signed, sha256:<hex>")
    key_id: str = Field(description="ed25519:<16 hex> of the signing key's public key")
    signature: str = Field(description="base64 of the 64-byte ed25519 signature")
