"""Issue 13's service figures, on a real `sculpt serve` of a toy bundle:

    python benchmarks/hardening.py [--clients 32] [--bodies 4]

- **health under large bodies**: while ``--bodies`` concurrent /embed bodies of about 8 MiB
  each are in flight (half the reproducer's 1.39e6 one-value items, half 256 long base64
  strings), /livez and /readyz are polled; the slowest answer is reported (goal: < 1 s, the
  Deployment's readiness probe times out at 2 s);
- **drain on SIGTERM**: ``--clients`` keep-alive clients post /embed in a loop; after 2 s the
  server gets SIGTERM. Every request a client sent is counted as answered, or failed (a reset
  or a broken connection: the goal is 0), and connection attempts refused once the port is
  closed (expected: that is how the clients learn to go elsewhere).

The PNG-bomb figure is benchmarks/payload_bombs.py. Timings depend on the machine's load: say
it with the numbers.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_factory import make_bundle
from machine import describe

JSON = {"content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle: Path, home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sculptserve.cli", "serve", str(bundle), "--port", str(port),
         "--grpc-port", str(free_port())],
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/readyz")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready in 180 s")


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body, JSON if body is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def health_under_bodies(port: int, bodies: int) -> dict[str, float]:
    many = b'{"inputs": [' + b",".join([b"[0.5]"] * 1_390_000) + b"]}"
    text = base64.b64encode(os.urandom(24_000)).decode()
    long = json.dumps({"inputs": [text] * 256}).encode()
    slowest: dict[str, float] = {}
    for path in ("/livez", "/readyz"):
        worst = 0.0
        with ThreadPoolExecutor(bodies) as pool:
            sent = [pool.submit(request, port, "POST", "/embed", (many, long)[i % 2])
                    for i in range(bodies)]  # fmt: skip
            while not all(f.done() for f in sent):
                began = time.perf_counter()
                request(port, "GET", path)
                worst = max(worst, time.perf_counter() - began)
                time.sleep(0.01)
        slowest[path] = worst
        slowest[f"{path} bodies answered"] = sum(f.result()[0] == 400 for f in sent)
    return slowest


def drain(port: int, proc: subprocess.Popen, clients: int) -> dict[str, object]:
    body = json.dumps({"inputs": [[[[0.0] * 4] * 4]] * 2}).encode()
    stop, lock = threading.Event(), threading.Lock()
    counts: Counter[str] = Counter()
    sigterm_at = [float("inf")]

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            if conn is None:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    conn.connect()
                except ConnectionRefusedError:
                    with lock:
                        counts["refused at connect (port closed)"] += 1
                    return
            try:
                conn.request("POST", "/embed", body, JSON)
                response = conn.getresponse()
                response.read()
                with lock:
                    counts[f"answered {response.status}"] += 1
                    if time.monotonic() > sigterm_at[0]:
                        counts["answered after SIGTERM"] += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    counts[f"failed: {type(exc).__name__}"] += 1
                conn.close()
                conn = None

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    sigterm_at[0] = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    exited_after = time.monotonic() - sigterm_at[0]
    stop.set()
    for t in threads:
        t.join(10)
    return {"exit code": code, "exit after SIGTERM s": round(exited_after, 1), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--bodies", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "bundle")
        print(f"machine: {describe()}; load average {os.getloadavg()[0]:.1f}")
        proc, port = start(bundle, Path(tmp) / "home", {})
        try:
            for key, value in health_under_bodies(port, args.bodies).items():
                print(f"health under {args.bodies} large bodies: {key}: {value:.3f}")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        # the Deployment's numbers, shortened: serve 1 s after SIGTERM, then 10 s of grace
        env = {"SCULPT_SHUTDOWN_DELAY_S": "1", "SCULPT_SHUTDOWN_GRACE_S": "10"}
        proc, port = start(bundle, Path(tmp) / "home2", env)
        print(f"drain, {args.clients} clients:", json.dumps(drain(port, proc, args.clients)))


if __name__ == "__main__":
    main()
