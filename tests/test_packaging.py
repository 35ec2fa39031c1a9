"""Packaging basics: license file, PEP 561 marker, `python -m sculptserve`, and what the wheel
installs (everything inside the sculptserve namespace)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_file_matches_the_declared_license() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150
    # setuptools reads the SPDX `license` string from version 77 on
    (requirement,) = [r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    assert tuple(int(p) for p in re.search(r">=\s*(\d+)", requirement).groups()) >= (77,)


def test_typed_marker_ships() -> None:
    assert (REPO / "sculptserve" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["sculptserve"]


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sculptserve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "train" in proc.stdout and "Usage:" in proc.stdout


def _package_folders() -> dict[str, Path]:
    """Every package of the distribution, by import name -> its folder in the repository."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    roots = {"sculptserve": REPO / "sculptserve"}
    roots.update({name: REPO / folder for name, folder in mapping.items()})
    found = {}
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found[".".join((name, *parts))] = init.parent
    return found


def test_every_package_folder_is_listed() -> None:
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == set(_package_folders())


def test_the_wheel_installs_everything_inside_the_sculptserve_namespace(tmp_path: Path) -> None:
    """No generic top-level names (training, export) in site-packages: a built wheel holds
    sculptserve/ and its dist-info only, with the torch side at sculptserve/training|export."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("sculptserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sculptserve", next(t for t in top if t.endswith(".dist-info"))}
    for path in (
        "sculptserve/training/trainer.py",
        "sculptserve/training/data/shapes.py",
        "sculptserve/export/writer.py",
        "sculptserve/serving/grpc/sculpt.proto",
        "sculptserve/serving/grpc/sculpt_pb2.pyi",
        "sculptserve/py.typed",
    ):
        assert path in names, path
    # every module of every package made it in
    for name, folder in _package_folders().items():
        for module in folder.glob("*.py"):
            assert "/".join([*name.split("."), module.name]) in names, module
