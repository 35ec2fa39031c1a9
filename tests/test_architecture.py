"""The import-linter contracts of pyproject.toml: they hold, and they cover what they claim.

`scripts/lint_imports.py` (run by scripts/test.sh) checks the contracts on the installed layout;
this module runs it too, checks that a deliberate violation is caught, and that the contract
for "the serving side" covers every sculptserve module the service imports, so a new serving
module cannot slip past the torch ban by living outside the listed packages.
"""

from __future__ import annotations

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
    assert {"torch", "sculptserve.training", "sculptserve.export"} <= set(
        contract["forbidden_modules"]
    )
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
    assert all(_covered(m, contract["source_modules"]) for m in STATISTICS)
    # the statistics are shared with serving; everything else the service imports is serving
    forbidden = set(contract["forbidden_modules"])
    shared = set(contract["source_modules"]) | {"sculptserve.files"}
    assert serving - shared <= forbidden
    assert {"torch", "sculptserve.training", "sculptserve.export"} <= forbidden
    assert {"bentoml", "grpc", "onnxruntime"} <= forbidden


def _lint(repo: Path) -> subprocess.CompletedProcess:
    if (
        not shutil.which("lint-imports")
        and not Path(sys.executable).with_name("lint-imports").exists()
    ):
        pytest.skip("import-linter is not installed (dev extra)")
    script = repo / "scripts" / "lint_imports.py"
    return subprocess.run(
        [sys.executable, str(script), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_lint_imports_passes() -> None:
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("serving/core.py", "import torch", "sculptserve.serving.core -> torch"),
        (
            "serving/runtime.py",
            "from sculptserve.training import config",
            "sculptserve.serving.runtime -> sculptserve.training.config",
        ),
        ("stats/mmd.py", "import onnxruntime", "sculptserve.stats.mmd -> onnxruntime"),
    ],
)
def test_a_deliberate_violation_breaks_a_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    """The check sees the installed layout, training/ included: a copy of the repository with
    one forbidden import added fails it, naming the import."""
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".venv", "study-runs", "runs", ".git")
    for name in ("sculptserve", "training", "export", "scripts"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "sculptserve" / module
    target.write_text(target.read_text() + f"\n{line}  # a deliberate violation\n")
    proc = _lint(copy)
    assert proc.returncode != 0
    assert broken in proc.stdout, proc.stdout[-3000:]
