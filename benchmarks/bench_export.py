"""Embedding throughput of the exported encoder: ONNX Runtime CPU against torch CPU.

    python benchmarks/bench_export.py [--run RUN_DIR] [--batches 1 32 256] [--repeats 15]

Builds the default `shapes` model (build_autoencoder((1, 64, 64), 8, width=32), seeded, untrained:
throughput does not depend on the weights) or loads a finished run, exports its encoder with
sculptserve.export.onnx_export, and times both runtimes on the same inputs: per batch size, a few
warm-up calls, then the median over repeats of a timed block of calls (about 256 embeddings per
block, so batch 1 is not timing a single sub-millisecond call). Both runtimes get the same intra-op
thread count (default: the cores this process may use). Prints a markdown table for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.export.onnx_export import export_module, ort_session, parity_check
from sculptserve.training.checkpoint import load_trained_model
from sculptserve.training.models import build_autoencoder

BLOCK = 256  # embeddings per timed block


def available_cores() -> int:
    """Cores this process may run on (a cpuset can be smaller than os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def throughput(call: Callable[[], object], batch: int, warmup: int, repeats: int) -> float:
    """Embeddings per second: median over ``repeats`` timed blocks after ``warmup`` calls."""
    calls = max(1, BLOCK // batch)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append(time.perf_counter() - start)
    return calls * batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="finished run dir to export")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.run is not None:
        model, source = load_trained_model(args.run), str(args.run)
    else:
        model = build_autoencoder((1, 64, 64), 8, width=32)
        source = "untrained build_autoencoder((1, 64, 64), 8, width=32)"
    encoder = model.encoder.eval()
    shape = tuple(model.input_shape)
    gen = torch.Generator().manual_seed(args.seed)
    if len(shape) == 3:
        inputs = torch.rand(max(args.batches), *shape, generator=gen)  # images live in [0, 1]
    else:
        inputs = torch.randn(max(args.batches), *shape, generator=gen)  # standardized columns
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        export_module(encoder, inputs[:2], path, input_name="x", output_name="z")
        parity = parity_check(encoder, path, inputs)
        session = ort_session(path, threads=args.threads)
        # One runtime at a time, with a pause between: an idle thread pool keeps spinning for
        # a while after a call, and on a small machine it steals the other runtime's cores.
        time.sleep(1.0)
        ort_rates, torch_rates = {}, {}
        for batch in args.batches:
            x_np = np.ascontiguousarray(inputs[:batch].numpy())
            ort_rates[batch] = throughput(
                lambda x_np=x_np: session.run(None, {"x": x_np}), batch, args.warmup, args.repeats
            )
        time.sleep(1.0)
        with torch.no_grad():
            for batch in args.batches:
                x = inputs[:batch]
                torch_rates[batch] = throughput(
                    lambda x=x: encoder(x), batch, args.warmup, args.repeats
                )

    print(f"machine: {describe()}, onnxruntime {onnxruntime.__version__}")
    print(
        f"model: {source}, encoder input {shape}, latent {model.latent_dim}; "
        f"{args.threads} intra-op threads for both; median of {args.repeats} blocks of "
        f"~{BLOCK} embeddings after {args.warmup} warm-up calls; parity max abs error "
        f"{parity.max_abs_error:.2g}\n"
    )
    print("| batch | ONNX Runtime embeddings/s | torch embeddings/s | ORT/torch |")
    print("|---|---|---|---|")
    for batch in args.batches:
        ort, ref = ort_rates[batch], torch_rates[batch]
        print(f"| {batch} | {ort:,.0f} | {ref:,.0f} | {ort / ref:.2f}x |")


if __name__ == "__main__":
    main()
