"""Time MMD^2 (sculptserve.stats.mmd): torch forward+backward, numpy forward, permutation test.

Usage: python benchmarks/bench_mmd.py [--batch 512] [--dim 64] [--repeats 20] [--threads N]
Prints the machine info and a markdown table (median of the repeats, after warm-up).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sculptserve.stats.mmd import mmd2, permutation_test

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model

try:
    import torch
except ImportError:  # the serving install has no torch: time the numpy rows only
    torch = None


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    info = threadpool_info()
    return ", ".join(f"{i['internal_api']}={i['num_threads']}" for i in info) or "none"


def time_ms(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    """Median and minimum wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512, help="rows in x and in y")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--perm-n", type=int, default=256, help="rows per sample, permutation test")
    ap.add_argument("--perm-b", type=int, default=500, help="permutations")
    ap.add_argument("--perm-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()

    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.dim)).astype(args.dtype)
    y = rng.normal(size=(args.batch, args.dim)).astype(args.dtype)

    rows: list[tuple[str, str, str, str, float, float]] = []
    for kernel in ("rbf", "imq"):
        for est in ("unbiased", "linear"):
            if torch is not None:
                xt = torch.from_numpy(x).requires_grad_()
                yt = torch.from_numpy(y)

                def step(xt=xt, yt=yt, kernel=kernel, est=est) -> None:
                    xt.grad = None
                    mmd2(xt, yt, kernel, est).backward()

                med, best = time_ms(step, args.repeats, args.warmup)
                rows.append(("torch CPU", kernel, est, "fwd+bwd", med, best))
            med, best = time_ms(lambda k=kernel, e=est: mmd2(x, y, k, e), args.repeats, args.warmup)
            rows.append(("numpy", kernel, est, "fwd", med, best))

    px = rng.normal(size=(args.perm_n, args.dim))
    py = rng.normal(size=(args.perm_n, args.dim))
    for kernel in ("rbf", "imq"):
        med, best = time_ms(
            lambda k=kernel: permutation_test(px, py, k, n_permutations=args.perm_b),
            args.perm_repeats,
            1,
        )
        rows.append(("numpy", kernel, "unbiased", f"perm test B={args.perm_b}", med, best))

    print("## MMD^2 benchmark (sculptserve.stats.mmd)\n")
    print(f"- CPU: {cpu_model()}")
    print(f"- cores visible: {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()})")
    print(f"- Python {platform.python_version()}, numpy {np.__version__}, BLAS threads: ", end="")
    print(blas_threads())
    if torch is not None:
        print(f"- torch {torch.__version__}, intra-op threads {torch.get_num_threads()}")
    else:
        print("- torch: not installed")
    print(
        f"- x, y: {args.batch} x {args.dim} each ({args.dtype}); permutation test: "
        f"{args.perm_n} + {args.perm_n} rows, float64; median of {args.repeats} repeats "
        f"({args.perm_repeats} for the permutation test) after warm-up\n"
    )
    print("| backend | kernel | estimator | pass | median ms | min ms |")
    print("|---|---|---|---|---:|---:|")
    for backend, kernel, est, what, med, best in rows:
        print(f"| {backend} | {kernel} | {est} | {what} | {med:.2f} | {best:.2f} |")


if __name__ == "__main__":
    main()
