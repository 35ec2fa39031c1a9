"""Packaging basics: license file, PEP 561 marker, `python -m sculptserve`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
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
