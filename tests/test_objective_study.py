"""The convergence and objective benchmarks: their plans, the resumable cell runner and the
adoption rule (benchmarks/cells.py, convergence.py, objective_study.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import convergence
import objective_study
from cells import Cell, collect, eval_path, run_cell

from sculptserve.offline.evaluation import EvalConfig

TINY_EVAL = EvalConfig(
    regressors=("linear",), lps_samples=200, mmd_samples=100, n_permutations=10,
    n_train=100, n_test=50,
)  # fmt: skip


def test_queue_holds_every_cell_and_each_run_only_grows():
    """Every planned cell is queued once, and a run dir's checkpoints only ever extend (the
    runner refuses to score a step its run has already trained past)."""
    plan = objective_study.queue(with_convergence=True)
    keys = [(c.name, c.checkpoints) for c in plan]
    assert len(keys) == len(set(keys))
    wanted = (
        objective_study.objective_cells()
        + objective_study.prior_cells()
        + convergence.budget_cells()
        + convergence.width_cells()
        + convergence.tail_cells()
    )
    queued_steps: dict[str, set[int]] = {}
    for cell in plan:
        queued_steps.setdefault(cell.name, set()).update(cell.checkpoints)
    for cell in wanted:
        assert set(cell.checkpoints) <= queued_steps[cell.name], cell.name
    scored: dict[str, set[int]] = {}
    for cell in plan:  # a later cell asks only for scored steps or for steps past them
        before = scored.setdefault(cell.name, set())
        assert all(s in before or s >= max(before, default=0) for s in cell.checkpoints)
        before.update(cell.checkpoints)
    # the paper's objective at the standard budget is the convergence run itself
    paper = [c for c in objective_study.objective_cells() if c.label == "paper"]
    assert {c.name for c in paper} == {f"budget/mmd-imq/s{s}" for s in objective_study.SEEDS}


def test_equal_configs_share_a_run():
    options = {"marginal": 1.0, "independence": 1.0}
    assert objective_study.run_name(options, 0) == objective_study.run_name(
        dict(reversed(options.items())), 0
    )
    assert objective_study.run_name({}, 2) == "budget/mmd-imq/s2"


def record(label: str, seed: int, lps: float, nmse: float) -> dict:
    return {
        "group": "objective",
        "label": label,
        "seed": seed,
        "step": objective_study.STANDARD_STEPS,
        "eval": {"lps_lgbm": lps, "nmse_db": nmse},
    }


def test_adoption_rule_wants_lower_lps_within_half_a_db():
    paper = [record("paper", s, 0.20, -7.0) for s in range(3)]
    better = [record("+marginal", s, 0.15, -6.7) for s in range(3)]  # +0.3 dB: within budget
    costly = [record("+independence", s, 0.10, -6.0) for s in range(3)]  # +1 dB: too costly
    worse = [record("+prior x4", s, 0.25, -7.5) for s in range(3)]
    assert objective_study.verdict(better, paper).endswith("adopt")
    assert objective_study.verdict(costly, paper).endswith("no")
    assert objective_study.verdict(worse, paper).endswith("no")
    text = objective_study.markdown(paper + better + costly + worse)
    assert "| +marginal | 0.150 ± 0.000 |" in text
    assert "-0.050 / +0.30 dB: adopt" in text


def test_report_keeps_saved_scores_of_runs_no_longer_on_disk():
    fresh = {"name": "objective/independence=2.0/s0", "step": 1600, "eval": {"lps_lgbm": 0.1}}
    stale = {**fresh, "eval": {"lps_lgbm": 0.9}}
    gone = {"name": "budget/mmd-imq/s0", "step": 1600, "eval": {"lps_lgbm": 0.2}}
    assert objective_study.merged([fresh], [stale, gone]) == [fresh, gone]


def test_cell_trains_in_segments_scores_each_checkpoint_once_and_resumes(tmp_path):
    options = {"width": 4, "batch_size": 16, "latent_dim": 2, "objective": "mmd"}
    cell = Cell("budget/tiny/s0", "budget", "tiny", 0, (2, 4), options)
    records = run_cell(cell, tmp_path, TINY_EVAL)
    assert [r["step"] for r in records] == [2, 4]
    assert [r["samples"] for r in records] == [32, 64]
    assert all(r["eval"]["nmse_db"] is not None for r in records)
    summary = json.loads((tmp_path / cell.name / "summary.json").read_text())
    assert summary["step"] == 4
    first = eval_path(tmp_path, cell, 2).read_text()
    longer = Cell(cell.name, "budget", "tiny", 0, (2, 4, 6), options)
    records = run_cell(longer, tmp_path, TINY_EVAL)  # resumes at 4, scores only 6
    assert [r["step"] for r in records] == [2, 4, 6]
    assert eval_path(tmp_path, cell, 2).read_text() == first
    assert json.loads((tmp_path / cell.name / "summary.json").read_text())["step"] == 6
    killed = Cell("budget/killed/s0", "budget", "tiny", 0, (2,), options)
    (tmp_path / killed.name).mkdir(parents=True)  # a run killed before its first checkpoint
    (tmp_path / killed.name / "config.json").write_text("{}")
    assert [r["step"] for r in run_cell(killed, tmp_path, TINY_EVAL)] == [2]
    relabelled = Cell(cell.name, "objective", "paper", 0, (4,), options)
    assert [(r["group"], r["label"]) for r in collect([relabelled], tmp_path)] == [
        ("objective", "paper")
    ]
