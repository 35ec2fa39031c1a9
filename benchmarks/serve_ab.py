"""A/B of server variants that differ only in environment variables, interleaved.

    python benchmarks/serve_ab.py --bundle B --path grpc-oip \
        --variant 'base={}' --variant 'w2={"SCULPT_WORKERS": "2"}' [--repeats 3] [--seconds 5]

Each variant is one server (benchmarks/serve.py's ``Server``, 1 worker unless its variables say
otherwise, drift on, batching off) started with its variables added to the environment; cells
of 8 and 64 inputs at concurrency 64 run in a shuffled order per repeat, so slow drifts of the
machine hit every variant alike. Prints medians: req/s, emb/s, p50/p99, server CPU per request.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve

from sculptserve.bundle.load import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--path", choices=list(serve.PATHS), default="grpc-oip")
    parser.add_argument("--variant", action="append", required=True, help="NAME=JSON env")
    parser.add_argument("--items", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, _, env = spec.partition("=")
        variants[name] = json.loads(env or "{}")

    bundle = load_bundle(args.bundle)
    servers: dict[str, serve.Server] = {}
    for name, env in variants.items():
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            servers[name] = serve.Server(args.bundle, False, True, True)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    tmp = Path(tempfile.mkdtemp(prefix="sculpt-ab-"))
    script = tmp / "post.lua"
    script.write_text(serve.WRK_SCRIPT)
    requests = {}
    for n in args.items:
        x = np.random.default_rng(n).random((n, *bundle.manifest.input.shape), "float32")
        request = serve.PATHS[args.path](bundle.manifest, x)
        (tmp / f"{n}.body").write_bytes(request.body)
        requests[n] = request

    def load(server: serve.Server, n: int, seconds: float) -> dict:
        request, body = requests[n], tmp / f"{n}.body"
        if request.grpc:
            url = f"{server.grpc_base}{request.route}"
            return serve.h2load_load(url, body, request.headers, 64, seconds)
        return serve.wrk_load(server.base + request.route, body, request.headers, script, 64,
                              seconds)  # fmt: skip

    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    try:
        for server in servers.values():
            load(server, args.items[0], 2.0)  # warm
        for rep in range(args.repeats):
            for n in args.items:
                order = list(servers)
                random.Random(f"{rep}-{n}").shuffle(order)
                for name in order:
                    server = servers[name]
                    cpu0 = server.cpu_seconds()
                    r = load(server, n, args.seconds)
                    cpu1 = server.cpu_seconds()
                    server.wait_idle()
                    results.setdefault((name, n), []).append(
                        (r["requests"] / r["seconds"], (cpu1 - cpu0) / r["requests"] * 1e3,
                         r["p50_s"] * 1e3, r["p99_s"] * 1e3)
                    )  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    print("| variant | items | req/s | emb/s | p50 ms | p99 ms | server CPU ms/req |")
    print("|---|---|---|---|---|---|---|")
    for (name, n), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps, cpu, p50, p99 = np.median(np.array(rows), axis=0)
        print(f"| {name} | {n} | {rps:.1f} | {rps * n:.0f} | {p50:.1f} | {p99:.1f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
