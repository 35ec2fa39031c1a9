"""Where a served request's CPU goes: per-thread CPU of the BentoML worker under load, and
py-spy's stacks.

    python benchmarks/serve_profile.py --bundle B [--path grpc-oip] [--items 64] [--drift on]
        [--seconds 8] [--out profile.txt]

Starts one server (benchmarks/serve.py's ``Server``, gRPC included), loads it at concurrency 64
with one request form of serve.py, reads each worker thread's CPU time from /proc before and
after (divided by the requests: ms per request by thread) and records py-spy's raw stacks
(``--out``; needs ``py-spy`` on PATH). Timings only mean something on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve

from sculptserve.bundle.load import load_bundle


def thread_cpu(process: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:  # the thread ended
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--path", choices=list(serve.PATHS), default="grpc-oip")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--drift", choices=["on", "off"], default="on")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default="profile.txt", help="py-spy's raw stacks")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        parser.error("py-spy is not on PATH (pip install py-spy)")

    bundle = load_bundle(args.bundle)
    server = serve.Server(args.bundle, False, args.drift == "on", True)
    tmp = Path(tempfile.mkdtemp(prefix="sculpt-profile-"))
    x = np.random.default_rng(0).random((args.items, *bundle.manifest.input.shape), "float32")
    request = serve.PATHS[args.path](bundle.manifest, x)
    body = tmp / "body"
    body.write_bytes(request.body)
    script = tmp / "post.lua"
    script.write_text(serve.WRK_SCRIPT)

    def load(seconds: float) -> dict:
        if request.grpc:
            url = f"{server.grpc_base}{request.route}"
            return serve.h2load_load(url, body, request.headers, 64, seconds)
        url = server.base + request.route
        return serve.wrk_load(url, body, request.headers, script, 64, seconds)

    try:
        load(2.0)  # warm
        workers = psutil.Process(server.proc.pid).children(recursive=True)
        worker = max(workers, key=lambda p: p.cpu_times().user)
        spy = subprocess.Popen(
            [pyspy, "record", "-p", str(worker.pid), "-d", str(int(args.seconds)), "-r", "200",
             "-f", "raw", "-o", args.out, "--threads", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        before, cpu0 = thread_cpu(worker), server.cpu_seconds()
        result = load(args.seconds)
        after, cpu1 = thread_cpu(worker), server.cpu_seconds()
        names = {tid: thread_name(worker.pid, tid) for tid in after}  # while it runs
        spy.wait()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    n = result["requests"]
    print(json.dumps(result))
    print(f"server CPU {(cpu1 - cpu0) / n * 1e3:.3f} ms per request; by thread:")
    per = sorted(((after[t] - before.get(t, 0.0)) / n * 1e3, t) for t in after)
    for ms, tid in reversed(per[-12:]):
        print(f"  {names[tid]:20s} {tid:>8d} {ms:.3f} ms/request")
    print(f"py-spy stacks: {args.out}")


if __name__ == "__main__":
    main()
