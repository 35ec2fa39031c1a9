"""The import-linter contracts of pyproject.toml: they hold, and they cover what they claim.

`lint-imports` (scripts/test.sh) checks the contracts; this module runs it too and checks
that the contract for "the serving side" lists every sculptserve module the service imports,
so a new serving module cannot slip past the torch ban by not being listed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

REPO = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {c["id"]: c for c in CONFIG["contracts"]}
STATISTICS = {
    "sculptserve.stats.priors",
    "sculptserve.stats.mmd",
    "sculptserve.stats.lps",
    "sculptserve.stats.scores",
    "sculptserve.stats.disentanglement",
    "sculptserve.stats.drift_windows",
}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*CONFIG["root_packages"], include_external_packages=True)


def _covered(module: str, listed: list[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in listed)


def test_the_serving_contract_lists_every_module_the_service_imports(graph) -> None:
    contract = CONTRACTS["serving-torch-free"]
    assert {"torch", "training", "export"} <= set(contract["forbidden_modules"])
    serving = {
        m
        for m in graph.find_upstream_modules("sculptserve.serving.http.service")
        if m.startswith("sculptserve")
    } | {"sculptserve.serving.http.service"}
    missing = sorted(m for m in serving if not _covered(m, contract["source_modules"]))
    assert not missing, f"serving modules missing from the contract: {missing}"


def test_the_statistics_contract_forbids_every_serving_module(graph) -> None:
    serving = set(CONTRACTS["serving-torch-free"]["source_modules"])
    contract = CONTRACTS["statistics-standalone"]
    assert set(contract["source_modules"]) >= STATISTICS
    # the statistics are shared with serving; everything else the service imports is serving
    forbidden = set(contract["forbidden_modules"])
    shared = set(contract["source_modules"]) | {"sculptserve.files"}
    assert serving - shared <= forbidden
    assert {"torch", "training", "export", "bentoml", "grpc", "onnxruntime"} <= forbidden


def test_lint_imports_passes() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (dev extra)")
    # this checkout's packages, whatever an editable install elsewhere points to
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [exe, "--no-cache"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
