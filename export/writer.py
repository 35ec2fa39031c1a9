"""`sculpt export`: a finished run dir -> a verified bundle folder (and the BentoML store).

Order of work, so that nothing half-done is ever left under the bundle's name:
1. load the run (config, data description, weights) and encode held-out data with torch;
2. in a temporary folder beside the target (export/staging.py: it also removes the ones a
   killed export left): export encoder and decoder to ONNX, check parity with ONNX Runtime
   (real held-out inputs and batches 1, 2, 7, 64), write reference.npy, calibrate the drift
   thresholds, write manifest.json with every file's sha256, and with a signing key
   signature.json over the bundle digest (sculptserve.bundle.digest);
3. re-load the temporary bundle through the serving-side loader (hashes, ONNX shapes, digest,
   signature);
4. rename the folder into place; optionally import it into the BentoML model store.
Any failure before step 4 removes the temporary folder and leaves the target untouched.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sculptserve import __version__
from sculptserve.bundle.digest import load_private_key, manifest_digest, sign_digest
from sculptserve.bundle.load import load_bundle, sha256_file
from sculptserve.bundle.schema import (
    MANIFEST,
    SIGNATURE,
    DriftCalibration,
    InputSpec,
    Manifest,
    OnnxGraph,
    OnnxSpec,
    ParityReport,
    ReferenceSpec,
)
from sculptserve.export.onnx_export import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    convert_fp16,
    export_module,
    parity_check,
)
from sculptserve.export.staging import staging_folder
from sculptserve.files import save_npy
from sculptserve.stats.drift_windows import calibrate_drift
from sculptserve.stats.priors import parse_prior
from sculptserve.training.checkpoint import load_trained_model
from sculptserve.training.config import TrainConfig
from sculptserve.training.data import dataset_from_description
from sculptserve.training.trainer import encode_decode, make_objective

PARITY_BATCHES = (1, 2, 7, 64)
# fp32 graphs must match torch to 1e-4 (the bar); fp16 graphs round activations to
# 11 significant bits, so they get their own, measured tolerance (see export/onnx_export.py).
TOLERANCE = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE}


class ExportInputError(ValueError):
    """The run dir or an option cannot be exported; the message says what to fix."""


@dataclass(frozen=True)
class ExportOptions:
    name: str | None = None
    opset: int = 18
    precision: str = "fp32"
    n_reference: int = 2048
    window: int = 256
    # Drift calibration (sculptserve.stats.drift_windows.calibrate_drift): per-window null
    # fire rate, both statistics together; the alert budget as an expected run length
    # (embeddings between false alerts; None: no target) for the service's default rule
    # (every = window // 2, alert after `consecutive` fired windows); null windows simulated.
    false_alarm_rate: float = 0.01
    expected_run_length: float | None = 100_000
    consecutive: int = 2
    n_resamples: int = 16_384
    pool_rows: int | None = None  # held-out rows of the null pool; None: 64 windows
    seed: int = 0
    signing_key: str | None = None  # ed25519 private key PEM: sign the bundle's digest


def calibration_pool_rows(options: ExportOptions) -> int:
    """Held-out rows wanted for the drift calibration pool (beyond the reference).

    Every null window drawn from one pool shares the pool's deviation from the population,
    which shifts the null by about window / pool of a window's own spread (measured on a
    trained model: benchmarks/RESULTS.md, drift false alarms), so the pool holds 64 windows
    unless told otherwise.
    """
    return options.pool_rows if options.pool_rows is not None else 64 * options.window


def heldout_rows(n_heldout: int, options: ExportOptions) -> np.ndarray:
    """Positions (sorted) in the held-out split that export encodes: the reference and the
    calibration pool. Benchmarks use it to find the rows an export did *not* see."""
    wanted = options.n_reference + calibration_pool_rows(options)
    return np.sort(np.random.default_rng(options.seed).permutation(n_heldout)[:wanted])


def bundle_name(run_dir: Path, requested: str | None) -> str:
    """A BentoML-safe lowercase name: the requested one or the run dir's."""
    raw = requested if requested is not None else run_dir.resolve().name
    name = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    if not name:
        raise ExportInputError(f"cannot make a bundle name from '{raw}'; pass --name")
    return name


def read_json(path: Path) -> dict:
    if not path.exists():
        raise ExportInputError(f"{path.parent} is not a finished run: {path.name} is missing")
    return json.loads(path.read_text())


def export_run(run_dir: str | Path, out_dir: str | Path, options: ExportOptions) -> Path:
    """Export a finished run into a new bundle folder ``out_dir``; return its path."""
    run, out = Path(run_dir), Path(out_dir)
    if not run.is_dir():
        raise ExportInputError(f"no such run dir: {run}")
    if out.exists():
        raise ExportInputError(
            f"{out} already exists; choose another --out (bundles are immutable)"
        )
    if options.precision not in TOLERANCE:
        raise ExportInputError(f"--precision must be one of {', '.join(TOLERANCE)}")
    # read now: a bad key file must fail before minutes of work, not after
    signing_key = load_private_key(options.signing_key) if options.signing_key else None
    config = TrainConfig.from_dict(read_json(run / "config.json"))
    data_description = read_json(run / "data.json")
    summary = read_json(run / "summary.json")
    model = load_trained_model(run)
    objective = make_objective(config)
    prior = parse_prior(config.prior, dim=config.latent_dim)

    held_out = dataset_from_description(data_description, split="val")
    rows = heldout_rows(len(held_out), options)
    inputs, means, _ = encode_decode(model, held_out, rows, torch.device("cpu"))
    # The reference gets its full size when the held-out data allows (at most half of it);
    # the calibration pool gets the rest.
    n_reference = min(options.n_reference, len(means) // 2)
    order = np.random.default_rng(options.seed + 1).permutation(len(means))
    reference, pool = means[order[:n_reference]], means[order[n_reference:]]
    if len(pool) < options.window:
        raise ExportInputError(
            f"only {len(means)} held-out rows: too few for a reference plus drift calibration "
            f"windows of {options.window}; pass a smaller --window"
        )

    with staging_folder(out) as tmp:
        graphs, parity = write_onnx(model, tmp, inputs, means, options)
        save_npy(tmp / "reference.npy", reference.astype(np.float32))
        try:
            drift = calibrate_drift(
                pool,
                reference,
                window=options.window,
                consecutive=options.consecutive,
                false_alarm_rate=options.false_alarm_rate,
                expected_run_length=options.expected_run_length,
                n_resamples=options.n_resamples,
                kernel=config.kernel,
                seed=options.seed,
            )
        except ValueError as exc:  # e.g. a run-length target beyond what the null can show
            raise ExportInputError(f"drift calibration: {exc}") from None
        prior_spec = bundle_prior(prior.to_dict(), tmp)
        manifest = Manifest(
            name=bundle_name(run, options.name),
            version=bundle_version(tmp / "encoder.onnx"),
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            sculptserve_version=__version__,
            input=input_spec(data_description),
            latent_dim=config.latent_dim,
            prior=prior_spec,
            objective=objective.to_dict(),
            training={"config": config.to_dict(), "step": summary.get("step")},
            metrics=summary.get("val", {}),
            onnx=OnnxSpec(opset=options.opset, precision=options.precision, **graphs),
            parity=parity,
            reference=ReferenceSpec(n=len(reference), source=f"{config.data} (val split)"),
            drift=DriftCalibration(**drift.to_dict()),
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        )
        manifest_text = manifest.model_dump_json(indent=2) + "\n"
        (tmp / MANIFEST).write_text(manifest_text)
        digest = manifest_digest(json.loads(manifest_text))
        if signing_key is not None:
            signature = sign_digest(signing_key, digest)
            (tmp / SIGNATURE).write_text(signature.model_dump_json(indent=2) + "\n")
        # the serving-side checks, before the bundle gets its name
        load_bundle(
            tmp,
            expect_digest=digest,
            verify_key=signing_key.public_key() if signing_key is not None else None,
        )
        tmp.rename(out)
    return out


def write_onnx(
    model: torch.nn.Module,
    folder: Path,
    inputs: np.ndarray,
    means: np.ndarray,
    options: ExportOptions,
) -> tuple[dict[str, OnnxGraph], ParityReport]:
    """encoder.onnx and decoder.onnx in ``folder``, each checked against torch."""
    x = torch.as_tensor(inputs)
    z = torch.as_tensor(means)
    parts = {
        "encoder": (model.encoder, x, "x", "z"),
        "decoder": (model.decoder, z, "z", "x_hat"),
    }
    graphs, errors = {}, {}
    tolerance = TOLERANCE[options.precision]
    for part, (module, data, input_name, output_name) in parts.items():
        path = folder / f"{part}.onnx"
        export_module(
            module,
            data[:2],
            path,
            input_name=input_name,
            output_name=output_name,
            opset=options.opset,
        )
        if options.precision == "fp16":
            convert_fp16(path, path)
        result = parity_check(
            module, path, data[:512], batch_sizes=PARITY_BATCHES, tolerance=tolerance
        )
        errors[part] = result.max_abs_error
        with torch.no_grad():
            out_shape = list(module(data[:1]).shape[1:])
        graphs[part] = OnnxGraph(
            file=path.name,
            input_name=input_name,
            output_name=output_name,
            input_shape=["batch", *data.shape[1:]],
            output_shape=["batch", *out_shape],
        )
    parity = ParityReport(
        tolerance=tolerance,
        batch_sizes=list(PARITY_BATCHES),
        encoder_max_abs_error=errors["encoder"],
        decoder_max_abs_error=errors["decoder"],
        n_heldout_inputs=min(len(inputs), 512),
    )
    return graphs, parity


def input_spec(description: dict) -> InputSpec:
    return InputSpec(
        modality=description["modality"],
        shape=list(description["input_shape"]),
        layout=description.get("layout", "NCHW" if description["modality"] == "image" else "NF"),
        color=description.get("color"),
        value_range=description.get("value_range"),
        normalization=description["normalization"],
        columns=description.get("columns"),
    )


def bundle_prior(spec: dict, folder: Path) -> dict:
    """Copy an empirical prior's sample bank into the bundle and point the spec at it."""
    if spec.get("kind") == "empirical":
        shutil.copyfile(spec["path"], folder / "prior_bank.npy")
        return {**spec, "path": "prior_bank.npy"}
    if spec.get("kind") == "hybrid" and any(
        c.get("kind") == "empirical" for c in spec["components"]
    ):
        raise ExportInputError("exporting a hybrid prior with an empirical block is not supported")
    return spec


def bundle_version(encoder: Path) -> str:
    """Time-ordered and content-derived: v20261124-093000-<8 hex of the encoder's sha256>."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return f"v{stamp}-{sha256_file(encoder)[:8]}"


def import_to_bentoml(bundle_dir: Path) -> str:
    """Copy a bundle into the BentoML model store as sculpt-NAME:VERSION; return the tag.

    The bundle is verified first (ONNX graphs aside) and only its own files are copied; the
    model's labels record its digest (``bundle_digest``, what SCULPT_BUNDLE_DIGEST pins) and,
    if signed, the signing key's id (``bundle_key_id``).
    """
    import bentoml

    bundle = load_bundle(bundle_dir, check_onnx=False)
    manifest = bundle.manifest
    labels = {"framework": "onnx", "project": "sculptserve", "bundle_digest": bundle.digest}
    if bundle.signature is not None:
        labels["bundle_key_id"] = bundle.signature.key_id
    tag = f"sculpt-{manifest.name}:{manifest.version}"
    with bentoml.models.create(
        tag,
        labels=labels,
        metadata={"latent_dim": manifest.latent_dim, "objective": manifest.objective["name"]},
    ) as stored:
        for name in bundle.contents():
            shutil.copy2(bundle.path / name, Path(stored.path) / name)
    return tag
