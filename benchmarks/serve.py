"""REST /embed throughput and latency over loopback, against raw ONNX Runtime in-process.

    python benchmarks/serve.py --bundle BUNDLE_DIR [--items 8] [--seconds 10]

Starts `bentoml serve sculptserve.service:SculptService` on a free loopback port (HTTP only),
twice: with the drift monitor on and off (SCULPT_DRIFT=off). For concurrency 1, 16 and 64 it
sends /embed requests of ``--items`` inputs each (the compact raw-float32 form) for
``--seconds`` and reports requests/s, embeddings/s, p50 and p99 latency. The raw baseline
runs the same batches through the bundle's encoder with ONNX Runtime in this process, from as
many threads as the concurrency. Prints markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.bundle import load_bundle
from sculptserve.codec import raw_items
from sculptserve.runtime import EmbeddingRuntime
from sculptserve.serve import bentoml_serve_command

CONCURRENCY = (1, 16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(x: np.ndarray) -> dict:
    return {"inputs": raw_items(x), "encoding": "float32"}


def start_server(bundle: str, port: int, drift: bool) -> subprocess.Popen:
    env = {**os.environ, "SCULPT_BUNDLE": bundle, "SCULPT_DRIFT": "on" if drift else "off"}
    env.pop("SCULPT_GRPC_PORT", None)
    proc = subprocess.Popen(
        bentoml_serve_command(port, "127.0.0.1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not become ready within 120 s")


async def load(url: str, body: dict, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def raw_ort(runtime: EmbeddingRuntime, x: np.ndarray, threads: int, seconds: float) -> float:
    """Batches per second of the same batch through the encoder, from ``threads`` threads."""
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            runtime.encode(x)
            done[i] += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--items", type=int, default=8, help="inputs per request")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    shape = tuple(bundle.manifest.input.shape)
    x = np.random.default_rng(0).random((args.items, *shape), dtype=np.float32)
    body = payload(x)
    runtime = EmbeddingRuntime(bundle)
    print(f"machine: {describe()}")
    print(
        f"bundle: {bundle.manifest.name} input {list(shape)}, {args.items} inputs/request, "
        f"{args.seconds:.0f} s per cell\n"
    )

    results: dict[tuple[bool, int], tuple[float, float, float]] = {}
    for drift in (True, False):
        port = free_port()
        proc = start_server(args.bundle, port, drift)
        try:
            url = f"http://127.0.0.1:{port}/embed"
            asyncio.run(load(url, body, 4, 2.0))  # warm-up
            for c in CONCURRENCY:
                lat = np.array(asyncio.run(load(url, body, c, args.seconds)))
                results[(drift, c)] = (
                    len(lat) / args.seconds,
                    np.percentile(lat, 50),
                    np.percentile(lat, 99),
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print("| concurrency | drift | req/s | emb/s | p50 ms | p99 ms | raw ORT emb/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        raw = raw_ort(runtime, x, min(c, os.cpu_count() or 1), args.seconds / 2) * args.items
        for drift in (True, False):
            rps, p50, p99 = results[(drift, c)]
            print(
                f"| {c} | {'on' if drift else 'off'} | {rps:.1f} | {rps * args.items:.0f} | "
                f"{p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {raw:.0f} | "
                f"{rps * args.items / raw:.2f} |"
            )
    for c in CONCURRENCY:
        on, off = results[(True, c)][1], results[(False, c)][1]
        print(f"drift monitor cost at concurrency {c}: p50 {100 * (on / off - 1):+.1f}%")


if __name__ == "__main__":
    main()
