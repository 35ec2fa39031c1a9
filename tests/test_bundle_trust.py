"""Bundle trust (issue 13, findings 4 and 11): the digest pins a bundle, the ed25519 signature
vouches for it, a bundle holds regular files only, and a killed export's temporary folder is
removed by the next export.

Each reproducer of the security review is a test here: an edited drift threshold, an edited
reference.npy with its sha256 updated, a symbolic link out of the bundle, a non-regular entry,
and a `sculpt export` killed half-way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import edit_manifest, make_bundle, read_manifest, rehash
from cli_subprocess import run_cli
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from sculptserve.bundle.digest import (
    SIGNED_PREFIX,
    TrustError,
    canonical_manifest,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    manifest_digest,
    parse_digest,
    sign_digest,
    write_keypair,
)
from sculptserve.bundle.load import BundleError, bundle_digest, load_bundle, summarize
from sculptserve.bundle.schema import SIGNATURE
from sculptserve.cli import cli
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private PEM, public PEM) of a fresh ed25519 key pair."""
    private, public = tmp_path / "keys" / "sign.pem", tmp_path / "keys" / "sign.pub.pem"
    private.parent.mkdir()
    write_keypair(generate_key(), private, public)
    return private, public


def sign(folder: Path, private: Path) -> None:
    """What `sculpt export --signing-key` adds: signature.json over the bundle digest."""
    signature = sign_digest(load_private_key(private), bundle_digest(folder))
    (folder / SIGNATURE).write_text(signature.model_dump_json(indent=2) + "\n")


def error_of(source: Path | str, **kwargs) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(source, check_onnx=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one readable line
    return message


# --- the digest --------------------------------------------------------------------------------


def test_digest_is_sha256_of_the_canonical_manifest(bundle_dir):
    # sorted keys at every level, no whitespace, ASCII (non-ASCII and lone surrogates escaped)
    small = {"b": 1, "a": {"d": [1, 2.5e-7], "c": "é\ud800"}}
    assert canonical_manifest(small) == b'{"a":{"c":"\\u00e9\\ud800","d":[1,2.5e-07]},"b":1}'
    data = read_manifest(bundle_dir)
    canonical = canonical_manifest(data)
    expected = "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert manifest_digest(data) == expected == bundle_digest(bundle_dir)
    assert load_bundle(bundle_dir, check_onnx=False).digest == expected
    # re-indenting manifest.json or reordering its keys is not an edit
    (bundle_dir / "manifest.json").write_text(json.dumps(dict(reversed(data.items()))))
    assert bundle_digest(bundle_dir) == expected
    # the summary (sculpt inspect, GET /info) shows it
    assert summarize(load_bundle(bundle_dir, check_onnx=False))["digest"] == expected


def test_parse_digest_normalizes_and_rejects():
    hexes = "AB" * 32
    assert parse_digest(f"  SHA256:{hexes} ") == "sha256:" + hexes.lower()
    for bad in (
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "md5:" + "a" * 32,
        "a" * 64,
        "sha256:" + "g" * 64,
    ):
        with pytest.raises(ValueError, match="not a bundle digest"):
            parse_digest(bad)


def test_edited_drift_threshold_is_refused_when_pinned(bundle_dir):
    """Finding 4, first reproducer: raise drift.mmd2_threshold so drift never fires."""
    pinned = bundle_digest(bundle_dir)
    edit_manifest(bundle_dir, lambda m: m["drift"].update(mmd2_threshold=1e9))
    edited = bundle_digest(bundle_dir)
    assert edited != pinned
    # unpinned, the edit is self-consistent and loads: what the digest is for
    assert load_bundle(bundle_dir, check_onnx=False).manifest.drift.mmd2_threshold == 1e9
    message = error_of(bundle_dir, expect_digest=pinned)
    assert message.startswith(f"bundle digest mismatch: expected {pinned}, got {edited}")
    # the pin accepts the digest in any case, and the right bundle
    assert load_bundle(bundle_dir, check_onnx=False, expect_digest=edited.upper()).digest == edited


def test_edited_file_without_updating_the_manifest_is_caught_unpinned(bundle_dir):
    """The plain sha256 check still catches an edited file whose listed sha256 was kept."""
    data = bytearray((bundle_dir / "reference.npy").read_bytes())
    data[-1] ^= 0x01
    (bundle_dir / "reference.npy").write_bytes(bytes(data))
    assert "reference.npy: sha256 mismatch" in error_of(bundle_dir)


def test_edited_reference_with_its_sha256_is_refused_when_pinned(bundle_dir):
    """Finding 4, second reproducer: swap reference.npy and update its sha256 in the manifest."""
    pinned = bundle_digest(bundle_dir)
    shifted = np.load(bundle_dir / "reference.npy") + np.float32(3.0)
    np.save(bundle_dir / "reference.npy", shifted)
    rehash(bundle_dir)
    edited = bundle_digest(bundle_dir)
    assert edited != pinned
    load_bundle(bundle_dir, check_onnx=False)  # self-consistent: loads unpinned
    assert f"expected {pinned}, got {edited}" in error_of(bundle_dir, expect_digest=pinned)


def test_a_malformed_expected_digest_is_refused(bundle_dir):
    assert "not a bundle digest" in error_of(bundle_dir, expect_digest="sha256:abc")


# --- what a bundle folder may hold ------------------------------------------------------------


def test_symbolic_link_is_refused_even_unpinned(bundle_dir, tmp_path):
    """Finding 4, third reproducer: reference.npy a link to a file outside the bundle (same
    bytes, so every sha256 still matches)."""
    outside = tmp_path / "outside.npy"
    shutil.move(bundle_dir / "reference.npy", outside)
    (bundle_dir / "reference.npy").symlink_to(outside)
    message = error_of(bundle_dir)
    assert f"reference.npy is a symbolic link (to {outside})" in message
    # even a link the manifest does not list
    (bundle_dir / "reference.npy").unlink()
    shutil.copyfile(outside, bundle_dir / "reference.npy")
    load_bundle(bundle_dir, check_onnx=False)
    (bundle_dir / "notes.txt").symlink_to("/etc/hostname")
    assert "notes.txt is a symbolic link" in error_of(bundle_dir)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_non_regular_entries_are_refused(bundle_dir, kind):
    entry = bundle_dir / "extra"
    if kind == "folder":
        entry.mkdir()
        expected = "extra is a folder"
    else:
        os.mkfifo(entry)
        expected = "extra is not a regular file"
    message = error_of(bundle_dir)
    assert message.startswith(f"bundle {bundle_dir} may hold regular files only")
    assert expected in message


def test_an_extra_regular_file_is_tolerated(bundle_dir):
    # the BentoML model store writes model.yaml into the bundle's folder
    (bundle_dir / "model.yaml").write_text("name: x\n")
    assert load_bundle(bundle_dir, check_onnx=False).contents() == [
        "manifest.json",
        "decoder.onnx",
        "encoder.onnx",
        "reference.npy",
    ]


def test_listed_names_are_plain_file_names(bundle_dir):
    def nest(m: dict) -> None:
        m["files"]["sub/x.npy"] = "0" * 64

    edit_manifest(bundle_dir, nest)
    assert "files lists 'sub/x.npy'" in error_of(bundle_dir)


def test_the_signature_file_cannot_be_listed(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].update({SIGNATURE: "0" * 64}))
    assert f"files lists '{SIGNATURE}'" in error_of(bundle_dir)


# --- signatures -------------------------------------------------------------------------------


def test_sign_and_verify_round_trip(bundle_dir, keys):
    private, public = keys
    sign(bundle_dir, private)
    expected_id = key_id(load_public_key(public))
    bundle = load_bundle(bundle_dir, verify_key=public, expect_digest=bundle_digest(bundle_dir))
    assert bundle.signature is not None and bundle.signature_verified
    assert bundle.signature.key_id == expected_id == key_id(load_private_key(private))
    assert summarize(bundle)["signature"] == {"key_id": expected_id, "verified": True}
    # the signature is over the documented bytes (an outside verifier can redo it)
    raw = base64.b64decode(bundle.signature.signature)
    load_public_key(public).verify(raw, SIGNED_PREFIX + bundle.digest.encode())
    # signature.json is outside the digest, and a key object works as well as its file
    assert bundle_digest(bundle_dir) == manifest_digest(read_manifest(bundle_dir))
    assert load_bundle(bundle_dir, check_onnx=False, verify_key=load_public_key(public))
    # without a verify key it loads, shown as not verified
    unverified = summarize(load_bundle(bundle_dir, check_onnx=False))["signature"]
    assert unverified == {"key_id": expected_id, "verified": False}
    assert summarize(make_bundle_unsigned(bundle_dir.parent))["signature"] is None


def make_bundle_unsigned(root: Path):
    return load_bundle(make_bundle(root / "unsigned"), check_onnx=False)


def test_a_wrong_key_is_refused(bundle_dir, keys, tmp_path):
    private, _ = keys
    sign(bundle_dir, private)
    other = tmp_path / "other.pem"
    write_keypair(generate_key(), other, tmp_path / "other.pub.pem")
    message = error_of(bundle_dir, verify_key=tmp_path / "other.pub.pem")
    assert "signature.json does not verify with the verify key" in message
    assert (
        key_id(load_private_key(private)) in message and key_id(load_private_key(other)) in message
    )


def test_a_missing_signature_is_refused_when_a_key_is_given(bundle_dir, keys):
    _, public = keys
    message = error_of(bundle_dir, verify_key=public)
    assert f"{bundle_dir} has no signature.json" in message


def test_a_signature_over_an_older_manifest_is_refused(bundle_dir, keys):
    private, public = keys
    sign(bundle_dir, private)
    edit_manifest(bundle_dir, lambda m: m["drift"].update(mmd2_threshold=1e9))
    # caught with or without the key: the parts of the bundle disagree
    for kwargs in ({}, {"verify_key": public}):
        assert "the bundle changed after it was signed" in error_of(bundle_dir, **kwargs)


def test_an_altered_signature_is_refused(bundle_dir, keys):
    private, public = keys
    sign(bundle_dir, private)
    data = json.loads((bundle_dir / SIGNATURE).read_text())
    raw = bytearray(base64.b64decode(data["signature"]))
    raw[0] ^= 0x01
    data["signature"] = base64.b64encode(bytes(raw)).decode()
    (bundle_dir / SIGNATURE).write_text(json.dumps(data))
    assert "does not verify" in error_of(bundle_dir, verify_key=public)
    (bundle_dir / SIGNATURE).write_text('{"algorithm": "rsa"}')
    assert "signature.json: field 'algorithm'" in error_of(bundle_dir)


def test_key_files_are_checked(keys, tmp_path):
    private, public = keys
    with pytest.raises(TrustError, match="not a PEM public key"):
        load_public_key(private)  # the private key is never a verify key
    with pytest.raises(TrustError, match="not an unencrypted PEM private key"):
        load_private_key(public)
    with pytest.raises(TrustError, match="cannot read the verify key"):
        load_public_key(tmp_path / "missing.pem")
    assert private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(TrustError, match="already exists"):
        write_keypair(generate_key(), private, tmp_path / "new.pub.pem")


# --- settings, the service, the CLI -------------------------------------------------------------


def test_settings_variables_are_validated(keys, tmp_path):
    _, public = keys
    digest = "sha256:" + "ab" * 32
    settings = load_settings(
        {"SCULPT_BUNDLE_DIGEST": digest.upper(), "SCULPT_BUNDLE_VERIFY_KEY": str(public)}
    )
    assert settings.bundle_digest == digest
    assert key_id(settings.verify_key()) == key_id(load_public_key(public))
    assert load_settings({}).verify_key() is None
    with pytest.raises(SettingsError) as info:
        load_settings({"SCULPT_BUNDLE_DIGEST": "md5:abc"})
    assert str(info.value).startswith("SCULPT_BUNDLE_DIGEST: 'md5:abc' is not a bundle digest")
    bad = load_settings({"SCULPT_BUNDLE_VERIFY_KEY": str(tmp_path / "nope.pem")})
    with pytest.raises(SettingsError, match=r"^SCULPT_BUNDLE_VERIFY_KEY: cannot read"):
        bad.verify_key()


def test_the_service_app_refuses_a_bundle_other_than_the_pinned_one(bundle_dir, keys):
    """EmbeddingApp.from_settings is how the BentoML service and the gRPC server load."""
    _, public = keys
    pinned = bundle_digest(bundle_dir)
    settings = load_settings({"SCULPT_BUNDLE": str(bundle_dir), "SCULPT_BUNDLE_DIGEST": pinned})
    kwargs = {"metrics_registry": CollectorRegistry(), "background_drift": False}
    app = EmbeddingApp.from_settings(settings, **kwargs)
    try:
        assert app.info()["digest"] == pinned
    finally:
        app.close()
    edit_manifest(bundle_dir, lambda m: m["drift"].update(mmd2_threshold=1e9))
    with pytest.raises(BundleError, match="bundle digest mismatch"):
        EmbeddingApp.from_settings(settings, **kwargs)
    signed = load_settings(
        {"SCULPT_BUNDLE": str(bundle_dir), "SCULPT_BUNDLE_VERIFY_KEY": str(public)}
    )
    with pytest.raises(BundleError, match=r"has no signature\.json"):
        EmbeddingApp.from_settings(signed, **kwargs)


def test_inspect_refuses_a_digest_mismatch_in_one_line(bundle_dir):
    digest = bundle_digest(bundle_dir)
    ok = run_cli("inspect", bundle_dir, "--json", "--expect-digest", digest)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["digest"] == digest
    wrong = "sha256:" + "0" * 64
    refused = run_cli("inspect", bundle_dir, "--expect-digest", wrong)
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: bundle digest mismatch: expected {wrong}, got {digest}")
    malformed = CliRunner().invoke(cli, ["inspect", str(bundle_dir), "--expect-digest", "x"])
    assert malformed.exit_code == 2 and "not a bundle digest" in malformed.output


def test_serve_refuses_a_digest_mismatch_before_starting(bundle_dir):
    """By option and by SCULPT_BUNDLE_DIGEST: one line, exit 1, no server started."""
    digest, wrong = bundle_digest(bundle_dir), "sha256:" + "1" * 64
    expected = f"Error: bundle digest mismatch: expected {wrong}, got {digest}"
    refused = run_cli("serve", bundle_dir, "--port", 1, "--expect-digest", wrong)
    assert refused.returncode == 1 and "serving" not in refused.stdout
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), refused.stderr

    # the settings variable, in-process (run_serve fails before it starts anything)
    def serve_with(digest: str):
        runner = CliRunner(env={"SCULPT_BUNDLE_DIGEST": digest})
        return runner.invoke(cli, ["serve", str(bundle_dir)])

    by_env = serve_with(wrong)
    assert by_env.exit_code == 1 and by_env.output.startswith(expected)
    malformed = serve_with("abc")
    assert malformed.exit_code == 1
    assert malformed.output.splitlines() == [
        "Error: SCULPT_BUNDLE_DIGEST: 'abc' is not a bundle digest: expected sha256: and 64 hex "
        "digits, as `sculpt export` and `sculpt inspect` print it"
    ]


def test_keygen_then_verify_with_inspect(bundle_dir, tmp_path):
    made = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "k.pem")])
    assert made.exit_code == 0, made.output
    public = tmp_path / "k.pub.pem"
    assert f"key id {key_id(load_public_key(public))}" in made.output
    refused = CliRunner().invoke(cli, ["inspect", str(bundle_dir), "--verify-key", str(public)])
    assert refused.exit_code == 1 and "has no signature.json" in refused.output
    sign(bundle_dir, tmp_path / "k.pem")
    checked = CliRunner().invoke(
        cli, ["inspect", str(bundle_dir), "--json", "--verify-key", str(public)]
    )
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["signature"]["verified"] is True
    again = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "k.pem")])
    assert again.exit_code == 1 and "already exists" in again.output


_BENTOML_IMPORT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import bentoml
    from sculptserve.bundle.load import load_bundle
    from sculptserve.export.writer import import_to_bentoml

    tag = import_to_bentoml(Path(sys.argv[1]))
    model = bentoml.models.get(tag)
    stored = load_bundle(tag, check_onnx=False, expect_digest=model.info.labels["bundle_digest"])
    print(json.dumps({
        "labels": model.info.labels,
        "names": sorted(p.name for p in Path(model.path).iterdir()),
        "digest": stored.digest,
        "verified_key": stored.signature.key_id if stored.signature else None,
    }))
    """
)


def test_bentoml_import_records_the_digest_in_the_labels(bundle_dir, keys, tmp_path):
    private, _ = keys
    sign(bundle_dir, private)
    (bundle_dir / "stray.txt").write_text("not part of the bundle\n")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-c", _BENTOML_IMPORT, str(bundle_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    digest = bundle_digest(bundle_dir)
    assert out["labels"]["bundle_digest"] == digest == out["digest"]
    assert out["labels"]["bundle_key_id"] == key_id(load_private_key(private))
    # the bundle's own files travel (and BentoML's model.yaml); nothing else
    assert out["names"] == sorted(
        ["manifest.json", SIGNATURE, "encoder.onnx", "decoder.onnx", "reference.npy", "model.yaml"]
    )


def test_bentoml_import_refuses_a_bundle_with_a_link(bundle_dir, tmp_path):
    (bundle_dir / "x.npy").symlink_to(bundle_dir / "reference.npy")
    # checked before bentoml is touched, so no store is needed
    from sculptserve.export.writer import import_to_bentoml

    with pytest.raises(BundleError, match=r"x\.npy is a symbolic link"):
        import_to_bentoml(bundle_dir)


# --- finding 11: the temporary folders of killed exports ---------------------------------------


def dead_pid() -> int:
    """The PID of a process that has ended (reaped, so nothing runs under it now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_folders_are_removed_and_live_ones_kept(tmp_path):
    from sculptserve.export.staging import _open_locked, remove_stale, temp_prefix

    gone = dead_pid()
    out = tmp_path / "b"
    stale = tmp_path / (temp_prefix(out, gone) + "ab12cd_3")
    live = tmp_path / (temp_prefix(out) + "zz99yy00")  # this process: a running export
    # another PID namespace (a container on the same volume): its PID means nothing here,
    # but it holds the folder's lock
    elsewhere = tmp_path / (temp_prefix(tmp_path / "c", gone) + "q1w2e3r4")
    untouched = [tmp_path / ".b.tmp-abcdefgh", tmp_path / "b2", tmp_path / ".hidden"]
    for folder in (stale, live, elsewhere, *untouched):
        folder.mkdir()
        (folder / "encoder.onnx").write_bytes(b"partial")
    held = _open_locked(elsewhere)
    assert held is not None, "this filesystem has no flock"
    try:
        assert remove_stale(tmp_path) == [stale]
    finally:
        os.close(held)
    assert not stale.exists()
    assert live.is_dir() and elsewhere.is_dir() and all(p.is_dir() for p in untouched)
    assert remove_stale(tmp_path) == [elsewhere]  # its lock was released: that export ended


_STAGING_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sculptserve.export.staging import staging_folder

    with staging_folder(Path(sys.argv[1])) as tmp:
        (tmp / "encoder.onnx").write_bytes(b"half an export")
        print(tmp, flush=True)
        time.sleep(120)
    """
)


def test_a_killed_export_is_cleaned_up_by_the_next_one(tmp_path):
    """Finding 11's reproducer: SIGKILL an export while its temporary folder exists."""
    from sculptserve.export.staging import remove_stale

    child = subprocess.Popen(
        [sys.executable, "-c", _STAGING_CHILD, str(tmp_path / "b")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        tmp = Path(child.stdout.readline().strip())
        assert tmp.parent == tmp_path and tmp.name.startswith(f".b.tmp-{child.pid}-")
        assert remove_stale(tmp_path) == [] and tmp.is_dir()  # running: kept
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert tmp.is_dir()  # a killed export cannot clean up after itself
    assert remove_stale(tmp_path) == [tmp] and not tmp.exists()


# --- a real export: the digest printed, signed, and the stale folder removed --------------------


def test_export_prints_the_digest_that_inspect_shows(tiny_shapes_run, tmp_path, keys):
    private, public = keys
    root = tmp_path / "bundles"
    root.mkdir()
    out = root / "b"
    stale = root / f".old.tmp-{dead_pid()}-abcdefgh"
    live = root / f".other.tmp-{os.getpid()}-abcdefgh"
    for folder in (stale, live):
        folder.mkdir()
    exported = CliRunner().invoke(
        cli,
        [
            "export", str(tiny_shapes_run), "--out", str(out), "--reference-size", "256",
            "--window", "64", "--signing-key", str(private),
        ],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    printed = exported.output.split("bundle digest ")[1].split()[0]
    assert f"signed with key {key_id(load_private_key(private))}" in exported.output
    assert not stale.exists() and live.is_dir()
    assert sorted(p.name for p in root.iterdir()) == sorted(["b", live.name])
    assert (out / SIGNATURE).is_file()
    inspected = CliRunner().invoke(
        cli,
        ["inspect", str(out), "--json", "--expect-digest", printed, "--verify-key", str(public)],
    )
    assert inspected.exit_code == 0, inspected.output
    summary = json.loads(inspected.output)
    assert summary["digest"] == printed == bundle_digest(out)
    assert summary["signature"] == {"key_id": key_id(load_public_key(public)), "verified": True}
