"""`sculpt export` / `sculpt inspect` on real (tiny) trained runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cli_subprocess import run_cli
from click.testing import CliRunner

from sculptserve.bundle.load import BundleError, load_bundle
from sculptserve.cli import cli
from sculptserve.export import writer
from sculptserve.export.writer import ExportOptions, export_run
from sculptserve.training.config import TrainConfig
from sculptserve.training.data import load_dataset
from sculptserve.training.trainer import train

# The default drift calibration at a small size: 2,048 null windows show a 20,000 ERL.
FAST = ExportOptions(n_reference=256, window=64, n_resamples=2048, expected_run_length=20_000)


@pytest.fixture(scope="module")
def shapes_run(tiny_shapes_run) -> Path:
    return tiny_shapes_run


@pytest.fixture(scope="module")
def shapes_bundle(shapes_run, tmp_path_factory) -> Path:
    return export_run(shapes_run, tmp_path_factory.mktemp("bundles") / "b", FAST)


def test_bundle_contents_and_manifest(shapes_bundle, shapes_run):
    names = {p.name for p in shapes_bundle.iterdir()}
    assert names == {"manifest.json", "encoder.onnx", "decoder.onnx", "reference.npy"}
    manifest = json.loads((shapes_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["name"] == "shapes-run"
    assert manifest["latent_dim"] == 4
    assert manifest["input"]["shape"] == [1, 64, 64]
    assert manifest["prior"]["kind"] == "gaussian"
    assert manifest["objective"]["name"] == "mmd"
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["parity"]["encoder_max_abs_error"] <= 1e-4
    assert manifest["parity"]["decoder_max_abs_error"] <= 1e-4
    assert manifest["parity"]["batch_sizes"] == [1, 2, 7, 64]
    drift = manifest["drift"]
    assert drift["window"] == 64 and drift["mmd2_threshold"] > drift["null_mmd2_mean"]
    # calibrated for the service's default rule on overlapping windows, with an ERL target
    assert (drift["rule"], drift["null_streams"]) == ("combined", "bootstrap")
    assert (drift["every"], drift["consecutive"], drift["pool_rows"]) == (32, 2, 64 * 64)
    assert drift["target_expected_run_length"] == 20_000
    assert drift["expected_run_length"] >= 20_000
    assert 0 < drift["window_fire_rate"] <= 0.01 + 1e-9
    assert manifest["metrics"] == json.loads((shapes_run / "summary.json").read_text())["val"]
    bundle = load_bundle(shapes_bundle)
    assert bundle.reference().shape == (256, 4)


def test_onnx_encoder_reproduces_the_runs_latents(shapes_bundle, shapes_run):
    """Independent of the export's own parity check: ORT on held-out images vs torch."""
    val = load_dataset("shapes", split="val")
    x = val.get_batch(np.arange(16))
    session = ort.InferenceSession(
        str(shapes_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    z = session.run(None, {"x": x})[0]
    expected = np.load(shapes_run / "val_latents.npy")[:16]
    np.testing.assert_allclose(z, expected, atol=1e-4)


def test_reference_gets_its_requested_size(shapes_run, tmp_path):
    options = ExportOptions(n_reference=1500, window=64, n_resamples=20, expected_run_length=None)
    bundle = load_bundle(export_run(shapes_run, tmp_path / "b", options))
    assert bundle.manifest.reference.n == 1500
    assert bundle.reference().shape == (1500, 4)


def test_fp16_bundle(shapes_run, tmp_path):
    options = ExportOptions(
        precision="fp16", n_reference=256, window=64, n_resamples=20, expected_run_length=None
    )
    bundle = load_bundle(export_run(shapes_run, tmp_path / "b16", options))
    assert bundle.manifest.onnx.precision == "fp16"
    assert bundle.manifest.parity.tolerance == writer.TOLERANCE["fp16"]
    assert 0 < bundle.manifest.parity.encoder_max_abs_error <= writer.TOLERANCE["fp16"]
    session = ort.InferenceSession(
        str(bundle.file("encoder.onnx")), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].type == "tensor(float)"


def test_tampered_byte_is_caught_by_name(shapes_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shapes_bundle, copy)
    data = bytearray((copy / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder\.onnx"):
        load_bundle(copy)
    result = run_cli("inspect", copy)
    assert result.returncode == 1 and "encoder.onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_failed_parity_leaves_nothing_behind(shapes_run, tmp_path, monkeypatch):
    monkeypatch.setitem(writer.TOLERANCE, "fp32", 0.0)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="tolerance"):
        export_run(shapes_run, out, FAST)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_readable_line(shapes_run, shapes_bundle, tmp_path):
    missing = run_cli("export", tmp_path / "no-run", "--out", tmp_path / "b")
    assert missing.returncode == 1 and "no such run dir" in missing.stderr
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((shapes_run / "config.json").read_text())
    result = run_cli("export", unfinished, "--out", tmp_path / "b")
    assert result.returncode == 1 and "is missing" in result.stderr
    exists = run_cli("export", shapes_run, "--out", shapes_bundle)
    assert exists.returncode == 1 and "already exists" in exists.stderr
    for r in (missing, result, exists):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bentoml_import_and_inspect_by_tag(shapes_run, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "1"}
    done = run_cli(
        "export",
        shapes_run,
        "--out",
        tmp_path / "b",
        "--name",
        "toy",
        "--reference-size",
        256,
        "--window",
        64,
        "--bentoml",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip().splitlines()[-1].split()[-1]
    assert tag.startswith("sculpt-toy:v")
    got = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "get", tag],
        capture_output=True,
        text=True,
        env=env,
    )
    assert got.returncode == 0, got.stderr
    inspected = run_cli("inspect", "sculpt-toy", "--json", env=env)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["name"] == "toy"


def test_tabular_run_exports(tmp_path):
    rng = np.random.default_rng(0)
    table = tmp_path / "t.npy"
    np.save(table, (rng.normal(size=(3000, 2)) @ rng.normal(size=(2, 5))).astype(np.float32))
    run = tmp_path / "run"
    train(
        TrainConfig(
            out=str(run),
            data=str(table),
            latent_dim=2,
            batch_size=100,
            max_steps=20,
            width=8,
            report=False,
        ),
        progress=False,
    )
    bundle = export_run(
        run,
        tmp_path / "bundle",
        ExportOptions(n_reference=64, window=32, n_resamples=20, expected_run_length=None),
    )
    manifest = load_bundle(bundle).manifest
    assert manifest.input.modality == "tabular" and manifest.input.shape == [5]
    assert manifest.input.normalization["shift"] is not None


def test_inspect_json_summary_of_cli(shapes_bundle):
    result = CliRunner().invoke(cli, ["inspect", str(shapes_bundle), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["verified"] is True and summary["latent_dim"] == 4
    # the alert budget the drift thresholds were calibrated for
    drift = summary["drift"]
    assert drift["expected_run_length"] >= drift["target_expected_run_length"] == 20_000
    assert (drift["every"], drift["consecutive"]) == (32, 2)
