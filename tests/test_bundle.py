"""Loading and verifying bundles without torch: every broken bundle names the broken file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import edit_manifest, make_bundle, read_manifest, rehash

from sculptserve.bundle.load import (
    Bundle,
    BundleError,
    load_bundle,
    sha256_file,
    summarize,
    verify_files,
)
from sculptserve.bundle.schema import MANIFEST

SUMMARY_KEYS = {
    "name",
    "version",
    "created_at",
    "input",
    "latent_dim",
    "prior",
    "objective",
    "metrics",
    "onnx",
    "parity",
    "drift",
    "reference",
    "files",
    "verified",
}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _error(source: Path | str, **kwargs) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(source, **kwargs)
    return str(info.value)


# --- a valid bundle --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_shape", "modality"), [((1, 4, 4), "image"), ((3, 8, 8), "image"), ((7,), "tabular")]
)
def test_factory_bundle_loads_and_summarizes(tmp_path, input_shape, modality):
    folder = make_bundle(tmp_path / "b", latent_dim=5, input_shape=input_shape, name="demo")
    bundle = load_bundle(folder)
    assert isinstance(bundle, Bundle)
    assert bundle.path == folder.resolve()
    assert bundle.manifest.latent_dim == 5

    summary = summarize(bundle)
    assert set(summary) >= SUMMARY_KEYS
    json.dumps(summary, allow_nan=False)  # JSON-able as /info returns it
    assert summary["name"] == "demo"
    assert summary["verified"] is True
    assert summary["input"]["modality"] == modality
    assert summary["input"]["shape"] == list(input_shape)
    assert summary["objective"] == {"name": "mmd", "params": {"kernel": "rbf", "lambda": 0.3}}
    assert summary["metrics"] == {"nmse_db": -12.5, "mmd2": 0.004, "lps_linear": 0.02}
    assert summary["onnx"] == {"opset": 17, "precision": "fp32"}
    assert summary["drift"]["mmd2_threshold"] == pytest.approx(0.03)
    assert summary["parity"]["encoder_max_abs_error"] == pytest.approx(3e-7)
    assert summary["reference"]["n"] == 512
    assert set(summary["files"]) == {"encoder.onnx", "decoder.onnx", "reference.npy"}
    size = (folder / "reference.npy").stat().st_size
    assert summary["files"]["reference.npy"] == {
        "size": size,
        "sha256": sha256_file(folder / "reference.npy"),
    }


def test_prior_and_reference(bundle_dir):
    bundle = load_bundle(bundle_dir)
    samples = bundle.prior().sample(20_000, np.random.default_rng(0))
    assert samples.shape == (20_000, 3)
    # the factory's prior is a standard gaussian: 20k samples pin mean and std to ~0.01
    np.testing.assert_allclose(samples.mean(axis=0), 0.0, atol=0.04)
    np.testing.assert_allclose(samples.std(axis=0), 1.0, atol=0.04)

    reference = bundle.reference()
    assert reference.shape == (512, 3)
    assert reference.dtype == np.float32
    np.testing.assert_array_equal(reference, np.load(bundle_dir / "reference.npy"))


def test_file_lookup(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.file("encoder.onnx") == bundle.path / "encoder.onnx"
    assert bundle.file(MANIFEST) == bundle.path / MANIFEST
    with pytest.raises(BundleError, match=r"weights\.bin is not a file of bundle"):
        bundle.file("weights.bin")


def test_verify_files_is_empty_for_a_good_bundle_and_lists_every_problem(bundle_dir):
    manifest = load_bundle(bundle_dir).manifest
    assert verify_files(bundle_dir, manifest) == []
    _flip_one_byte(bundle_dir / "encoder.onnx")
    (bundle_dir / "decoder.onnx").unlink()
    problems = verify_files(bundle_dir, manifest)
    assert len(problems) == 2
    assert any("encoder.onnx" in p and "sha256 mismatch" in p for p in problems)
    assert any("decoder.onnx is missing" in p for p in problems)


# --- damaged files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["encoder.onnx", "reference.npy"])
def test_one_tampered_byte_fails_with_the_file_name(bundle_dir, name):
    _flip_one_byte(bundle_dir / name)
    message = _error(bundle_dir)
    assert name in message
    assert "sha256 mismatch" in message
    assert "re-export" in message


def test_missing_decoder(bundle_dir):
    (bundle_dir / "decoder.onnx").unlink()
    message = _error(bundle_dir)
    assert "decoder.onnx is missing from" in message
    assert str(bundle_dir.resolve()) in message


def test_garbage_onnx_with_a_matching_hash_names_the_file(bundle_dir):
    (bundle_dir / "decoder.onnx").write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    rehash(bundle_dir)
    message = _error(bundle_dir)
    assert "decoder.onnx" in message
    assert "cannot load it" in message
    # the hashes alone pass, so only the ONNX check can have caught it
    load_bundle(bundle_dir, check_onnx=False)


def test_reference_with_the_wrong_row_count(bundle_dir):
    np.save(bundle_dir / "reference.npy", np.zeros((100, 3), dtype=np.float32))
    rehash(bundle_dir)
    message = _error(bundle_dir)
    assert "reference.npy" in message
    assert "[100, 3]" in message and "[512, 3]" in message


def test_reference_with_nan(bundle_dir):
    ref = np.load(bundle_dir / "reference.npy")
    ref[5, 1] = np.nan
    np.save(bundle_dir / "reference.npy", ref)
    rehash(bundle_dir)
    assert "reference.npy: holds NaN or inf" in _error(bundle_dir)


# --- damaged manifests ---------------------------------------------------------------------


def test_missing_manifest(bundle_dir):
    (bundle_dir / MANIFEST).unlink()
    message = _error(bundle_dir)
    assert "manifest.json is missing from" in message
    assert "sculpt export" in message


def test_manifest_with_invalid_json(bundle_dir):
    text = (bundle_dir / MANIFEST).read_text()
    (bundle_dir / MANIFEST).write_text(text[: len(text) // 2])
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert "not valid JSON" in message


def test_unsupported_schema_version(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.update(schema_version=99))
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert "schema version 99 is not supported" in message
    assert "expects 1" in message


def test_manifest_without_schema_version(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.pop("schema_version"))
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert "no schema_version" in message


@pytest.mark.parametrize(
    ("remove", "field"),
    [
        (lambda m: m.pop("latent_dim"), "'latent_dim'"),
        (lambda m: m["input"].pop("layout"), "'input.layout'"),
        (lambda m: m["drift"].pop("mmd2_threshold"), "'drift.mmd2_threshold'"),
    ],
)
def test_manifest_missing_a_field_names_it(bundle_dir, remove, field):
    edit_manifest(bundle_dir, remove)
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert f"missing field {field}" in message


def test_manifest_field_of_the_wrong_type_names_it(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.update(latent_dim="three"))
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert "field 'latent_dim'" in message
    assert "'three'" in message


def test_onnx_file_not_listed_in_files(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].pop("encoder.onnx"))
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert "onnx.encoder.file 'encoder.onnx' is not listed in files" in message


def test_files_outside_the_bundle_are_refused(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].update({"../secret": "00" * 32}))
    message = _error(bundle_dir)
    assert "manifest.json" in message
    assert "'../secret'" in message


# --- the graphs against the manifest ----------------------------------------------------------


def test_manifest_latent_dim_that_the_graphs_do_not_have(bundle_dir):
    # a self-consistent manifest (latent 4 everywhere) describing latent-3 graphs
    def to_latent_4(m):
        m["latent_dim"] = 4
        m["prior"]["dim"] = 4
        m["onnx"]["encoder"]["output_shape"] = ["batch", 4]
        m["onnx"]["decoder"]["input_shape"] = ["batch", 4]

    edit_manifest(bundle_dir, to_latent_4)
    message = _error(bundle_dir)
    assert "encoder.onnx" in message
    assert "output 'z' has shape [batch, 3]" in message
    assert "expects [batch, 4]" in message


def test_only_latent_dim_changed_is_still_caught_at_the_graph(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.update(latent_dim=4))
    message = _error(bundle_dir)
    assert "encoder.onnx" in message
    assert "[batch, 3]" in message and "[batch, 4]" in message
    # without opening the graphs the manifest's own shapes disagree with latent_dim
    message = _error(bundle_dir, check_onnx=False)
    assert "manifest.json" in message
    assert "onnx.encoder.output_shape [batch, 3] does not match latent_dim 4" in message


def test_encoder_from_another_model_with_matching_hash(tmp_path, bundle_dir):
    other = make_bundle(tmp_path / "other", latent_dim=4)
    shutil.copyfile(other / "encoder.onnx", bundle_dir / "encoder.onnx")
    rehash(bundle_dir)
    message = _error(bundle_dir)
    assert "encoder.onnx" in message
    assert "[batch, 4]" in message and "[batch, 3]" in message


def test_encoder_for_another_input_shape(tmp_path, bundle_dir):
    other = make_bundle(tmp_path / "other", input_shape=(1, 8, 8))
    shutil.copyfile(other / "encoder.onnx", bundle_dir / "encoder.onnx")
    rehash(bundle_dir)
    message = _error(bundle_dir)
    assert "encoder.onnx" in message
    assert "input 'x' has shape [batch, 1, 8, 8]" in message
    assert "[batch, 1, 4, 4]" in message


def test_wrong_input_name(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["onnx"]["decoder"].update(input_name="latent"))
    message = _error(bundle_dir)
    assert "decoder.onnx" in message
    assert "inputs are ['z']" in message and "'latent'" in message


def test_graph_with_a_fixed_batch_axis(tmp_path, bundle_dir):
    import onnx  # the test builds a graph; the loader itself never needs onnx

    model = onnx.load(str(bundle_dir / "encoder.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(bundle_dir / "encoder.onnx"))
    rehash(bundle_dir)
    message = _error(bundle_dir)
    assert "encoder.onnx" in message
    assert "axis 0 is fixed to 1 but must be dynamic" in message


# --- priors ----------------------------------------------------------------------------------


def test_empirical_prior_is_read_from_the_bundle_from_any_directory(tmp_path, monkeypatch):
    spec = {"kind": "empirical", "path": "prior_bank.npy"}
    folder = make_bundle(tmp_path / "bundle", prior=spec)
    assert "prior_bank.npy" in read_manifest(folder)["files"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    bundle = load_bundle(folder)
    bank = np.load(folder / "prior_bank.npy").astype(np.float64)
    samples = bundle.prior().sample(50, np.random.default_rng(1))
    assert samples.shape == (50, 3)
    # an empirical prior draws rows of its bank
    matches = (samples[:, None, :] == bank[None, :, :]).all(axis=2).any(axis=1)
    assert matches.all()
    assert bundle.manifest.prior["path"] == "prior_bank.npy"  # the manifest stays relative


def test_empirical_prior_bank_is_hashed(tmp_path):
    folder = make_bundle(tmp_path / "bundle", prior={"kind": "empirical", "path": "prior_bank.npy"})
    _flip_one_byte(folder / "prior_bank.npy")
    message = _error(folder)
    assert "prior_bank.npy" in message and "sha256 mismatch" in message


def test_empirical_prior_bank_must_be_listed(tmp_path):
    folder = make_bundle(tmp_path / "bundle", prior={"kind": "empirical", "path": "prior_bank.npy"})
    edit_manifest(folder, lambda m: m["files"].pop("prior_bank.npy"))
    message = _error(folder)
    assert "manifest.json" in message
    assert "bank 'prior_bank.npy' is not listed in files" in message


def test_invalid_prior_spec(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m.update(prior={"kind": "cauchy"}))
    message = _error(bundle_dir)
    assert "manifest.json: prior:" in message
    assert "unknown prior kind 'cauchy'" in message


# --- sources -----------------------------------------------------------------------------------


def test_no_such_folder_or_tag(tmp_path):
    message = _error(tmp_path / "nowhere")
    assert "no such bundle folder or BentoML tag" in message
    assert "nowhere" in message


def test_a_missing_path_that_starts_like_a_tag_is_still_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # should this ever reach BentoML, keep it off the user's model store
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    message = _error("sculpt-bundles/toy")
    assert "no such bundle folder or BentoML tag: 'sculpt-bundles/toy'" in message


def test_a_file_is_not_a_bundle(bundle_dir):
    message = _error(bundle_dir / MANIFEST)
    assert "is a file, not a bundle folder" in message


_BENTOML_SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path

    import bentoml

    from sculptserve.bundle.load import BundleError, load_bundle

    for version, folder in (("v1", sys.argv[1]), ("v2", sys.argv[2])):
        with bentoml.models.create(f"sculpt-toy:{version}") as model:
            for item in Path(folder).iterdir():
                shutil.copy2(item, Path(model.path) / item.name)

    out = {
        "pinned": load_bundle("sculpt-toy:v1").manifest.version,
        "latest": load_bundle("sculpt-toy").manifest.version,
        "store": str(load_bundle("sculpt-toy:v1").path),
    }
    for key, tag in (("unknown", "sculpt-nope:v9"), ("unknown_version", "sculpt-toy:v3")):
        try:
            load_bundle(tag)
            out[key] = None
        except BundleError as exc:
            out[key] = str(exc)
    out["torch"] = "torch" in sys.modules
    print(json.dumps(out))
    """
)


def test_bentoml_tags_resolve_in_the_model_store(tmp_path):
    v1 = make_bundle(tmp_path / "v1", version="v1")
    v2 = make_bundle(tmp_path / "v2", version="v2", seed=1)
    home = tmp_path / "bentoml"
    # BENTOML_HOME is read when bentoml is configured, so the store test runs in its own process
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run(
        [sys.executable, "-c", _BENTOML_SCRIPT, str(v1), str(v2)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pinned"] == "v1"
    assert out["latest"] == "v2"
    assert Path(out["store"]).is_relative_to(home)
    for key in ("unknown", "unknown_version"):
        assert out[key] is not None, f"{key}: no error"
        assert "no BentoML model" in out[key]
        assert "bentoml models list" in out[key]
    assert "sculpt-nope:v9" in out["unknown"]
    assert out["torch"] is False
