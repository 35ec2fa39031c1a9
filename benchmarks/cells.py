"""Train-and-score cells for the convergence and objective benchmarks, resumable to the step.

A *cell* is one training run (options on top of :data:`BASE`, one seed) scored with
``sculpt eval``'s core at a list of checkpoint steps. The run is trained segment by segment
(``train(max_steps=s1)``, then ``--resume`` to s2, ...): the trainer's steps are pure
functions of (seed, step) and the optimizer and RNG state travel in the checkpoint, so the
model at step s is the one a straight run to s would have, and one run gives the whole curve.

Each scored checkpoint is written at once to ``RUN/evals/step-XXXXXXXX.json``; a cell that is
interrupted (Ctrl-C, a killed session) resumes from its last checkpoint and skips every step
already scored. :func:`run_cells` runs cells on ``jobs`` processes with the cores split
evenly (one thread each on 2 cores: two 1-thread runs train ~1.3x faster than one 2-thread
run here).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sculptserve.offline.evaluation import EvalConfig

# The CPU-trainable size of issue 11: 32x32 shapes, d = 5 (the paper's dSprites), conv width 16.
BASE: dict[str, Any] = {
    "data": "shapes",
    "image_size": 32,
    "latent_dim": 5,
    "width": 16,
    "batch_size": 256,
    "lr": 1e-3,
    "kernel": "imq",
    "independence": 0.0,  # the paper's objective unless a cell turns the term on
}
# Every cell is scored the same way: LPS-lgbm on 10k rows as `sculpt eval` does; LPS-mlp on
# 3k rows and the supervised metrics on 5k / 2.5k rows (the full sizes cost ~30 s a checkpoint).
EVAL = EvalConfig(
    lps_samples=10_000,
    lps_mlp_samples=3_000,
    mmd_samples=1_000,
    n_permutations=200,
    n_train=5_000,
    n_test=2_500,
)
KEYS = (
    "lps_linear",
    "lps_lgbm",
    "lps_mlp",
    "nmse_db",
    "mmd2",
    "ks_max",
    "mig",
    "dci_disentanglement",
    "dci_informativeness",
    "sap",
    "factorvae_score",
    "total_correlation",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Cell:
    """One run: ``name`` is its folder under the benchmark's out dir."""

    name: str
    group: str
    label: str  # what the cell varies, as shown in tables and plots
    seed: int
    checkpoints: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def config(self, out: Path, step: int) -> Any:
        from sculptserve.training.config import TrainConfig

        return TrainConfig(
            out=str(out / self.name),
            **{**BASE, **self.options},
            seed=self.seed,
            max_steps=step,
            device="cpu",
            val_size=1024,
            val_every=10**9,  # validate at the end of each segment only
            checkpoint_every=200,  # a killed run loses at most 200 steps
            report=False,
        )


def eval_path(out: Path, cell: Cell, step: int) -> Path:
    return out / cell.name / "evals" / f"step-{step:08d}.json"


def trained_step(run_dir: Path) -> int:
    """The step the run's weights.safetensors is at (0: nothing trained yet)."""
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text())["step"] if summary.exists() else 0


def score(run_dir: Path, evaluation: EvalConfig = EVAL) -> tuple[dict[str, Any], float]:
    from sculptserve.offline.evaluation import evaluate
    from sculptserve.offline.sources import EvalRequest, load_eval_inputs

    start = time.perf_counter()
    _, inputs = load_eval_inputs(EvalRequest(str(run_dir), evaluation))
    result = evaluate(inputs, evaluation)
    values = {k: result.get(k) for k in KEYS}
    values["ks_per_dim"] = result["per_dim"].get("ks")
    return values, time.perf_counter() - start


def train_resumable(config: Any) -> dict[str, Any]:
    """Train ``config.out`` to ``config.max_steps``, resuming a run that was stopped part-way
    (a killed session, or an earlier segment); return the trainer's summary."""
    from sculptserve.training.checkpoint import latest_checkpoint
    from sculptserve.training.trainer import train

    run_dir = Path(config.out)
    if (run_dir / "config.json").exists() and latest_checkpoint(run_dir) is None:
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
    resume = (run_dir / "config.json").exists()
    return train(config, resume=resume, explicit={"max_steps"}, progress=False)


def run_cell(cell: Cell, out: Path, evaluation: EvalConfig = EVAL) -> list[dict[str, Any]]:
    """Train ``cell`` through its checkpoints, scoring each once; return its records."""
    from sculptserve.training.config import ConfigError

    run_dir = out / cell.name
    records = []
    for step in sorted(cell.checkpoints):
        path = eval_path(out, cell, step)
        if path.exists():
            records.append(json.loads(path.read_text()))
            continue
        at = trained_step(run_dir)
        if at > step:
            raise ConfigError(f"{run_dir} is at step {at}, past the unscored checkpoint {step}")
        summary = train_resumable(cell.config(out, step)) if at < step else {}
        values, eval_s = score(run_dir, evaluation)
        record = {
            **asdict(cell),
            "step": step,
            "samples": step * {**BASE, **cell.options}["batch_size"],
            "eval": values,
            "segment_samples_per_s": summary.get("samples_per_s"),
            "eval_s": round(eval_s, 1),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        records.append(record)
    return records


def collect(cells: list[Cell], out: Path) -> list[dict[str, Any]]:
    """Every record on disk for ``cells`` (finished or not), in plan order, labelled as the
    asking cell labels it (one run may serve two benchmarks under two names)."""
    return [
        {**json.loads(eval_path(out, c, s).read_text()), "group": c.group, "label": c.label}
        for c in cells
        for s in sorted(c.checkpoints)
        if eval_path(out, c, s).exists()
    ]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_cells(cells: list[Cell], out: Path, jobs: int) -> list[str]:
    """Run every cell, in order, on ``jobs`` processes; return the errors (one failure never
    stops the rest: the other cells' hours of training are kept).

    The same run may appear twice (e.g. to 1600 steps early in the plan, to 6400 late): a
    cell waits while another cell of its run dir is running.
    """
    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // jobs)
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    errors: list[str] = []
    waiting = list(cells)
    running: dict[Future, Cell] = {}
    context = get_context("spawn")
    with (
        ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                            initargs=(threads,)) as pool,
        tqdm(total=len(cells), unit="cell") as bar,
    ):  # fmt: skip
        while waiting or running:
            busy = {c.name for c in running.values()}
            for cell in list(waiting):
                if len(running) < jobs and cell.name not in busy:
                    waiting.remove(cell)
                    busy.add(cell.name)
                    running[pool.submit(run_cell, cell, out)] = cell
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                try:
                    future.result()
                except Exception as exc:
                    errors.append(f"{cell.name}: {type(exc).__name__}: {exc}")
                    tqdm.write(errors[-1])
                bar.set_postfix_str(cell.name)
                bar.update()
    return errors
