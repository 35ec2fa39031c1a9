"""Check the import contracts of pyproject.toml on the package as it installs.

training/ and export/ live beside sculptserve/ in the repository and install inside it
(`sculptserve.training`, `sculptserve.export`: pyproject's `[tool.setuptools] package-dir`).
import-linter's graph builder (grimp) finds a package's modules by walking its folder, so on
the repository it would not see those two. This builds the installed layout from symbolic
links in a temporary folder and runs `lint-imports` on it; arguments pass through.

    python scripts/lint_imports.py [--no-cache] [--verbose]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_PACKAGE = "sculptserve"


def installed_layout(into: Path) -> Path:
    """``into/sculptserve`` as an install lays it out, made of links into the repository."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = into / ROOT_PACKAGE
    package.mkdir()
    for entry in (REPO / ROOT_PACKAGE).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in setuptools.get("package-dir", {}).items():
        parent, _, child = name.rpartition(".")
        if parent != ROOT_PACKAGE:
            raise SystemExit(f"pyproject package-dir {name!r}: only {ROOT_PACKAGE}.X is supported")
        (package / child).symlink_to(REPO / folder)
    return into


def main(argv: list[str]) -> int:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    with tempfile.TemporaryDirectory(prefix="sculpt-lint-") as tmp:
        layout = installed_layout(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(layout)}
        # cwd: the layout, so the repository's own sculptserve/ is not found first
        command = [exe, *argv, str(REPO / "pyproject.toml")]
        return subprocess.run(command, cwd=layout, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
