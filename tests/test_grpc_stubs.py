"""The committed gRPC stubs are what `grpc_tools.protoc` makes of their .proto files now.

Every .proto of sculptserve/serving/grpc (sculpt.proto, grpc_predict_v2.proto) is regenerated
into a temporary folder with the command of scripts/gen_grpc.sh and compared file by file.
Only the generator's version stamps are normalized (they name the grpcio-tools / protobuf
release that ran, which the dev extra does not pin); the committed stamps are checked against
the runtime minimums pyproject.toml declares instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

REPO = Path(__file__).resolve().parents[1]
GRPC_DIR = REPO / "sculptserve" / "serving" / "grpc"
PROTOS = ("sculpt.proto", "grpc_predict_v2.proto")
# stub suffix -> how many of its lines carry a version stamp
STAMPED_LINES = {"_pb2.py": 4, "_pb2.pyi": 0, "_pb2_grpc.py": 1}
STUBS = tuple(proto.removesuffix(".proto") + suffix for proto in PROTOS for suffix in STAMPED_LINES)
# (pattern, replacement) for every version stamp protoc / grpc_tools write
STAMPS = [
    (r"# Protobuf Python Version: [0-9.]+", "# Protobuf Python Version: X"),
    (
        r"_runtime_version\.Domain\.PUBLIC,\n(\s+)\d+,\n\s+\d+,\n\s+\d+,\n\s+'[^']*',",
        r"_runtime_version.Domain.PUBLIC,\n\1X,\n\1X,\n\1X,\n\1'',",
    ),
    (r"GRPC_GENERATED_VERSION = '[0-9.]+'", "GRPC_GENERATED_VERSION = 'X'"),
]


def normalize(text: str) -> str:
    for pattern, replacement in STAMPS:
        text = re.sub(pattern, replacement, text)
    return text


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", "."]
    cmd += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    cmd += [f"sculptserve/serving/grpc/{proto}" for proto in PROTOS]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=120)
    return out / "sculptserve" / "serving" / "grpc"


@pytest.mark.parametrize("name", STUBS)
def test_committed_stub_equals_fresh_protoc_output(generated: Path, name: str) -> None:
    committed = (GRPC_DIR / name).read_text()
    fresh = (generated / name).read_text()
    assert normalize(committed) == normalize(fresh), (
        f"sculptserve/serving/grpc/{name} is stale: run `bash scripts/gen_grpc.sh` and commit it"
    )


def test_every_proto_has_its_committed_stubs() -> None:
    assert sorted(p.name for p in GRPC_DIR.glob("*.proto")) == sorted(PROTOS)
    assert {p.name for p in GRPC_DIR.glob("*_pb2*.py*")} == set(STUBS)
    script = (REPO / "scripts" / "gen_grpc.sh").read_text()
    assert all(f"sculptserve/serving/grpc/{proto}" in script for proto in PROTOS)


def test_normalization_touches_only_the_stamps() -> None:
    for name in STUBS:
        text = (GRPC_DIR / name).read_text()
        before, after = text.splitlines(), normalize(text).splitlines()
        assert len(before) == len(after)
        changed = [b for b, a in zip(before, after, strict=True) if a != b]
        stamped = next(n for suffix, n in STAMPED_LINES.items() if name.endswith(suffix))
        assert len(changed) == stamped, (name, changed)
    # each stamp is found, so a changed layout of the generated code fails loudly here
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        pb2 = (GRPC_DIR / f"{stem}_pb2.py").read_text()
        grpc_stub = (GRPC_DIR / f"{stem}_pb2_grpc.py").read_text()
        assert all(re.search(p, pb2) for p, _ in STAMPS[:2]), proto
        assert re.search(STAMPS[2][0], grpc_stub), proto


def _minimum(requirement_prefix: str) -> tuple[int, ...]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{requirement_prefix}\s*>=", d))
    return tuple(int(p) for p in re.search(r">=\s*([0-9.]+)", spec).group(1).split("."))


@pytest.mark.parametrize("proto", PROTOS)
def test_committed_stamps_match_the_declared_runtime_minimums(proto: str) -> None:
    """The stubs refuse older runtimes than their stamps; pyproject must not promise them."""
    stem = proto.removesuffix(".proto")
    pb2 = (GRPC_DIR / f"{stem}_pb2.py").read_text()
    protobuf = re.search(r"# Protobuf Python Version: ([0-9.]+)", pb2).group(1)
    grpc_stub = (GRPC_DIR / f"{stem}_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub).group(1)
    assert _minimum("protobuf") >= tuple(int(p) for p in protobuf.split("."))
    assert _minimum("grpcio") >= tuple(int(p) for p in grpc_version.split("."))
