"""Load and verify an exported bundle without torch.

``load_bundle`` is the one gate between a bundle on disk (or in the BentoML model store) and
anything that serves it: it checks that the folder holds only regular files, the bundle digest
against a pinned one and the signature against a verify key (when given; see
:mod:`sculptserve.bundle.digest`), the manifest's schema version and fields, the sha256 of
every file, the ONNX graphs' input/output names and shapes against the manifest, and the
reference embeddings. Every problem is a :class:`BundleError` whose message names the file,
says what is wrong and what to do. The schema itself lives in :mod:`sculptserve.bundle.schema`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from sculptserve.bundle.digest import (
    TrustError,
    check_signed_digest,
    key_id,
    load_public_key,
    manifest_digest,
    parse_digest,
    verify_signature,
)
from sculptserve.bundle.schema import (
    MANIFEST,
    SCHEMA_VERSION,
    SIGNATURE,
    Manifest,
    OnnxGraph,
    SignatureFile,
)
from sculptserve.files import load_npy
from sculptserve.stats.priors import Prior, PriorSpecError, prior_from_dict

__all__ = [
    "Bundle",
    "BundleError",
    "bentoml_tag_path",
    "bundle_digest",
    "load_bundle",
    "sha256_file",
    "summarize",
    "validate_session",
    "verify_files",
]

_REEXPORT = "re-export the bundle with `sculpt export`"
_Role = Literal["encoder", "decoder"]


class BundleError(ValueError):
    """A bundle cannot be used; the message names the file, the problem and what to do."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks (ONNX files can be large)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------
# The bundle object
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder and its manifest. Holds no ONNX sessions: the runtime makes
    its own, with its configured threads and providers.

    ``digest`` is the bundle digest; ``signature`` its signature.json (None: unsigned), which
    was checked against a verify key only when ``signature_verified``.
    """

    path: Path
    manifest: Manifest
    digest: str
    signature: SignatureFile | None = None
    signature_verified: bool = False

    def contents(self) -> list[str]:
        """The names that make up the bundle: manifest, signature (if any), listed files."""
        signature = [SIGNATURE] if self.signature is not None else []
        return [MANIFEST, *signature, *sorted(self.manifest.files)]

    def file(self, name: str) -> Path:
        """Path of one of the bundle's files (``manifest.json`` or a name listed in files)."""
        if name != MANIFEST and name not in self.manifest.files:
            listed = ", ".join(sorted(self.manifest.files))
            raise BundleError(f"{name} is not a file of bundle {self.path} (files: {listed})")
        return self.path / name

    def prior(self) -> Prior:
        """The prior, with an empirical bank's relative path resolved against the bundle."""
        spec = _resolve_bank_paths(self.manifest.prior, self.path)
        try:
            return prior_from_dict(spec, dim=self.manifest.latent_dim)
        except PriorSpecError as exc:
            raise BundleError(f"{self.path / MANIFEST}: prior: {exc}; {_REEXPORT}") from None

    def reference(self) -> np.ndarray:
        """The (n, latent_dim) float32 reference embeddings, validated."""
        file = self.path / self.manifest.reference.file
        try:
            arr = load_npy(file)
        except (ValueError, OSError) as exc:
            raise BundleError(f"{exc}; {_REEXPORT}") from None
        n, dim = self.manifest.reference.n, self.manifest.latent_dim
        if arr.ndim != 2 or arr.shape != (n, dim):
            raise BundleError(
                f"{file}: shape {list(arr.shape)} but manifest.json says [{n}, {dim}] "
                f"(reference.n, latent_dim); {_REEXPORT}"
            )
        if arr.dtype.kind != "f":
            raise BundleError(f"{file}: dtype {arr.dtype}, expected float32; {_REEXPORT}")
        if not np.isfinite(arr).all():
            raise BundleError(f"{file}: holds NaN or inf values; {_REEXPORT}")
        return arr.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_bundle(
    source: str | os.PathLike[str],
    *,
    check_onnx: bool = True,
    expect_digest: str | None = None,
    verify_key: Ed25519PublicKey | str | os.PathLike[str] | None = None,
) -> Bundle:
    """Load a bundle folder or a BentoML tag (``sculpt-NAME[:VERSION]``) and verify it.

    ``check_onnx=False`` skips opening the graphs with ONNX Runtime (hashes, manifest and
    reference are still checked); use it when the caller validates its own sessions with
    :func:`validate_session`.

    ``expect_digest`` (``sha256:HEX``) pins the bundle: any other digest is refused.
    ``verify_key`` (an ed25519 public key or the path of its PEM file) requires a
    signature.json that verifies with it. Without them any self-consistent bundle loads; a
    signature.json present is still checked to sign this bundle's digest.
    """
    folder = _resolve_source(source)
    _check_entries(folder)
    data = _read_manifest_json(folder)
    digest = manifest_digest(data)
    if expect_digest is not None:
        _check_pinned(folder, digest, expect_digest)
    signature = _read_signature(folder, digest)
    if verify_key is not None:
        _check_signature(folder, signature, digest, verify_key)
    manifest = _validate_manifest(folder, data)
    _check_manifest(folder, manifest)
    problems = verify_files(folder, manifest)
    if problems:
        head = "" if len(problems) == 1 else f"{len(problems)} problems in bundle {folder}: "
        raise BundleError(head + "; ".join(problems))
    if check_onnx:
        for role in ("encoder", "decoder"):
            _check_onnx_file(folder, manifest, role)
    _check_graph_specs(folder, manifest)
    bundle = Bundle(
        path=folder,
        manifest=manifest,
        digest=digest,
        signature=signature,
        signature_verified=verify_key is not None,
    )
    bundle.reference()
    bundle.prior()  # fail now, not at the first /generate (also loads an empirical bank)
    return bundle


def _looks_like_tag(text: str) -> bool:
    # a tag never holds a path separator, so "sculpt-bundles/x" stays a (missing) folder
    if "/" in text or os.sep in text:
        return False
    return ":" in text or text.startswith("sculpt-")


def _resolve_source(source: str | os.PathLike[str]) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise BundleError(
            f"{path} is a file, not a bundle folder; pass the folder that holds {MANIFEST}"
        )
    text = os.fspath(source)
    if _looks_like_tag(text):
        return bentoml_tag_path(text)
    raise BundleError(
        f"no such bundle folder or BentoML tag: {text!r}; pass a folder written by "
        "`sculpt export` or a tag like sculpt-NAME:VERSION (see `bentoml models list`)"
    )


def bentoml_tag_path(tag: str) -> Path:
    """Folder of ``sculpt-NAME:VERSION`` (or ``sculpt-NAME``: the latest) in the model store."""
    try:
        import bentoml  # lazy: a bundle folder never needs BentoML
    except ImportError:
        raise BundleError(
            f"cannot resolve BentoML tag {tag!r}: bentoml is not installed; pass a bundle folder"
        ) from None
    try:
        model = bentoml.models.get(tag)
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:
        # NotFound for unknown names/versions, ValueError/BentoMLException for malformed tags
        raise BundleError(
            f"no BentoML model {tag!r}: {exc}; see the models in the store with "
            "`bentoml models list` (BENTOML_HOME picks the store), or import a bundle with "
            "`sculpt export --bentoml`"
        ) from None
    return Path(model.path)


def bundle_digest(source: str | os.PathLike[str]) -> str:
    """The digest of a bundle (folder or tag) from its manifest alone: it does not verify the
    files (:func:`load_bundle` does, and its ``Bundle.digest`` is the same value)."""
    folder = _resolve_source(source)
    _check_entries(folder)
    return manifest_digest(_read_manifest_json(folder))


def _check_entries(folder: Path) -> None:
    """Only regular files: a symbolic link could point outside the bundle (the hashes would
    then vouch for a file someone else controls), and nothing else belongs in one."""
    problems = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                target = os.readlink(entry.path)
                problems.append(f"{entry.name} is a symbolic link (to {target})")
            elif entry.is_dir(follow_symlinks=False):
                problems.append(f"{entry.name} is a folder")
            elif not entry.is_file(follow_symlinks=False):
                problems.append(f"{entry.name} is not a regular file (a device, FIFO or socket)")
    if problems:
        raise BundleError(
            f"bundle {folder} may hold regular files only: {'; '.join(problems)}; copy the "
            f"real files in, or {_REEXPORT}"
        )


def _check_pinned(folder: Path, digest: str, expected: str) -> None:
    try:
        expected = parse_digest(expected)
    except ValueError as exc:
        raise BundleError(f"the expected bundle digest {exc}") from None
    if digest != expected:
        raise BundleError(
            f"bundle digest mismatch: expected {expected}, got {digest} ({folder}): this is "
            "not the pinned bundle, or it was modified; serve the bundle that digest names, or "
            "pin this one after checking where it came from"
        )


def _read_signature(folder: Path, digest: str) -> SignatureFile | None:
    """signature.json if the bundle has one; it must sign this bundle's digest."""
    file = folder / SIGNATURE
    if not file.exists():
        return None
    try:
        signature = SignatureFile.model_validate_json(file.read_bytes())
        check_signed_digest(signature, digest)
    except ValidationError as exc:
        raise BundleError(f"{file}: {_describe(exc)}; re-sign the bundle") from None
    except TrustError as exc:
        raise BundleError(f"{exc} ({folder}); {_REEXPORT}") from None
    return signature


def _check_signature(
    folder: Path,
    signature: SignatureFile | None,
    digest: str,
    verify_key: Ed25519PublicKey | str | os.PathLike[str],
) -> None:
    key = verify_key
    if not isinstance(key, Ed25519PublicKey):
        try:
            key = load_public_key(key)
        except TrustError as exc:
            raise BundleError(str(exc)) from None
    if signature is None:
        raise BundleError(
            f"{folder} has no {SIGNATURE}, but a signature by the verify key {key_id(key)} is "
            "required: serve a bundle exported with `sculpt export --signing-key`"
        )
    try:
        verify_signature(signature, digest, key)
    except TrustError as exc:
        raise BundleError(f"{exc} ({folder})") from None


def _read_manifest_json(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST
    if not file.is_file():
        raise BundleError(
            f"{MANIFEST} is missing from {folder}: this is not a bundle folder; "
            "pass a folder written by `sculpt export`"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = " ".join(str(exc).split())
        raise BundleError(f"{file}: not valid JSON ({reason}); {_REEXPORT}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _validate_manifest(folder: Path, data: dict[str, Any]) -> Manifest:
    file = folder / MANIFEST
    if "schema_version" not in data:
        raise BundleError(
            f"{file}: no schema_version: not a sculptserve bundle manifest, or a damaged one; "
            f"{_REEXPORT}"
        )
    version = data["schema_version"]
    # checked before the fields: another schema's fields would only give confusing errors
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise BundleError(
            f"{file}: schema version {version!r} is not supported by this sculptserve "
            f"(expects {SCHEMA_VERSION}); re-export with this version or upgrade sculptserve"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{file}: {_describe(exc)}; {_REEXPORT}") from None


def _describe(err: ValidationError) -> str:
    """pydantic's errors as one line, each naming the field path."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        else:
            got = repr(e.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            parts.append(f"field '{loc}': {e['msg'][:1].lower()}{e['msg'][1:]} (got {got})")
    return "; ".join(parts)


def _is_safe_name(name: str) -> bool:
    """A plain file name in the bundle folder (a manifest must not point outside its folder,
    and a bundle has no sub-folders)."""
    return PurePosixPath(name).name == name and name not in {".", ".."} and "\\" not in name


def _bank_paths(spec: Any) -> Iterator[Any]:
    """Every empirical bank path in a prior spec, nested hybrids included."""
    if isinstance(spec, dict):
        if spec.get("kind") == "empirical" and "path" in spec:
            yield spec["path"]
        for value in spec.values():
            yield from _bank_paths(value)
    elif isinstance(spec, list | tuple):
        for value in spec:
            yield from _bank_paths(value)


def _resolve_bank_paths(spec: Any, folder: Path) -> Any:
    """A copy of ``spec`` with relative empirical bank paths made absolute under ``folder``."""
    spec = copy.deepcopy(spec)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            path = node.get("path")
            relative = isinstance(path, str) and not os.path.isabs(path)
            if node.get("kind") == "empirical" and relative:
                node["path"] = str(folder / path)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return spec


def _check_manifest(folder: Path, m: Manifest) -> None:
    """Checks pydantic cannot express: sizes, safe names, every referenced file listed."""
    file = folder / MANIFEST

    def fail(problem: str) -> None:
        raise BundleError(f"{file}: {problem}; {_REEXPORT}")

    if m.latent_dim < 1:
        fail(f"latent_dim must be >= 1 (got {m.latent_dim})")
    if not m.input.shape or any(d < 1 for d in m.input.shape):
        fail(f"input.shape must be a non-empty list of positive sizes (got {m.input.shape})")
    if m.reference.n < 1:
        fail(f"reference.n must be >= 1 (got {m.reference.n})")
    for name in m.files:
        if not _is_safe_name(name) or name in {MANIFEST, SIGNATURE}:
            fail(f"files lists {name!r}, which is not a file name inside the bundle")
    named = {
        "onnx.encoder.file": m.onnx.encoder.file,
        "onnx.decoder.file": m.onnx.decoder.file,
        "reference.file": m.reference.file,
    }
    for field, name in named.items():
        if name not in m.files:
            fail(f"{field} {name!r} is not listed in files, so its sha256 cannot be checked")
    for path in _bank_paths(m.prior):
        if not isinstance(path, str) or not _is_safe_name(path):
            fail(f"the empirical prior's path {path!r} must be a file name in the bundle folder")
        if PurePosixPath(path).as_posix() not in m.files:
            fail(f"the empirical prior's bank {path!r} is not listed in files")


def verify_files(path: Path, manifest: Manifest) -> list[str]:
    """Human-readable problems with the files listed in the manifest; empty if all are good."""
    problems = []
    for name, expected in manifest.files.items():
        file = Path(path) / name
        if not file.exists():
            problems.append(f"{name} is missing from {path}; {_REEXPORT}")
            continue
        if not file.is_file():
            problems.append(f"{file}: not a regular file; {_REEXPORT}")
            continue
        actual = sha256_file(file)
        if actual != expected.lower():
            problems.append(
                f"{file}: sha256 mismatch (manifest {expected[:12]}.., file {actual[:12]}..): "
                "the file was modified or corrupted; re-export the bundle"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# ONNX graphs against the manifest
# ---------------------------------------------------------------------------------------------

Dim = int | str | None


def _is_dynamic(dim: Dim) -> bool:
    # ONNX Runtime reports a named symbolic dim as str, an unnamed one as None; -1 from some tools
    return dim is None or isinstance(dim, str) or dim < 0


def _fmt(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _shape_problem(actual: Sequence[Dim], expected: Sequence[Dim]) -> str | None:
    """Why a graph shape does not fit an expected one (a str in ``expected`` = dynamic)."""
    if len(actual) != len(expected):
        return f"rank {len(actual)} instead of {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if _is_dynamic(e):
            if not _is_dynamic(a):
                return f"axis {i} is fixed to {a} but must be dynamic ({e})"
        elif not _is_dynamic(a) and a != e:  # a dynamic graph axis accepts the static size
            return f"axis {i} is {a} instead of {e}"
    return None


def _batch_label(shape: Sequence[Dim]) -> Dim:
    """The manifest's name for the dynamic batch axis (used only in messages)."""
    return shape[0] if shape and _is_dynamic(shape[0]) else "batch"


def _expected_shapes(m: Manifest, role: _Role) -> tuple[list[Dim], list[Dim]]:
    """(input, output) shapes that the top-level fields imply, batch axis dynamic."""
    example, latent = list(m.input.shape), [m.latent_dim]
    spec: OnnxGraph = getattr(m.onnx, role)
    batch_in, batch_out = _batch_label(spec.input_shape), _batch_label(spec.output_shape)
    if role == "encoder":
        return [batch_in, *example], [batch_out, *latent]
    return [batch_in, *latent], [batch_out, *example]


def _type_ok(onnx_type: str, precision: str) -> bool:
    # an fp16 graph may keep float32 inputs/outputs and cast inside
    allowed = {"tensor(float)"} if precision == "fp32" else {"tensor(float)", "tensor(float16)"}
    return onnx_type in allowed


def validate_session(manifest: Manifest, role: _Role, session: Any, file: str | Path) -> None:
    """Check an ONNX Runtime session of the bundle's ``role`` graph against the manifest.

    Public so that the runtime, which opens sessions with its own providers, can re-check them.
    """
    spec: OnnxGraph = getattr(manifest.onnx, role)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    in_names = [i.name for i in inputs]
    if in_names != [spec.input_name]:
        raise BundleError(
            f"{file}: the graph's inputs are {in_names} but manifest.json says one input "
            f"{spec.input_name!r}; {_REEXPORT}"
        )
    by_name = {o.name: o for o in outputs}
    if spec.output_name not in by_name:
        raise BundleError(
            f"{file}: the graph has no output {spec.output_name!r} (outputs: {list(by_name)}) "
            f"as manifest.json says; {_REEXPORT}"
        )
    exp_in, exp_out = _expected_shapes(manifest, role)
    what = "input.shape" if role == "encoder" else "latent_dim"
    what_out = "latent_dim" if role == "encoder" else "input.shape"
    checks = [
        ("input", inputs[0], spec.input_shape, exp_in, what),
        ("output", by_name[spec.output_name], spec.output_shape, exp_out, what_out),
    ]
    for kind, arg, spec_shape, implied, field in checks:
        if not _type_ok(arg.type, manifest.onnx.precision):
            raise BundleError(
                f"{file}: {kind} {arg.name!r} has type {arg.type}, which a "
                f"{manifest.onnx.precision} bundle cannot feed; {_REEXPORT}"
            )
        actual = list(arg.shape)
        for expected, source in (
            (spec_shape, f"onnx.{role}.{kind}_shape"),
            (implied, field),
        ):
            problem = _shape_problem(actual, expected)
            if problem is not None:
                raise BundleError(
                    f"{file}: {kind} {arg.name!r} has shape {_fmt(actual)} but manifest.json "
                    f"expects {_fmt(expected)} (from {source}): {problem}; the manifest does "
                    f"not describe this graph: {_REEXPORT}"
                )


def _check_onnx_file(folder: Path, m: Manifest, role: _Role) -> None:
    import onnxruntime as ort  # lazy: loading ORT costs time, and check_onnx=False skips it

    spec: OnnxGraph = getattr(m.onnx, role)
    file = folder / spec.file
    options = ort.SessionOptions()
    # a throwaway session: one thread, no optimization passes, quiet logs
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(file), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own pybind classes (Fail, InvalidProtobuf, ...)
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise BundleError(
            f"{file}: ONNX Runtime {ort.__version__} cannot load it ({reason}); it is not a "
            f"valid ONNX model or needs a newer onnxruntime (opset {m.onnx.opset}); "
            f"{_REEXPORT}"
        ) from None
    try:
        validate_session(m, role, session, file)
    finally:
        del session  # no close() in the Python API; dropping the last reference frees it


def _check_graph_specs(folder: Path, m: Manifest) -> None:
    """The manifest's own ONNX shapes against its latent_dim and input.shape (even when the
    graphs were not opened)."""
    for role in ("encoder", "decoder"):
        spec: OnnxGraph = getattr(m.onnx, role)
        exp_in, exp_out = _expected_shapes(m, role)
        for kind, shape, expected in (
            ("input", spec.input_shape, exp_in),
            ("output", spec.output_shape, exp_out),
        ):
            problem = _shape_problem(shape, expected)
            if problem is not None:
                raise BundleError(
                    f"{folder / MANIFEST}: onnx.{role}.{kind}_shape {_fmt(shape)} does not match "
                    f"latent_dim {m.latent_dim} and input.shape {m.input.shape} "
                    f"(expected {_fmt(expected)}: {problem}); {_REEXPORT}"
                )


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Top-level numbers and strings of a metrics dict (nested blocks stay in the manifest)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool | str | int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None  # keep the summary strict JSON
    return out


def summarize(bundle: Bundle) -> dict[str, Any]:
    """A compact JSON-able summary for `sculpt inspect` and a service's GET /info."""
    m = bundle.manifest
    objective = dict(m.objective)
    obj_name = objective.pop("name", None) or objective.pop("kind", None)
    obj_params = objective.pop("params", None)
    if not isinstance(obj_params, dict):
        obj_params = objective
    files = {}
    for name, digest in m.files.items():
        file = bundle.path / name
        files[name] = {"size": file.stat().st_size if file.is_file() else None, "sha256": digest}
    return {
        "name": m.name,
        "version": m.version,
        "created_at": m.created_at,
        "schema_version": m.schema_version,
        "sculptserve_version": m.sculptserve_version,
        "path": str(bundle.path),
        "input": {
            "modality": m.input.modality,
            "shape": list(m.input.shape),
            "dtype": m.input.dtype,
            "layout": m.input.layout,
            "color": m.input.color,
            "value_range": m.input.value_range,
        },
        "latent_dim": m.latent_dim,
        "prior": m.prior,
        "objective": {"name": obj_name, "params": obj_params},
        "metrics": _scalar_metrics(m.metrics),
        "onnx": {"opset": m.onnx.opset, "precision": m.onnx.precision},
        # small fixed blocks: dumped whole, so new calibration fields show up by themselves
        "parity": m.parity.model_dump(mode="json"),
        "drift": m.drift.model_dump(mode="json"),
        "reference": {"n": m.reference.n, "source": m.reference.source},
        "files": files,
        "verified": True,
        # pin this with --expect-digest / SCULPT_BUNDLE_DIGEST (sculptserve.bundle.digest)
        "digest": bundle.digest,
        "signature": None
        if bundle.signature is None
        else {"key_id": bundle.signature.key_id, "verified": bundle.signature_verified},
    }
