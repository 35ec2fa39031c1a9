"""Time LPS for each regressor on n = 10,000 latents of d = 64 (the issue's benchmark size).

    python benchmarks/bench_lps.py [--n 10000] [--d 64] [--regressors linear lgbm mlp]

Prints a markdown table for benchmarks/RESULTS.md. The data is a fixed-seed mix of
independent and dependent dimensions so the learned regressors do real work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.stats.lps import REGRESSORS, latent_predictability


def make_latents(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Gaussian latents where every fourth dimension depends non-linearly on its neighbour."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    z[:, 1::4] = np.sin(2 * z[:, 0::4][:, : z[:, 1::4].shape[1]]) + 0.3 * z[:, 1::4]
    return z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--regressors", nargs="+", default=list(REGRESSORS))
    args = parser.parse_args()

    z = make_latents(args.n, args.d)
    print(f"machine: {describe()}\n")
    print("| regressor | n | d | seconds | LPS |")
    print("|---|---|---|---|---|")
    for name in args.regressors:
        start = time.perf_counter()
        result = latent_predictability(z, name)
        seconds = time.perf_counter() - start
        print(f"| {name} | {args.n} | {args.d} | {seconds:.2f} | {result.lps:.3f} |", flush=True)


if __name__ == "__main__":
    main()
