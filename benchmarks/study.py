"""The reproduction study: does sculpting the prior with MMD deliver independent latents?

    python benchmarks/study.py --quick [--jobs 2]     # smoke size: 2 CPU cores, < 30 minutes
    python benchmarks/study.py --standard [--jobs 2]  # the standard CPU budget (a few hours)
    python benchmarks/study.py --full --device cuda    # the paper-sized budget, for a GPU

Trains every model of the comparison with ``sculptserve.training.trainer.train`` and scores it with
``sculpt eval``'s core (:mod:`sculptserve.offline.evaluation`), then writes benchmarks/STUDY.md:

- the paper's table on ``shapes`` and ``fashion-mnist``: ``mmd`` (rbf, imq), ``ae``, ``vae``,
  ``beta-vae`` (4), ``beta-tcvae`` (4), 3 seeds each, one architecture and step budget per
  dataset: LPS-lgbm / LPS-mlp / NMSE dB / MMD^2 to the prior (mean +- std), plus MIG, DCI, SAP
  and the FactorVAE score on ``shapes``;
- the Spearman rank correlation between LPS and MIG / DCI-D over all trained ``shapes`` models;
- a prior study (gaussian, uniform(-5,5), bimodal, a per-dimension hybrid; rbf and imq):
  per-dimension KS distance to the target;
- alignment (every ``shapes`` factor tied to one latent) against no alignment;
- latent copying: an ``empirical`` prior made from another model's latents.

Runs go to ``--out`` (default ``study-runs/SIZE``); a finished run (its eval.json) is reused, so
an interrupted study resumes. Raw records go to benchmarks/study-SIZE.json; `--render-only`
rewrites STUDY.md from them, with the hand-written benchmarks/study-reading-SIZE.md if present
and the objective study's prior cells (benchmarks/objective_study.json) for the axes section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import train_resumable, trained_step
from study_report import render_study

from sculptserve.offline.evaluation import EvalConfig

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class DataPlan:
    """Architecture and step budget of every model trained on one dataset."""

    latent_dim: int
    width: int
    batch_size: int
    max_steps: int
    lr: float
    image_size: int | None = None


@dataclass(frozen=True)
class Size:
    name: str
    data: dict[str, DataPlan]
    eval: EvalConfig
    seeds: tuple[int, ...] = SEEDS
    val_size: int = 1024


# Latent sizes follow the paper (dSprites d=5, MNIST d=12). The quick size shrinks shapes to
# 32x32 and the conv width to 16 so all 48 models train and score on 2 cores in < 30 min.
SIZES = {
    "quick": Size(
        "quick",
        {
            "shapes": DataPlan(latent_dim=5, width=16, batch_size=64, max_steps=500, lr=2e-3,
                               image_size=32),
            "fashion-mnist": DataPlan(latent_dim=12, width=16, batch_size=64, max_steps=500,
                                      lr=2e-3),
        },
        EvalConfig(regressors=("linear", "lgbm", "mlp"), lps_samples=3000, lps_mlp_samples=1000,
                   mmd_samples=1000, n_permutations=200, n_train=3000, n_test=1500),
    ),
    # The standard CPU budget of benchmarks/convergence.md: 1600 steps x 256 (410k samples,
    # about 6 core-minutes a model at 32x32 shapes, width 16: 48 models in about 2.5 hours on 2
    # cores), the size of benchmarks/cells.py.
    "standard": Size(
        "standard",
        {
            "shapes": DataPlan(latent_dim=5, width=16, batch_size=256, max_steps=1600, lr=1e-3,
                               image_size=32),
            "fashion-mnist": DataPlan(latent_dim=12, width=16, batch_size=256, max_steps=1600,
                                      lr=1e-3),
        },
        EvalConfig(lps_samples=10_000, lps_mlp_samples=3_000, mmd_samples=1_000,
                   n_permutations=200, n_train=5_000, n_test=2_500),
    ),
    "full": Size(
        "full",
        {
            "shapes": DataPlan(latent_dim=5, width=32, batch_size=512, max_steps=20_000, lr=5e-4),
            "fashion-mnist": DataPlan(latent_dim=12, width=32, batch_size=512, max_steps=20_000,
                                      lr=5e-4),
        },
        EvalConfig(),
        val_size=4096,
    ),
}  # fmt: skip

# The compared methods: training options on top of the dataset plan.
METHODS: dict[str, dict[str, Any]] = {
    "mmd-rbf": {"objective": "mmd", "kernel": "rbf"},
    "mmd-imq": {"objective": "mmd", "kernel": "imq"},
    # the stronger objective of benchmarks/objective_study.md, beside the paper's (weight 1:
    # the default when the --standard study ran; `sculpt train`'s default is 2 since)
    "mmd-imq-indep": {"objective": "mmd", "kernel": "imq", "independence": 1.0},
    "ae": {"objective": "ae"},
    "vae": {"objective": "vae"},
    "beta-vae": {"objective": "beta-vae", "beta": 4.0},
    "beta-tcvae": {"objective": "beta-tcvae", "beta": 4.0},
}
# Prior study targets (5 latent dims on shapes); bimodal: modes at -5 and +5, std 1.
PRIORS = {
    "gaussian": "gaussian",
    "uniform(-5,5)": "uniform(-5,5)",
    "bimodal(5,1)": "bimodal(5,1)",
    "hybrid": "2:gaussian+2:uniform(-5,5)+1:bimodal(5,1)",
}
ALIGN = ("shape=0", "scale=1", "orientation=2", "posX=3", "posY=4")
COPY_SOURCE = "main/shapes/beta-vae/s0"  # a correlated, non-gaussian latent bank to copy
SIDE_LPS = ("linear", "lgbm")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Experiment:
    """One model to train and score; ``name`` is also its run dir under the study's out dir."""

    name: str
    group: str
    dataset: str
    method: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    depends_on: str | None = None


def experiments(size: Size) -> list[Experiment]:
    """Every model of the study, in a fixed order (pure: the plan, not the work)."""
    plan = [
        Experiment(f"main/{data}/{method}/s{seed}", "main", data, method, seed, dict(options))
        for data in size.data
        for method, options in METHODS.items()
        for seed in size.seeds
    ]
    for prior_name, spec in PRIORS.items():
        for kernel in ("rbf", "imq"):
            options = {"objective": "mmd", "kernel": kernel, "prior": spec}
            name = f"prior/{prior_name}/{kernel}"
            plan.append(Experiment(name, "prior", "shapes", f"mmd-{kernel}", 0, options))
    for seed in size.seeds:
        options = {**METHODS["mmd-rbf"], "align": list(ALIGN)}
        plan.append(Experiment(f"align/s{seed}", "align", "shapes", "mmd-rbf", seed, options))
    copy_options = {"objective": "mmd", "kernel": "imq", "copy_from": COPY_SOURCE}
    plan.append(
        Experiment("copy/beta-vae-bank", "copy", "shapes", "mmd-imq", 0, copy_options, COPY_SOURCE)
    )
    return plan


def train_config(exp: Experiment, size: Size, out: Path, device: str) -> Any:
    from sculptserve.training.config import TrainConfig

    data = size.data[exp.dataset]
    options = {k: v for k, v in exp.options.items() if k != "copy_from"}
    if "copy_from" in exp.options:
        options["prior"] = f"empirical({out / exp.options['copy_from'] / 'val_latents.npy'})"
    return TrainConfig(
        out=str(out / exp.name),
        data=exp.dataset,
        image_size=data.image_size,
        latent_dim=data.latent_dim,
        width=data.width,
        batch_size=data.batch_size,
        max_steps=data.max_steps,
        lr=data.lr,
        seed=exp.seed,
        device=device,
        val_size=size.val_size,
        val_every=data.max_steps,
        checkpoint_every=min(200, data.max_steps),  # an interrupted study loses <= 200 steps
        report=False,
        **{"independence": 0.0, **options},  # the paper's objective unless a method says
    )


def copy_statistics(copy: np.ndarray, bank: np.ndarray) -> dict[str, float]:
    """How much of a copied latent bank's shape transferred: correlation structure and LPS."""
    from sculptserve.stats.lps import latent_predictability

    corr_copy, corr_bank = np.corrcoef(copy, rowvar=False), np.corrcoef(bank, rowvar=False)
    return {
        "max_abs_corr_diff": float(np.abs(corr_copy - corr_bank).max()),
        "bank_max_abs_offdiag_corr": float(np.abs(corr_bank - np.eye(len(corr_bank))).max()),
        "bank_lps_linear": latent_predictability(bank, "linear").lps,
    }


def ks_to_matched_gaussian(z: np.ndarray, prior: Any) -> list[float]:
    """Per-dimension KS distance to a gaussian with the target's mean and variance: the shape
    an RBF-MMD fit may settle for instead of the target (the paper's uniform collapse)."""
    from scipy import stats

    from sculptserve.stats.scores import ks_statistics

    cdf = stats.norm.cdf(z, loc=prior.mean(), scale=np.sqrt(prior.var()))
    return [float(v) for v in ks_statistics(cdf)]


def top_factor_per_dim(z: np.ndarray, factors: np.ndarray) -> list[int]:
    """For each latent, the factor it shares the most normalized mutual information with."""
    from sculptserve.stats.disentanglement import discretize, entropy_nats, mutual_information_nats

    binned = discretize(z)
    scores = np.array(
        [
            [
                mutual_information_nats(binned[:, j], f) / max(entropy_nats(f), 1e-12)
                for f in factors.T
            ]
            for j in range(z.shape[1])
        ]
    )
    return [int(k) for k in scores.argmax(axis=1)]


def run_experiment(exp: Experiment, size: Size, out: Path, device: str) -> dict[str, Any]:
    """Train (unless finished) and score one experiment; returns its record."""
    from sculptserve.offline.evaluation import evaluate
    from sculptserve.offline.sources import EvalRequest, load_eval_inputs

    run_dir = out / exp.name
    cached = run_dir / "study-record.json"
    if cached.exists():
        return json.loads(cached.read_text())
    config = train_config(exp, size, out, device)
    # LPS-mlp (the costliest score) is for the paper's table; the side studies use the rest.
    evaluation = size.eval if exp.group == "main" else replace(size.eval, regressors=SIDE_LPS)
    start = time.perf_counter()
    if trained_step(run_dir) < config.max_steps:
        train_resumable(config)  # picks up a model that an interrupted study left part-trained
    train_s = time.perf_counter() - start
    _, inputs = load_eval_inputs(EvalRequest(str(run_dir), evaluation))
    result = evaluate(inputs, evaluation)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    extra: dict[str, Any] = {}
    if inputs.factors is not None:
        extra["top_factor_per_dim"] = top_factor_per_dim(inputs.embeddings, inputs.factors)
    if exp.group == "prior":
        extra["ks_matched_gaussian"] = ks_to_matched_gaussian(inputs.embeddings, inputs.prior)
    if "copy_from" in exp.options:
        bank = np.load(out / exp.options["copy_from"] / "val_latents.npy")
        extra.update(copy_statistics(inputs.embeddings, bank))
    record = {
        **asdict(exp),
        "eval": {k: v for k, v in result.items() if k not in ("config", "source")},
        "extra": extra,
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - start, 1),
    }
    cached.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def failed_record(exp: Experiment, reason: str) -> dict[str, Any]:
    """A record for an experiment that could not run: kept in the report, never fatal."""
    return {**asdict(exp), "error": reason, "eval": {}, "extra": {}, "train_s": 0, "total_s": 0}


def run_all(
    plan: list[Experiment], size: Size, out: Path, device: str, jobs: int
) -> list[dict[str, Any]]:
    """Run ``plan`` on ``jobs`` processes (cores split evenly), dependencies first.

    A failing experiment is recorded with its error (and its dependents as skipped); the rest
    of the study goes on, since hours of finished models must not be lost to one bad run.
    """
    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Spawned workers inherit these: LightGBM (OpenMP) and BLAS would otherwise each start a
    # thread per core in every worker and thrash.
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    records: dict[str, dict[str, Any]] = {}
    waiting = list(plan)
    running: dict[Future, Experiment] = {}
    context = get_context("spawn")  # no fork of a process that may hold torch threads
    with (
        ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_worker_init, initargs=(threads,)
        ) as pool,
        tqdm(total=len(plan), desc=f"study ({size.name})", unit="model") as bar,
    ):
        while waiting or running:
            for exp in [e for e in waiting if e.depends_on in records]:
                if "error" in records[exp.depends_on]:
                    waiting.remove(exp)
                    records[exp.name] = failed_record(exp, f"skipped: {exp.depends_on} failed")
                    bar.update()
            ready = [e for e in waiting if e.depends_on is None or e.depends_on in records]
            for exp in ready[: max(0, jobs - len(running))]:
                waiting.remove(exp)
                running[pool.submit(run_experiment, exp, size, out, device)] = exp
            if not running:
                if waiting:
                    missing = sorted({str(e.depends_on) for e in waiting})
                    raise RuntimeError(f"experiments wait for runs that are not planned: {missing}")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                exp = running.pop(future)
                try:
                    records[exp.name] = future.result()
                except Exception as exc:  # one bad run must not lose the others
                    records[exp.name] = failed_record(exp, f"{type(exc).__name__}: {exc}")
                    tqdm.write(f"{exp.name} failed: {records[exp.name]['error']}")
                bar.set_postfix_str(exp.name)
                bar.update()
    return [records[e.name] for e in plan]


def read_axes(md: Path) -> list[dict[str, Any]] | None:
    """The objective study's prior cells (benchmarks/objective_study.json), if present."""
    path = md.with_name("objective_study.json")
    if not path.exists():
        return None
    return [r for r in json.loads(path.read_text()) if r["group"] == "prior"]


def read_reading(md: Path, size: str) -> str | None:
    """The hand-written reading of a size's results (study-reading-SIZE.md beside STUDY.md)."""
    path = md.with_name(f"study-reading-{size}.md")
    return path.read_text() if path.exists() else None


def write_report(md: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """STUDY.md from the records, with its size's reading and the axes section's records."""
    size = meta["size"]["name"]
    md.write_text(render_study(records, meta, read_reading(md, size), read_axes(md)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--quick", action="store_const", const="quick", dest="size")
    group.add_argument("--standard", action="store_const", const="standard", dest="size")
    group.add_argument("--full", action="store_const", const="full", dest="size")
    parser.add_argument("--jobs", type=int, default=2, help="models trained at once")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--out", type=Path, help="run dirs (default study-runs/SIZE)")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "STUDY.md")
    parser.add_argument("--seeds", type=int, help="fewer seeds (smoke runs only)")
    parser.add_argument("--max-steps", type=int, help="override the step budget (smoke runs)")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite --md from study-SIZE.json, no runs"
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(args.md.with_name(f"study-{args.size}.json").read_text())
        write_report(args.md, saved["records"], saved["meta"])
        print(f"rewrote {args.md}")
        return

    size = SIZES[args.size]
    if args.seeds is not None:
        size = replace(size, seeds=tuple(range(args.seeds)))
    if args.max_steps is not None:
        size = replace(
            size, data={k: replace(v, max_steps=args.max_steps) for k, v in size.data.items()}
        )
    out = args.out or ROOT / "study-runs" / size.name
    started = time.time()
    records = run_all(experiments(size), size, out, args.device, args.jobs)
    wall = time.time() - started

    from machine import describe

    meta = {
        "command": "python " + " ".join(["benchmarks/study.py", *sys.argv[1:]]),
        "machine": describe(),
        "wall_minutes": round(wall / 60, 1),
        "size": {"name": size.name, "seeds": list(size.seeds), "val_size": size.val_size,
                 "data": {k: asdict(v) for k, v in size.data.items()},
                 "eval": asdict(size.eval)},
        "jobs": args.jobs,
    }  # fmt: skip
    raw = args.md.with_name(f"study-{size.name}.json")
    raw.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    write_report(args.md, records, meta)
    print(f"{len(records)} models in {wall / 60:.1f} min; wrote {args.md} and {raw}")


if __name__ == "__main__":
    main()
