"""REST and gRPC embedding throughput and latency over loopback, against raw ONNX Runtime.

    python benchmarks/serve.py --bundle BUNDLE_DIR [--items 8 64] [--concurrency 1 16 64]
        [--seconds 8] [--repeats 3] [--batching on off] [--drift on off] [--workers 1 2]
        [--client auto] [--path embed-json embed-npy oip-binary grpc-oip]

Starts one `bentoml serve sculptserve.serving.http.service:SculptService` (one worker; its gRPC
server too when a gRPC path is asked for) per configuration: cross-request batching on/off
(SCULPT_MICROBATCH) x drift monitor on/off (SCULPT_DRIFT) x ``--workers`` (SCULPT_WORKERS:
BentoML worker processes). Each cell sends embedding requests
of ``--items`` inputs at a fixed concurrency for ``--seconds``, in one of the ``--path`` forms
(:data:`PATHS`): ``embed-json`` (/embed, the compact raw-float32 JSON items; the default),
``embed-npy`` (/embed with an ``application/x-npy`` body and answer: the binary fast path),
``oip-binary`` (the Open Inference Protocol's REST infer with the binary tensor data
extension, binary output) or ``grpc-oip`` (``inference.GRPCInferenceService/ModelInfer`` with
``raw_input_contents``); cells are interleaved across configurations and paths and repeated
``--repeats`` times, and the tables show medians of the repeats (the machine may be shared:
the load average is printed with the results). Timings are only worth reading from an idle
machine.

Load generators: REST, ``wrk`` (C, one thread, a Lua script posting a fixed body) when it is
on PATH, so the client takes little of the CPU the server needs; otherwise an httpx asyncio
client in this process (slower: it competes with the server for the cores). gRPC, ``h2load``
(nghttp2's HTTP/2 load generator, C; Debian package nghttp2-client), one stream on each of
``concurrency`` connections, posting the framed protobuf message. A failed request is counted
in the ``failed`` column (gRPC codes from the server's ``grpc_server_handled_total``, since
HTTP/2 says 200 either way; ``Canceled`` calls cut off when the client stops at the end of a
cell are not failures); a cell with more than 1% failures stops the run.

Columns: req/s, emb/s, p50/p99 latency; server CPU ms per request (user + system CPU time of
the server's processes over the cell, divided by its requests: much less sensitive to other
load on the machine than latency); rows per ONNX Runtime call (from /info's batching
counters); raw ORT emb/s: the same ``--items`` batch through the bundle's encoder in this
process from min(concurrency, CPUs) threads, measured right after the cell, the faster of
two ONNX Runtime set-ups: the service's default intra-op threads (all CPUs per call) and one
intra-op thread per call (the calling threads give the parallelism; 14-22% faster on 2 CPUs
with 2 callers); ratio = served emb/s / that raw rate; best-raw ratio =
served emb/s / the best raw rate of any concurrency for that ``--items`` (the raw rate of one
cell can be depressed by other load on a shared machine, which flatters its ratio); CPU
efficiency = ONNX Runtime's own CPU time per embedding (in the raw runs) / the server's CPU
time per embedding: the share of the server's work that is the model, nearly independent of
other load.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from sculptserve.bundle.load import load_bundle
from sculptserve.bundle.schema import Manifest
from sculptserve.serving.grpc import grpc_predict_v2_pb2 as pb
from sculptserve.serving.grpc.server import INFERENCE_SERVICE_NAME
from sculptserve.serving.http.npy import NPY
from sculptserve.serving.http.oip import HEADER_LENGTH
from sculptserve.serving.inputs import raw_items
from sculptserve.serving.launcher import bentoml_serve_command
from sculptserve.serving.runtime import EmbeddingRuntime, RuntimeConfig

# wrk's Lua hooks: post the body in $WRK_BODY with the headers in $WRK_HEADERS (one
# "Name: value" a line); print one JSON line with the counts.
WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
for name, value in string.gmatch(os.getenv("WRK_HEADERS"), "([^:\n]+): ([^\n]+)") do
  wrk.headers[name] = value
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
-- a failed request's status and body go to stderr (kept by the benchmark for its report)
function response(status, headers, body)
  if status >= 300 then io.stderr:write("FAILED " .. status .. " " .. body .. "\n") end
end
"""


# --- the request forms --------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One prepared request: its route, body and headers, and whether it goes to the gRPC
    port (HTTP/2, one length-prefixed message as the body) or to the REST port."""

    route: str
    body: bytes
    headers: dict[str, str]
    grpc: bool = False


def _embed_json(manifest: Manifest, x: np.ndarray) -> Request:
    body = json.dumps({"inputs": raw_items(x), "encoding": "float32"}).encode()
    return Request("/embed", body, {"Content-Type": "application/json"})


def _embed_npy(manifest: Manifest, x: np.ndarray) -> Request:
    buf = io.BytesIO()
    np.save(buf, x)
    return Request("/embed", buf.getvalue(), {"Content-Type": NPY, "Accept": NPY})


def _oip_binary(manifest: Manifest, x: np.ndarray) -> Request:
    graph = manifest.onnx.encoder
    tensor = {"name": graph.input_name, "shape": list(x.shape), "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": graph.output_name, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return Request(
        f"/v2/models/{manifest.name}/infer",
        header + np.ascontiguousarray(x, dtype="<f4").tobytes(),
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
    )


def _grpc_oip(manifest: Manifest, x: np.ndarray) -> Request:
    """ModelInfer with raw_input_contents, framed as gRPC puts it on the wire (a 0 byte for
    "not compressed", the message length big-endian, the message), so that a generic HTTP/2
    load generator can send it."""
    graph = manifest.onnx.encoder
    message = pb.ModelInferRequest(model_name=manifest.name)
    message.inputs.add(name=graph.input_name, datatype="FP32", shape=list(x.shape))
    message.outputs.add(name=graph.output_name)
    message.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    payload = message.SerializeToString()
    return Request(
        f"/{INFERENCE_SERVICE_NAME}/ModelInfer",
        b"\x00" + len(payload).to_bytes(4, "big") + payload,
        {"content-type": "application/grpc", "te": "trailers"},
        grpc=True,
    )


# --path name -> the request of a batch
PATHS: dict[str, Callable[[Manifest, np.ndarray], Request]] = {
    "embed-json": _embed_json,
    "embed-npy": _embed_npy,
    "oip-binary": _oip_binary,
    "grpc-oip": _grpc_oip,
}


@dataclass(frozen=True)
class Cell:
    requests: int
    seconds: float
    p50_s: float
    p99_s: float
    cpu_s: float  # server processes' CPU time over the cell
    rows_per_call: float | None  # rows per ONNX Runtime call for /embed (batching on only)
    load: float  # 1-minute load average at the end of the cell
    failed: int  # requests answered with an error (the run stops at more than 1%)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `bentoml serve` of the bundle with the given switches."""

    def __init__(
        self, bundle: str, batching: bool, drift: bool, grpc: bool, workers: int = 1
    ) -> None:
        self.batching, self.drift, self.workers = batching, drift, workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.grpc_base = f"http://127.0.0.1:{free_port()}" if grpc else None
        env = {
            **os.environ,
            "SCULPT_BUNDLE": bundle,
            "SCULPT_DRIFT": "on" if drift else "off",
            "SCULPT_MICROBATCH": "on" if batching else "off",
            "SCULPT_WORKERS": str(workers),
        }
        env.pop("SCULPT_GRPC_PORT", None)
        if self.grpc_base:
            env["SCULPT_GRPC_PORT"] = self.grpc_base.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            bentoml_serve_command(self.port, "127.0.0.1"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("the server did not become ready within 180 s")

    @property
    def name(self) -> str:
        return f"batching {'on' if self.batching else 'off'}, drift {'on' if self.drift else 'off'}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process and its children (the workers)."""
        total = 0.0
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return total
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def batch_counts(self) -> tuple[int, int] | None:
        """(ONNX Runtime calls, rows) of /embed since start, from /info; None when batching
        is off."""
        batching = httpx.get(f"{self.base}/info", timeout=60).json().get("batching", {})
        if "batches" not in batching:
            return None
        return batching["batches"], batching["rows"]

    def grpc_codes(self) -> Counter[str]:
        """ModelInfer calls by gRPC code since start, from the server's
        grpc_server_handled_total (the HTTP/2 load generator sees status 200 either way: gRPC
        puts its status in the trailers)."""
        text = httpx.get(f"{self.base}/metrics", timeout=60).text
        codes: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "grpc_server_handled_total"
                    and sample.labels.get("grpc_method") == "ModelInfer"
                ):
                    codes[sample.labels["grpc_code"]] += int(sample.value)
        return codes

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Wait until the requests still in flight when the client stopped are done (up to
        concurrency x request cost of CPU), so they do not run into the next cell."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - last < 0.05:  # under a tenth of a core: idle
                return
            last = now

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- load generators -----------------------------------------------------------------------


def wrk_load(
    url: str,
    body_file: Path,
    headers: dict[str, str],
    script: Path,
    concurrency: int,
    seconds: float,
) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "60s",
         "-s", str(script), url],
        env={
            **os.environ,
            "WRK_BODY": str(body_file),
            "WRK_HEADERS": "".join(f"{k}: {v}\n" for k, v in headers.items()),
        },
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    failed = result["non2xx"] + result["socket_errors"]
    if failed:  # rare failures are reported with the cell; many mean a broken setup
        print(f"wrk: {failed} failed requests against {url}: {out.stderr[:500]}", file=sys.stderr)
        if failed > result["requests"] // 100:
            raise RuntimeError(f"wrk saw errors against {url}: {result}")
    return {
        "requests": result["requests"],
        "failed": failed,
        "seconds": result["duration_us"] / 1e6,
        "p50_s": result["p50_us"] / 1e6,
        "p99_s": result["p99_us"] / 1e6,
    }


def h2load_load(
    url: str, body_file: Path, headers: dict[str, str], concurrency: int, seconds: float
) -> dict:
    """gRPC load: h2load (nghttp2's HTTP/2 load generator, C) posting the framed message over
    ``concurrency`` connections of one stream each; latencies from its per-request log."""
    log = body_file.with_suffix(".h2load.log")
    log.unlink(missing_ok=True)
    subprocess.run(
        ["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{seconds:g}", "-d", str(body_file),
         "--log-file", str(log), *(x for k, v in headers.items() for x in ("-H", f"{k}: {v}")),
         url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2)  # start us, HTTP status, elapsed us
    ok = rows[:, 1] == 200
    elapsed = rows[ok, 2] / 1e6
    return {
        "requests": int(ok.sum()),
        "failed": int((~ok).sum()),
        "seconds": float(seconds),
        "p50_s": float(np.percentile(elapsed, 50)),
        "p99_s": float(np.percentile(elapsed, 99)),
    }


async def _httpx_load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(url, content=body, headers=headers)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def httpx_load(
    url: str, body_file: Path, headers: dict[str, str], concurrency: int, seconds: float
) -> dict:
    t0 = time.perf_counter()
    body = body_file.read_bytes()
    lat = np.array(asyncio.run(_httpx_load(url, body, headers, concurrency, seconds)))
    return {
        "requests": len(lat),
        "failed": 0,  # raise_for_status above
        "seconds": time.perf_counter() - t0,
        "p50_s": float(np.percentile(lat, 50)),
        "p99_s": float(np.percentile(lat, 99)),
    }


# --- raw ONNX Runtime ----------------------------------------------------------------------


def raw_ort(
    runtime: EmbeddingRuntime, x: np.ndarray, threads: int, seconds: float
) -> tuple[float, float]:
    """(embeddings per second, CPU seconds per embedding) of batch ``x`` through the encoder,
    from ``threads`` threads (nothing else runs in this process meanwhile)."""
    done = [0] * threads
    runtime.encode(x)  # warm
    cpu0 = time.process_time()
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            runtime.encode(x)
            done[i] += 1

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    n = sum(done) * len(x)
    return n / (time.perf_counter() - t0), (time.process_time() - cpu0) / n


# --- main ----------------------------------------------------------------------------------


def on_off(values: list[str]) -> list[bool]:
    return [v == "on" for v in values]


EFFECT_COLUMNS = {"rps": "req/s", "p50": "p50", "cpu": "server CPU/req"}


def print_effect(
    title: str,
    other: str,
    args: argparse.Namespace,
    metrics: tuple[str, ...],
    pair: Callable[[str, bool, int, int], tuple[dict[str, float], dict[str, float]]],
    others: list[bool],
    versus: str = "on vs off",
) -> None:
    """A markdown table of relative changes (on vs off) of ``metrics`` for every cell;
    ``pair(path, other_setting, items, concurrency)`` gives the (on, off) medians."""
    print(f"\n{title} ({versus}, medians):\n")
    columns = " | ".join(EFFECT_COLUMNS[m] for m in metrics)
    print(f"| path | items | conc | {other} | {columns} |")
    print("|---|---|---|---|" + "---|" * len(metrics))
    for path in args.path:
        for n in args.items:
            for c in args.concurrency:
                for setting in others:
                    on, off = pair(path, setting, n, c)
                    changes = " | ".join(f"{100 * (on[m] / off[m] - 1):+.1f}%" for m in metrics)
                    print(f"| {path} | {n} | {c} | {'on' if setting else 'off'} | {changes} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--items", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batching", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--drift", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="SCULPT_WORKERS of the servers"
    )
    parser.add_argument(
        "--path", nargs="+", choices=list(PATHS), default=["embed-json"], help="request forms"
    )
    args = parser.parse_args()

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    bundle = load_bundle(args.bundle)
    shape = tuple(bundle.manifest.input.shape)
    # the raw baseline: the faster of these per cell (see the module docstring)
    runtimes = {
        "default intra-op threads": EmbeddingRuntime(bundle),
        "1 intra-op thread": EmbeddingRuntime(bundle, RuntimeConfig(intra_op_threads=1)),
    }
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {describe()}; load average at start {os.getloadavg()[0]:.2f}")
    print(
        f"bundle: {bundle.manifest.name} input {list(shape)}, latent {bundle.manifest.latent_dim}; "
        f"client {client}; {args.seconds:g} s per cell, {args.repeats} repeats (medians)\n"
    )

    tmp = Path(tempfile.mkdtemp(prefix="sculpt-serve-bench-"))
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    requests: dict[tuple[str, int], tuple[Request, Path]] = {}
    batches: dict[int, np.ndarray] = {}
    for n in args.items:
        batches[n] = np.random.default_rng(n).random((n, *shape), dtype=np.float32)
        for path in args.path:
            request = PATHS[path](bundle.manifest, batches[n])
            body = tmp / f"{path}-{n}.body"
            body.write_bytes(request.body)
            requests[(path, n)] = (request, body)

    def load(server: Server, path: str, n: int, c: int, seconds: float) -> dict:
        request, body = requests[(path, n)]
        if request.grpc:
            assert server.grpc_base is not None
            before = server.grpc_codes()
            r = h2load_load(server.grpc_base + request.route, body, request.headers, c, seconds)
            codes = server.grpc_codes() - before
            # Canceled: the calls in flight when h2load closed its connections at the end
            failed = sum(n for code, n in codes.items() if code not in ("OK", "Canceled"))
            if failed:
                print(f"gRPC codes of {path}: {dict(codes)}", file=sys.stderr)
            if failed > r["requests"] // 100:
                raise RuntimeError(f"{failed} of {r['requests']} gRPC calls failed on {path}")
            return {**r, "failed": r["failed"] + failed}
        url = server.base + request.route
        if client == "wrk":
            return wrk_load(url, body, request.headers, script, c, seconds)
        return httpx_load(url, body, request.headers, c, seconds)

    grpc = any(requests[(path, args.items[0])][0].grpc for path in args.path)
    if grpc and not shutil.which("h2load"):
        parser.error("the grpc-oip path needs h2load (Debian package nghttp2-client)")
    servers = [
        Server(args.bundle, b, d, grpc, w)
        for b in on_off(args.batching)
        for d in on_off(args.drift)
        for w in args.workers
    ]
    cells: dict[tuple[str, bool, bool, int, int, int], list[Cell]] = {}
    raw: dict[tuple[int, int], list[tuple[float, float]]] = {}
    raw_by_setup: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        for s in servers:
            for path in args.path:
                load(s, path, args.items[0], 4, 2.0)  # warm-up
        for rep in range(args.repeats):
            for n in args.items:
                for c in args.concurrency:
                    # a new order for every cell group, so no configuration always runs
                    # first or after the same neighbour
                    order = [(s, path) for s in servers for path in args.path]
                    random.Random(f"{rep}-{n}-{c}").shuffle(order)
                    for s, path in order:
                        b0, cpu0 = s.batch_counts(), s.cpu_seconds()
                        r = load(s, path, n, c, args.seconds)
                        cpu1 = s.cpu_seconds()  # over the client's window only
                        s.wait_idle()  # in-flight requests must not load the next cell
                        b1 = s.batch_counts()
                        per_call = None
                        if b0 is not None and b1 is not None and b1[0] > b0[0]:
                            per_call = (b1[1] - b0[1]) / (b1[0] - b0[0])
                        cell = Cell(
                            r["requests"], r["seconds"], r["p50_s"], r["p99_s"], cpu1 - cpu0,
                            per_call, os.getloadavg()[0], r["failed"],
                        )  # fmt: skip
                        key = (path, s.batching, s.drift, s.workers, n, c)
                        cells.setdefault(key, []).append(cell)
                    runs = {
                        name: raw_ort(rt, batches[n], min(c, cpus), args.seconds / 2)
                        for name, rt in runtimes.items()
                    }
                    for name, result in runs.items():
                        raw_by_setup.setdefault((name, n), []).append(result)
                    raw.setdefault((n, c), []).append(max(runs.values()))
                    print(
                        f"repeat {rep + 1}/{args.repeats} items {n} c{c} done, "
                        f"load {os.getloadavg()[0]:.2f}",
                        file=sys.stderr,
                    )
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    med = np.median
    loads = [cell.load for cs in cells.values() for cell in cs]
    print(
        f"load average (1 min) during the cells: median {med(loads):.2f}, "
        f"min {min(loads):.2f}, max {max(loads):.2f}\n"
    )
    best_raw = {
        n: max(float(med([r[0] for r in raw[(n, c)]])) for c in args.concurrency)
        for n in args.items
    }
    raw_cpu = {
        n: float(med([r[1] for c in args.concurrency for r in raw[(n, c)]])) for n in args.items
    }
    print(
        "Raw ONNX Runtime by set-up (medians over all cells): "
        + "; ".join(
            f"{name} at {n} items {med([r[0] for r in runs]):.0f} emb/s, "
            f"{med([r[1] for r in runs]) * 1e3:.3f} ms CPU/emb"
            for (name, n), runs in raw_by_setup.items()
        )
        + "\n"
    )
    print(
        "ONNX Runtime's own CPU per embedding (raw runs, the faster set-up, median): "
        + ", ".join(f"{raw_cpu[n] * 1e3:.3f} ms at {n} items" for n in args.items)
        + "\n"
    )
    print(
        "| path | items | conc | batching | drift | workers | req/s | emb/s | p50 ms | p99 ms "
        "| server CPU ms/req | rows/ORT call | raw ORT emb/s | ratio | best-raw ratio "
        "| CPU efficiency | failed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary: dict[tuple[str, bool, bool, int, int, int], dict[str, float]] = {}
    for path, n, c, b, d, w in itertools.product(
        args.path, args.items, args.concurrency, on_off(args.batching), on_off(args.drift),
        args.workers,
    ):  # fmt: skip
        raw_eps = float(med([r[0] for r in raw[(n, c)]]))
        cs = cells[(path, b, d, w, n, c)]
        rps = float(med([x.rps for x in cs]))
        row = {
            "rps": rps,
            "p50": float(med([x.p50_s for x in cs])),
            "p99": float(med([x.p99_s for x in cs])),
            "cpu": float(med([x.cpu_s / max(x.requests, 1) for x in cs])),
        }
        summary[(path, b, d, w, n, c)] = row
        per_call = [x.rows_per_call for x in cs if x.rows_per_call is not None]
        rows = f"{med(per_call):.1f}" if per_call else "-"
        print(
            f"| {path} | {n} | {c} | {'on' if b else 'off'} | {'on' if d else 'off'} | {w} "
            f"| {rps:.1f} | {rps * n:.0f} | {row['p50'] * 1e3:.1f} "
            f"| {row['p99'] * 1e3:.1f} | {row['cpu'] * 1e3:.2f} | {rows} "
            f"| {raw_eps:.0f} | {rps * n / raw_eps:.2f} "
            f"| {rps * n / best_raw[n]:.2f} | {raw_cpu[n] * n / row['cpu']:.2f} "
            f"| {sum(x.failed for x in cs)} |"
        )
    for w in args.workers:
        at = f", {w} worker{'s' if w > 1 else ''}"
        if len(args.drift) == 2:
            print_effect(
                f"Drift monitor cost{at}", "batching", args, ("p50", "rps", "cpu"),
                lambda p, b, n, c, w=w: (
                    summary[(p, b, True, w, n, c)], summary[(p, b, False, w, n, c)]
                ),
                on_off(args.batching),
            )  # fmt: skip
        if len(args.batching) == 2:
            print_effect(
                f"Batching effect{at}", "drift", args, ("rps", "p50", "cpu"),
                lambda p, d, n, c, w=w: (
                    summary[(p, True, d, w, n, c)], summary[(p, False, d, w, n, c)]
                ),
                on_off(args.drift),
            )  # fmt: skip
    if len(args.workers) > 1:
        first, *more = args.workers
        b0 = on_off(args.batching)[0]
        for w in more:
            print_effect(
                "Workers", "drift", args, ("rps", "p50", "cpu"),
                lambda p, d, n, c, w=w: (
                    summary[(p, b0, d, w, n, c)], summary[(p, b0, d, first, n, c)]
                ),
                on_off(args.drift), versus=f"{w} vs {first}",
            )  # fmt: skip


if __name__ == "__main__":
    main()
