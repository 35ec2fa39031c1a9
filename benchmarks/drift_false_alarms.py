"""False-alarm rate of the drift monitor on a trained model's in-distribution traffic.

    python benchmarks/drift_false_alarms.py --bundle BUNDLE_DIR [--windows 150]

Feeds disjoint windows of held-out `shapes` images (rows the export did not use) through the
service core and counts windows whose statistics fired and windows in the `drift` state
(default rule: two fired windows in a row). Prints one markdown row for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.drift import DriftConfig
from sculptserve.training.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--windows", type=int, default=150)
    parser.add_argument("--every", type=int, default=None, help="default: the window (disjoint)")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    cal = bundle.manifest.drift
    every = args.every or cal.window
    app = EmbeddingApp(
        bundle,
        drift_config=DriftConfig(every=every),
        metrics_registry=CollectorRegistry(),
        background_drift=False,
    )
    val = load_dataset("shapes", split="val")
    reserved = 2 * bundle.manifest.reference.n + 4 * cal.window  # generous: what export drew
    used = np.random.default_rng(0).permutation(len(val))[:reserved]
    rows = np.random.default_rng(1).permutation(np.setdiff1d(np.arange(len(val)), used))
    needed = cal.window + (args.windows - 1) * every
    if needed > len(rows):
        raise SystemExit(f"only {len(rows)} fresh rows for {needed} needed")
    fired = alerts = evaluated = 0
    for start in range(0, needed, every):
        z = app.runtime.encode(val.get_batch(rows[start : start + every]))
        app.monitor.observe(z)
        report = app.drift()
        if report["windows_evaluated"] > evaluated:
            evaluated = report["windows_evaluated"]
            fired += bool(report["fired"])
            alerts += report["state"] == "drift"
    print(f"machine: {describe()}")
    print("| bundle | window | every | windows | calibrated rate | fired | alert |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {bundle.manifest.name} | {cal.window} | {every} | {evaluated} | "
        f"{cal.false_alarm_rate} per statistic | {fired / evaluated:.4f} | "
        f"{alerts / evaluated:.4f} |"
    )


if __name__ == "__main__":
    main()
