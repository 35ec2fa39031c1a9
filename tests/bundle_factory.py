"""Build small, valid bundles without torch, for the bundle, CLI and service tests.

The toy model is linear so tests can compute what the service must return:
``z = x.reshape(B, -1) @ W_enc`` and ``x_hat = sigmoid(z @ W_dec).reshape(B, *input_shape)``,
with ``toy_weights`` giving both matrices. ONNX graphs are built with ``onnx.helper``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sculptserve.bundle.load import sha256_file
from sculptserve.bundle.schema import (
    MANIFEST,
    DriftCalibration,
    InputSpec,
    Manifest,
    OnnxGraph,
    OnnxSpec,
    ParityReport,
    ReferenceSpec,
)

OPSET = 17  # well inside what onnxruntime 1.32 runs
IR_VERSION = 8  # the IR version that goes with opset 17; newer onnx defaults are newer than ORT's
N_REFERENCE = 512
N_BANK = 256


def toy_weights(
    input_shape: Sequence[int], latent_dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(W_enc (F, D), W_dec (D, F)) float32 of the toy model, F = prod(input_shape)."""
    features = math.prod(input_shape)
    rng = np.random.default_rng(seed)
    w_enc = rng.normal(0.0, 1.0 / math.sqrt(features), size=(features, latent_dim))
    w_dec = rng.normal(0.0, 1.0 / math.sqrt(latent_dim), size=(latent_dim, features))
    return w_enc.astype(np.float32), w_dec.astype(np.float32)


def toy_encode(x: np.ndarray, w_enc: np.ndarray) -> np.ndarray:
    """What encoder.onnx computes, in numpy."""
    return (x.reshape(x.shape[0], -1).astype(np.float32) @ w_enc).astype(np.float32)


def toy_decode(z: np.ndarray, w_dec: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """What decoder.onnx computes, in numpy."""
    y = 1.0 / (1.0 + np.exp(-(z.astype(np.float32) @ w_dec)))
    return y.reshape(z.shape[0], *input_shape).astype(np.float32)


def _save_model(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="sculptserve-tests",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _encoder_graph(input_shape: Sequence[int], w_enc: np.ndarray) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *input_shape])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", w_enc.shape[1]])
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_enc"], ["z"]),
    ]
    init = [numpy_helper.from_array(w_enc, "w_enc")]
    return helper.make_graph(nodes, "toy_encoder", [x], [z], initializer=init)


def _decoder_graph(input_shape: Sequence[int], w_dec: np.ndarray) -> onnx.GraphProto:
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", w_dec.shape[0]])
    x_hat = helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", *input_shape])
    nodes = [
        helper.make_node("MatMul", ["z", "w_dec"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["flat"]),
        helper.make_node("Reshape", ["flat", "out_shape"], ["x_hat"]),
    ]
    init = [
        numpy_helper.from_array(w_dec, "w_dec"),
        numpy_helper.from_array(np.array([-1, *input_shape], dtype=np.int64), "out_shape"),
    ]
    return helper.make_graph(nodes, "toy_decoder", [z], [x_hat], initializer=init)


def _input_spec(input_shape: Sequence[int]) -> InputSpec:
    shape = list(input_shape)
    norm = {"shift": 0.0, "scale": 1.0}
    if len(shape) == 3:
        color = {1: "L", 3: "RGB"}.get(shape[0])
        return InputSpec(
            modality="image",
            shape=shape,
            layout="NCHW",
            color=color,
            value_range=[0.0, 1.0],
            normalization={**norm, "raw_range": [0, 255]},
        )
    if len(shape) == 1:
        return InputSpec(
            modality="tabular",
            shape=shape,
            layout="NF",
            normalization={"shift": [0.0] * shape[0], "scale": [1.0] * shape[0]},
            columns=[f"f{i}" for i in range(shape[0])],
        )
    raise ValueError(f"input_shape must be (C, H, W) or (F,), got {tuple(shape)}")


def make_bundle(
    folder: Path,
    *,
    latent_dim: int = 3,
    input_shape: Sequence[int] = (1, 4, 4),
    name: str = "toy",
    prior: dict[str, Any] | None = None,
    version: str = "v1",
    seed: int = 0,
) -> Path:
    """Write a valid bundle into ``folder`` and return it.

    ``input_shape`` (C, H, W) makes an image model, (F,) a tabular one. An empirical ``prior``
    with a relative path gets a random bank written there (unless the file already exists),
    and the bank is listed in files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(int(d) for d in input_shape)
    prior = dict(prior) if prior is not None else {"kind": "gaussian", "dim": latent_dim}
    rng = np.random.default_rng(seed + 1)

    w_enc, w_dec = toy_weights(input_shape, latent_dim, seed)
    _save_model(_encoder_graph(input_shape, w_enc), folder / "encoder.onnx")
    _save_model(_decoder_graph(input_shape, w_dec), folder / "decoder.onnx")
    reference = rng.normal(size=(N_REFERENCE, latent_dim)).astype(np.float32)
    np.save(folder / "reference.npy", reference)
    files = ["encoder.onnx", "decoder.onnx", "reference.npy"]
    if prior.get("kind") == "empirical":
        bank = folder / prior["path"]
        if not bank.exists():
            np.save(bank, rng.normal(size=(N_BANK, latent_dim)).astype(np.float32))
        files.append(prior["path"])

    manifest = Manifest(
        name=name,
        version=version,
        created_at="2025-01-01T00:00:00Z",
        sculptserve_version="0.1.0",
        input=_input_spec(input_shape),
        latent_dim=latent_dim,
        prior=prior,
        objective={"name": "mmd", "kernel": "rbf", "lambda": 0.3},
        training={"config": {"objective": "mmd", "latent_dim": latent_dim}, "step": 300},
        metrics={"nmse_db": -12.5, "mmd2": 0.004, "lps_linear": 0.02, "val": {"loss": 0.1}},
        onnx=OnnxSpec(
            opset=OPSET,
            precision="fp32",
            encoder=OnnxGraph(
                file="encoder.onnx",
                input_name="x",
                output_name="z",
                input_shape=["batch", *input_shape],
                output_shape=["batch", latent_dim],
            ),
            decoder=OnnxGraph(
                file="decoder.onnx",
                input_name="z",
                output_name="x_hat",
                input_shape=["batch", latent_dim],
                output_shape=["batch", *input_shape],
            ),
        ),
        parity=ParityReport(
            tolerance=1e-4,
            batch_sizes=[1, 2, 7, 64],
            encoder_max_abs_error=3e-7,
            decoder_max_abs_error=2e-7,
            n_heldout_inputs=256,
        ),
        reference=ReferenceSpec(file="reference.npy", n=N_REFERENCE, source="toy: random normal"),
        drift=DriftCalibration(
            window=128,
            false_alarm_rate=0.01,
            n_resamples=200,
            kernel="rbf",
            bandwidth=1.5,
            reference_rows=N_REFERENCE,
            mmd2_threshold=0.03,
            lps_linear_threshold=0.1,
            reference_lps_linear=0.02,
            null_mmd2_mean=0.005,
            null_lps_linear_mean=0.03,
        ),
        files={f: sha256_file(folder / f) for f in files},
    )
    write_manifest(folder, manifest.model_dump(mode="json"))
    return folder


# --- helpers for tests that damage a bundle on purpose -----------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The bundle's manifest.json as a plain dict."""
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    """Write a manifest dict as manifest.json (no validation: tests write broken ones)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    (Path(folder) / MANIFEST).write_text(text, encoding="utf-8")


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the manifest dict in place and write it back."""
    data = read_manifest(folder)
    change(data)
    write_manifest(folder, data)


def rehash(folder: Path) -> None:
    """Recompute the sha256 of every listed file, so only the other checks can catch a change."""
    folder = Path(folder)

    def update(data: dict[str, Any]) -> None:
        data["files"] = {name: sha256_file(folder / name) for name in data["files"]}

    edit_manifest(folder, update)


def use_normalizing_decoder(folder: Path, seed: int = 0) -> Path:
    """Swap the bundle's decoder for one that layer-normalizes ``z @ (4 W_dec)`` before the
    sigmoid, as trained decoders normalize (GroupNorm): like them, it gives NaN once a huge
    latent overflows float32 (inf - inf), where the plain toy decoder saturates to 0 or 1.
    (The factor 4 makes every latent of about -3e38 overflow the product.)"""
    folder = Path(folder)
    manifest = read_manifest(folder)
    input_shape = manifest["input"]["shape"]
    latent_dim = int(manifest["latent_dim"])
    features = math.prod(input_shape)
    w_dec = 4 * toy_weights(input_shape, latent_dim, seed)[1]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", latent_dim])
    x_hat = helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", *input_shape])
    nodes = [
        helper.make_node("MatMul", ["z", "w_dec"], ["logits"]),
        helper.make_node("LayerNormalization", ["logits", "gamma", "beta"], ["normed"], axis=-1),
        helper.make_node("Sigmoid", ["normed"], ["flat"]),
        helper.make_node("Reshape", ["flat", "out_shape"], ["x_hat"]),
    ]
    init = [
        numpy_helper.from_array(w_dec, "w_dec"),
        numpy_helper.from_array(np.ones(features, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(features, np.float32), "beta"),
        numpy_helper.from_array(np.array([-1, *input_shape], dtype=np.int64), "out_shape"),
    ]
    graph = helper.make_graph(nodes, "toy_normalizing_decoder", [z], [x_hat], initializer=init)
    _save_model(graph, folder / "decoder.onnx")
    rehash(folder)
    return folder
