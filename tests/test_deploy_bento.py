"""`bentoml build` of bentofile.yaml (CPU) and bentofile.gpu.yaml (GPU), for real.

Each build runs in a subprocess with a temporary BENTOML_HOME whose model store holds a toy
bundle imported the way `sculpt export --bentoml` does (the bentofiles list the bundle as a
model, so a build needs one). BentoML locks the Python packages at build time (uv resolving
against PyPI), so the requirements checked here are the complete set the image installs.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy_support import (
    MODEL_NAME,
    REPO,
    build_bento,
    find,
    import_toy_bundle,
    pod_spec,
    render,
)


def requirement_names(text: str) -> set[str]:
    """Normalized package names of a requirements file (options and comments skipped)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group()).lower())
    return names


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("bentoml-home")
    tag = import_toy_bundle(home, tmp_path_factory.mktemp("bundle") / "embedder")
    return home, tag


def _bento_yaml(bento: Path) -> dict[str, Any]:
    return yaml.safe_load((bento / "bento.yaml").read_text(encoding="utf-8"))


def _check_common(bento: Path, model_tag: str) -> None:
    info = _bento_yaml(bento)
    assert [m["tag"] for m in info["models"]] == [model_tag]  # `latest` pinned at build time
    envs = {e["name"]: e["value"] for e in info["envs"]}
    assert envs["SCULPT_BUNDLE"] == MODEL_NAME == model_tag.split(":")[0]
    assert envs["BENTOML_DO_NOT_TRACK"] == "true"
    src = bento / "src"
    assert (src / "sculptserve" / "serving" / "http" / "service.py").is_file()
    for torch_side in ("training", "export"):
        assert not (src / torch_side).exists() and not (src / "sculptserve" / torch_side).exists()
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    # The Deployment runs as the image's bentoml user.
    uid = pod_spec(find(render("overlays/cpu"), "Deployment"))["securityContext"]["runAsUser"]
    assert f"BENTO_USER_UID={uid}" in dockerfile
    assert "ENV SCULPT_BUNDLE=$SCULPT_BUNDLE" in dockerfile


def _check_no_torch(names: set[str]) -> None:
    assert {"numpy", "bentoml", "prometheus-client", "grpcio"} <= names, "not the serving set?"
    assert "cryptography" in names, "serving verifies bundle signatures (sculptserve.bundle.digest)"
    torchy = sorted(n for n in names if n.startswith(("torch", "pytorch", "triton")))
    assert not torchy, f"the serving image must not install {torchy}"


def test_cpu_bento_builds_without_torch(store: tuple[Path, str]) -> None:
    home, model_tag = store
    bento = build_bento(home, "bentofile.yaml")
    _check_common(bento, model_tag)
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    pinned = [line for line in requirements.splitlines() if line and not line.startswith("-")]
    assert pinned and all("==" in line for line in pinned), "packages are locked"
    names = requirement_names(requirements)
    _check_no_torch(names)
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert _bento_yaml(bento)["image"]["base_image"].startswith("python:3.11")


def test_gpu_bento_builds_without_torch(store: tuple[Path, str]) -> None:
    home, model_tag = store
    bento = build_bento(home, "bentofile.gpu.yaml")
    assert bento.parent.name == "sculpt-gpu"
    _check_common(bento, model_tag)
    locked = (bento / "env" / "python" / "requirements.lock.txt").read_text()
    names = requirement_names(locked)
    _check_no_torch(names)
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names  # one import name
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.\S+-cudnn-runtime", dockerfile, re.MULTILINE)


def test_bentofiles_follow_pyproject() -> None:
    """The Bento installs the serving dependencies of pyproject.toml (BentoML adds itself),
    with the CPU or GPU ONNX Runtime extra; the two bentofiles differ only in that."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serving = {d.replace(" ", "") for d in project["dependencies"] if not d.startswith("bentoml")}
    serving = {re.sub(r"\s*#.*", "", d) for d in serving}
    extras = project["optional-dependencies"]
    cpu = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    gpu = yaml.safe_load((REPO / "bentofile.gpu.yaml").read_text())
    assert set(cpu["python"]["packages"]) == serving | set(extras["cpu"])
    assert set(gpu["python"]["packages"]) == serving | set(extras["gpu"])
    for key in ("service", "include", "models", "envs"):
        assert cpu[key] == gpu[key], key
    assert cpu["models"] == [f"{MODEL_NAME}:latest"]
    assert gpu["docker"]["cuda_version"] and "cuda_version" not in cpu["docker"]
