"""The reproduction study's plan and its report (benchmarks/study.py, study_report.py)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from study import COPY_SOURCE, METHODS, PRIORS, SIZES, experiments, train_config
from study_report import GOALS, axes_table, headline, mean_std, rank_correlations, render_study


@pytest.mark.parametrize("size_name", sorted(SIZES))
def test_plan_covers_the_issue_with_one_budget_per_dataset(size_name, tmp_path):
    size = SIZES[size_name]
    plan = experiments(size)
    groups = Counter(e.group for e in plan)
    assert groups == {"main": 2 * len(METHODS) * 3, "prior": 2 * len(PRIORS), "align": 3, "copy": 1}
    cells = Counter((e.dataset, e.method) for e in plan if e.group == "main")
    assert set(cells.values()) == {3}  # at least 3 seeds for every method on every dataset
    assert {d for d, _ in cells} == {"shapes", "fashion-mnist"}
    names = [e.name for e in plan]
    assert len(set(names)) == len(names)
    assert COPY_SOURCE in names and names.index(COPY_SOURCE) < names.index("copy/beta-vae-bank")
    configs = [train_config(e, size, tmp_path, "cpu") for e in plan]  # every config validates
    for dataset in ("shapes", "fashion-mnist"):
        budgets = {
            (c.width, c.latent_dim, c.batch_size, c.max_steps, c.lr, c.image_size)
            for c, e in zip(configs, plan, strict=True)
            if e.dataset == dataset
        }
        assert len(budgets) == 1, budgets  # same architecture and step budget per dataset
    copy = configs[names.index("copy/beta-vae-bank")]
    assert copy.prior == f"empirical({tmp_path / COPY_SOURCE / 'val_latents.npy'})"
    beta = configs[names.index("main/shapes/beta-vae/s1")]
    assert (beta.objective, beta.beta, beta.seed) == ("beta-vae", 4.0, 1)


def record(name, group, dataset, method, seed, **ev):
    keys = ("lps_lgbm", "lps_mlp", "lps_linear", "nmse_db", "mmd2", "mig", "ks_max")
    evaluation = dict.fromkeys(keys) | ev
    return {
        "name": name,
        "group": group,
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "options": {"kernel": "rbf"},
        "depends_on": None,
        "eval": evaluation,
        "extra": {},
        "train_s": 1.0,
        "total_s": 2.0,
    }


def test_headline_states_whether_the_goal_is_met():
    main = [
        record("a", "main", "shapes", "mmd-rbf", 0, lps_lgbm=0.05, nmse_db=-15.0),
        record("b", "main", "shapes", "mmd-imq", 0, lps_lgbm=0.2, nmse_db=-15.0),
        record("c", "main", "shapes", "beta-vae", 0, lps_lgbm=0.5, nmse_db=-8.0),
        record("d", "main", "shapes", "ae", 0, lps_lgbm=0.4, nmse_db=-15.5),
    ]
    lines = headline(main)
    assert len(lines) == 2
    assert "mmd-rbf: LPS-lgbm 0.050 (<= 0.1)" in lines[0] and "**met**" in lines[0]
    assert "mmd-imq: LPS-lgbm 0.200 (> 0.1)" in lines[1] and "**not met**" in lines[1]


def test_headline_at_the_standard_size_checks_lps_mlp_and_every_mmd_variant():
    main = [
        record("a", "main", "shapes", "mmd-imq", 0, lps_lgbm=0.04, lps_mlp=0.01, nmse_db=-15.0),
        record("b", "main", "shapes", "mmd-imq-indep", 0, lps_lgbm=0.04, lps_mlp=0.2,
               nmse_db=-15.0),
        record("c", "main", "shapes", "beta-vae", 0, lps_lgbm=0.5, nmse_db=-8.0),
        record("d", "main", "shapes", "ae", 0, lps_lgbm=0.4, nmse_db=-15.6),
    ]  # fmt: skip
    lines = headline(main, GOALS["standard"])
    assert len(lines) == 2
    assert "mmd-imq: LPS-lgbm 0.040 (<= 0.05), LPS-mlp 0.010 (<= 0.05)" in lines[0]
    assert "(gap 0.60 dB): goal **not met**" in lines[0]  # 0.6 dB > 0.5 dB
    assert "mmd-imq-indep: LPS-lgbm 0.040 (<= 0.05), LPS-mlp 0.200 (> 0.05)" in lines[1]


def test_axes_table_takes_each_cells_last_checkpoint():
    def cell(label, seed, step, mig):
        return {"label": label, "seed": seed, "step": step, "checkpoints": [800, 1600],
                "eval": {"mig": mig, "dci_disentanglement": 0.1, "sap": 0.0, "ks_max": 0.03,
                         "lps_lgbm": 0.2, "nmse_db": -7.0}}  # fmt: skip

    records = [cell("laplace / paper", 0, 800, 0.9), cell("laplace / paper", 0, 1600, 0.1),
               cell("laplace / paper", 1, 1600, 0.3)]  # fmt: skip
    (row,) = [line for line in axes_table(records) if line.startswith("| laplace |")]
    assert row.startswith("| laplace | paper | 2 | 0.200 ± 0.141 |")


def test_mean_std_and_rank_correlation():
    assert mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert mean_std([]) == "n/a"
    rng = np.random.default_rng(0)
    lps = rng.uniform(0, 1, 12)
    records = [
        record(f"m{i}", "main", "shapes", "ae", i, lps_lgbm=v, mig=1 - v) for i, v in enumerate(lps)
    ]
    lines = rank_correlations(records)
    row = next(line for line in lines if line.startswith("| lps_lgbm | mig |"))
    assert "| 12 | -1.00 |" in row  # perfectly anti-monotone


def test_render_study_has_every_section():
    records = [
        record("main/shapes/mmd-rbf/s0", "main", "shapes", "mmd-rbf", 0, lps_lgbm=0.1, mig=0.2),
        record("main/shapes/ae/s0", "main", "shapes", "ae", 0, lps_lgbm=0.3, mig=0.1),
        record("main/shapes/beta-vae/s0", "main", "shapes", "beta-vae", 0, lps_lgbm=0.6, mig=0.3),
        record("prior/uniform(-5,5)/imq", "prior", "shapes", "mmd-imq", 0, ks_max=0.1),
    ]
    records[-1]["eval"]["per_dim"] = {"ks": [0.05, 0.1]}
    records[-1]["extra"]["ks_matched_gaussian"] = [0.08, 0.07]
    gaussian = record("prior/gaussian/imq", "prior", "shapes", "mmd-imq", 0)
    gaussian["eval"]["per_dim"] = {"ks": [0.05, 0.1]}
    gaussian["extra"]["ks_matched_gaussian"] = [0.05, 0.1]  # the target is that gaussian
    records.append(gaussian)
    broken = record("main/shapes/vae/s0", "main", "shapes", "vae", 0)
    records.append({**broken, "error": "DataError: no data", "eval": {}})
    meta = {
        "command": "python benchmarks/study.py --quick",
        "machine": "test machine",
        "wall_minutes": 1.0,
        "jobs": 2,
        "size": {
            "name": "quick",
            "data": {
                "shapes": {
                    "latent_dim": 5,
                    "width": 16,
                    "batch_size": 64,
                    "max_steps": 10,
                    "lr": 1e-3,
                    "image_size": 32,
                }
            },
            "eval": {},
        },
    }
    text = render_study(records, meta)
    for heading in ("## Headline", "## shapes: the paper's table", "## Does LPS track", "## Prior"):
        assert heading in text
    assert "| uniform(-5,5) | rbf | 0.05, 0.10 | 0.08, 0.07 | 1/2 |" in text
    assert "| gaussian | rbf | 0.05, 0.10 | 0.05, 0.10 | (gaussian) |" in text
    assert "- main/shapes/vae/s0: DataError: no data" in text  # listed, kept out of the tables
    assert "| vae |" not in text
