"""False alarms and detection delay of the drift monitor on a trained model's traffic.

    python benchmarks/drift_false_alarms.py --bundle BUNDLE_DIR [--windows 2000] [--every N]
        [--split train] [--shift-trials 20] [--cache DIR]

In-distribution traffic: rows of the model's data the export did not use (``--split val``:
held-out rows beyond the reference and calibration pool; ``--split train``: the training
rows, the only way to more than ~500 fresh windows on shapes' val split), encoded through the
bundle's ONNX graph and fed to a :class:`DriftMonitor` in batches of ``every`` embeddings, as
the service feeds it. Counted per evaluation: fired windows (either statistic over its
threshold), evaluations in the ``drift`` state, and alert onsets (ok -> drift), whose spacing
is the measured expected run length (ERL, embeddings between false alerts).

Detection: after a full window of normal traffic, ``1 - x`` images of the same data (inverted)
are fed; the delay is counted in evaluations from the first one whose window is entirely
inverted (1 = the first such window already raised the alert), over ``--shift-trials`` starts.
Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_traffic import encode_rows, fresh_rows
from machine import describe

from sculptserve.bundle.load import Bundle, load_bundle
from sculptserve.serving.drift import DriftConfig, DriftMonitor
from sculptserve.serving.runtime import EmbeddingRuntime, RuntimeConfig


def monitor_for(bundle: Bundle, every: int | None) -> DriftMonitor:
    return DriftMonitor(
        bundle.reference(),
        bundle.manifest.drift,
        DriftConfig(every=every),
        registry=CollectorRegistry(),
        background=False,
    )


def false_alarms(monitor: DriftMonitor, z: np.ndarray) -> dict[str, float]:
    """Feed ``z`` in batches of ``every``; rates per evaluation and the measured ERL."""
    every = monitor.report().every
    fired = alerts = onsets = evaluated = 0
    was_alert = False
    for start in range(0, len(z), every):
        monitor.observe(z[start : start + every])
        report = monitor.report()
        if report.windows_evaluated == evaluated:
            continue
        evaluated = report.windows_evaluated
        alert = report.state == "drift"
        fired += bool(report.fired)
        alerts += alert
        onsets += alert and not was_alert
        was_alert = alert
    span = evaluated * every  # embeddings over which alerts could start
    return {
        "evaluated": evaluated,
        "fired": fired / evaluated,
        "alert": alerts / evaluated,
        "onsets": onsets,
        "erl": span / onsets if onsets else float("inf"),
        "span": span,
    }


def detection_delays(
    bundle: Bundle, every: int | None, normal: np.ndarray, inverted: np.ndarray, trials: int
) -> list[int | None]:
    """Per trial, a new monitor sees one window of normal traffic, then inverted traffic:
    evaluations until ``drift``, counted from the first whose window is entirely inverted
    (None: not within 5 such windows). Trial t uses rows ``t * (window + 4 * every)`` on."""
    window = bundle.manifest.drift.window
    per_trial, delays = None, []
    for t in range(trials):
        monitor = monitor_for(bundle, every)
        step = monitor.report().every
        per_trial = window + 4 * step
        monitor.observe(normal[t * window : (t + 1) * window])
        states = []
        for start in range(t * per_trial, (t + 1) * per_trial, step):
            monitor.observe(inverted[start : start + step])
            states.append(monitor.report().state)
        full = states[-(-window // step) - 1 :]  # evaluations whose window is all inverted
        delays.append(next((i + 1 for i, s in enumerate(full) if s == "drift"), None))
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--every", type=int, default=None, help="default: the calibrated one")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--shift-trials", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=None, help="folder for encoded traffic")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    cal = bundle.manifest.drift
    runtime = EmbeddingRuntime(bundle, RuntimeConfig(max_batch=4096))
    monitor = monitor_for(bundle, args.every)
    every = monitor.report().every
    data, rows = fresh_rows(bundle, args.split)
    needed = cal.window + (args.windows - 1) * every
    shift_rows = args.shift_trials * (2 * cal.window + 4 * every)
    if needed + shift_rows > len(rows):
        raise SystemExit(f"only {len(rows)} fresh {args.split} rows for {needed + shift_rows}")
    cache = None
    if args.cache is not None:
        cache = args.cache / f"{bundle.manifest.version}-{args.split}-{needed + shift_rows}.npy"
    z = encode_rows(runtime, data, rows[: needed + shift_rows], cache)
    rates = false_alarms(monitor, z[:needed])

    normal_end = needed + args.shift_trials * cal.window
    shift = rows[normal_end : needed + shift_rows]
    inverted = np.concatenate(
        [
            runtime.encode(1.0 - data.get_batch(shift[i : i + 4096]))
            for i in range(0, len(shift), 4096)
        ]
    )
    delays = detection_delays(bundle, args.every, z[needed:normal_end], inverted, args.shift_trials)
    caught = [d for d in delays if d is not None]

    calibrated_erl = cal.expected_run_length
    print(f"machine: {describe()}")
    print(
        f"bundle {bundle.manifest.name} {bundle.manifest.version}: rule {cal.rule}, null "
        f"streams {cal.null_streams}, false_alarm_rate {cal.false_alarm_rate}, pool "
        f"{cal.pool_rows}, {cal.n_resamples} null windows; traffic: {args.split} split"
    )
    print(
        "| rule | window | every | windows | nominal | fired | alert (in drift) | onsets "
        "| ERL measured | ERL calibrated | inverted: windows to detect |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    nominal = f"{cal.false_alarm_rate} per " + ("window" if cal.rule == "combined" else "stat")
    erl = f"{rates['erl']:,.0f}" if rates["onsets"] else f"> {rates['span']:,}"
    print(
        f"| {cal.rule} | {cal.window} | {every} | {rates['evaluated']} | {nominal} | "
        f"{rates['fired']:.4f} | {rates['alert']:.4f} | {rates['onsets']} | {erl} | "
        f"{'n/a' if calibrated_erl is None else f'{calibrated_erl:,.0f}'} | "
        f"max {max(caught) if caught else '-'}, mean {np.mean(caught) if caught else 0:.2f}, "
        f"missed {len(delays) - len(caught)} of {len(delays)} |"
    )


if __name__ == "__main__":
    main()
