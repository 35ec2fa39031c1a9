"""Training throughput on `shapes` and the trainer's overhead over a bare loop.

    python benchmarks/bench_train.py [--steps 40] [--objectives mmd vae] [--threads 2]
    python benchmarks/bench_train.py --image-size 64 --latent-dim 8 --width 32 --batch-size 64

Defaults: the standard CPU size of benchmarks/cells.py (32x32, d = 5, width 16, batch 256,
imq kernel).

For each objective: (1) a minimal hand-written loop (same model, data, batch rows, prior batches and
loss; nothing else), (2) `sculptserve.training.trainer.train` on the same config, timed from its own
metrics.jsonl (`elapsed_s` between the first and last logged step, so set-up and the step-0
validation are excluded, while logging, progress and checkpointing are included). Prints a markdown
table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.training.config import TrainConfig
from sculptserve.training.data import load_dataset
from sculptserve.training.models import build_autoencoder
from sculptserve.training.objectives import RegularizerInput
from sculptserve.training.trainer import batch_rows, make_objective, make_prior, prior_batch, train


def bare_loop(config: TrainConfig, steps: int, warmup: int) -> float:
    """Samples/s of the smallest loop that does the same work per step."""
    data = load_dataset(config.data, split="train", seed=config.seed, image_size=config.image_size)
    objective = make_objective(config)
    prior = make_prior(config, objective)
    torch.manual_seed(config.seed)
    model = build_autoencoder(
        data.input_shape, config.latent_dim, stochastic=objective.stochastic, width=config.width
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    n_features = int(torch.tensor(data.input_shape).prod())
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        rows = batch_rows(step, len(data), config.batch_size, config.seed)
        x = torch.as_tensor(data.get_batch(rows))
        out = model(x)
        reg, _ = objective.regularizer(
            RegularizerInput(
                z=out["z"],
                mean=out["mean"],
                logvar=out["logvar"],
                z_global=out["z"],
                prior_samples=prior_batch(prior, config.batch_size, config.seed, step, "cpu")
                if objective.needs_prior
                else None,
                n_features=n_features,
                dataset_size=len(data),
            )
        )
        loss = F.mse_loss(out["recon"], x) + reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * config.batch_size / (time.perf_counter() - start)


def trainer_loop(config: TrainConfig) -> float:
    """Samples/s of the real trainer, from its own log."""
    train(config, progress=False)
    records = [
        r
        for r in map(json.loads, (Path(config.out) / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    first, last = records[0], records[-1]
    steps = last["step"] - first["step"]
    return steps * config.batch_size / (last["elapsed_s"] - first["elapsed_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=5)
    parser.add_argument("--kernel", default="imq")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--objectives", nargs="+", default=["mmd", "vae"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {describe()}\n")
    print(f"{args.image_size}x{args.image_size}, d = {args.latent_dim}, kernel {args.kernel}\n")
    print("| objective | batch | width | bare loop samples/s | trainer samples/s | overhead |")
    print("|---|---|---|---|---|---|")
    for name in args.objectives:
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig(
                out=str(Path(tmp) / "run"),
                objective=name,
                image_size=args.image_size,
                latent_dim=args.latent_dim,
                kernel=args.kernel,
                batch_size=args.batch_size,
                width=args.width,
                max_steps=args.warmup + args.steps,
                log_every=args.warmup,
                val_every=10**9,
                val_size=256,
                checkpoint_every=10**9,
                report=False,
            )
            bare = bare_loop(config, args.steps, args.warmup)
            real = trainer_loop(config)
        overhead = 100 * (bare / real - 1)
        print(
            f"| {name} | {args.batch_size} | {args.width} | {bare:.1f} | {real:.1f} "
            f"| {overhead:+.1f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
