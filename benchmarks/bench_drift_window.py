"""CPU per drift-window evaluation: incremental (the service's) vs scored from scratch.

    python benchmarks/bench_drift_window.py --bundle BUNDLE_DIR [--evaluations 300]

Uses the bundle's drift calibration (kernel, window, every, reference rows) and its reference;
feeds ``every`` new rows of standard-normal latents per evaluation, as the service slides its
window, into :class:`IncrementalWindowScorer` (push + score), then scores the same windows
from scratch with :meth:`WindowScorer.score`. Process CPU time, single-threaded BLAS.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in the service's workers

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.bundle.load import load_bundle
from sculptserve.stats.drift_windows import IncrementalWindowScorer, WindowScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--evaluations", type=int, default=300)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    cal = bundle.manifest.drift
    window, every = cal.window, cal.every or cal.window // 2
    reference = bundle.reference()[: cal.reference_rows]
    scorer = WindowScorer(reference, cal.kernel)
    incremental = IncrementalWindowScorer(scorer, window)
    rng = np.random.default_rng(0)
    dim = reference.shape[1]
    incremental.push(rng.standard_normal((window, dim)))
    batches = [rng.standard_normal((every, dim)) for _ in range(args.evaluations)]
    windows = []
    t0 = time.process_time()
    for rows in batches:
        incremental.push(rows)
        incremental.score()
        windows.append(incremental.rows.copy())
    inc = (time.process_time() - t0) / args.evaluations
    t0 = time.process_time()
    for w in windows:
        scorer.score(w)
    scratch = (time.process_time() - t0) / args.evaluations
    print(f"machine: {describe()}")
    print(
        f"bundle {bundle.manifest.name}: kernel {cal.kernel}, window {window} every {every}, "
        f"{len(reference)} reference rows, latent {dim}; {args.evaluations} evaluations"
    )
    print(f"incremental: {inc * 1e3:.2f} ms per evaluation, {inc / every * 1e6:.1f} us/embedding")
    print(f"from scratch: {scratch * 1e3:.2f} ms, {scratch / every * 1e6:.1f} us/embedding")


if __name__ == "__main__":
    main()
