"""What refusing a PNG bomb costs: wall time and peak memory, per request path.

    python benchmarks/payload_bombs.py [--bundle BUNDLE_DIR] [--size 13000] [--concurrency 1 8]

The bomb is issue 13's reproducer: a 657 KB RGBA PNG whose header declares 13000 x 13000
(676 MB once decoded). Each (path, concurrency) cell runs in a fresh Python process, so one
cell's allocations cannot hide another's. The process builds what the path needs, sends valid
images through it (Pillow, ONNX Runtime and gRPC are loaded and warm), then resets its peak RSS
(``/proc/self/clear_refs``) and ``concurrency`` bomb requests are sent at once, each from its
own thread. Paths:

- ``decode_inputs``: the request decoder alone (file bytes, as gRPC and multipart pass them);
- ``core``: ``EmbeddingApp.embed`` with the base64 string of a JSON request (what REST calls);
- ``grpc``: ``sculpt.v1.Sculpt/Embed`` with ``inputs.images`` over loopback; the server runs
  in the measured process and the client in the driver's, so the memory is the server's alone
  (the wall time includes the transport).

Columns: wall ms until every request was refused; peak RSS growth in MB (VmHWM after minus VmRSS
before; C allocations such as Pillow's image memory included); the tracemalloc peak in MB
(Python and numpy allocations only). Goal (issue 13): under 50 ms and 20 MB. Timings are only
meaningful on an idle machine. Without ``--bundle`` a toy 1 x 32 x 32 bundle is built with
tests/bundle_factory.py (needs the dev extra's onnx).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

REPO = Path(__file__).resolve().parents[1]
GOAL_MS = 50.0
GOAL_MB = 20.0
PATHS = ("decode_inputs", "core", "grpc")


# --- the bomb ----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_bomb(side: int) -> bytes:
    """An RGBA PNG of zeros, side x side, deflated row block by row block (never held whole)."""
    row = bytes(1 + 4 * side)  # filter byte + RGBA pixels
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row * 100) for _ in range(side // 100))
    idat += deflate.compress(row * (side % 100)) + deflate.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0])  # 8-bit RGBA
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def valid_png(shape: tuple[int, ...]) -> bytes:
    import numpy as np

    from sculptserve.serving.encodings import images_to_png

    return images_to_png(np.full((1, *shape), 0.5, np.float32))[0]


# --- one cell, in a child process ----------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _app(bundle: str) -> Any:
    from sculptserve.bundle.load import load_bundle
    from sculptserve.serving.core import EmbeddingApp

    return EmbeddingApp(load_bundle(bundle), background_drift=False)


def _in_process_sender(path: str, bundle: str) -> tuple[Callable[[bytes], Any], Callable[[], None]]:
    """(send one image file, close) for the in-process paths; sending a bomb must raise."""
    from sculptserve.bundle.load import load_bundle
    from sculptserve.serving.inputs import decode_inputs

    if path == "decode_inputs":
        spec = load_bundle(bundle).manifest.input
        return lambda data: decode_inputs([data], spec, max_items=1), lambda: None
    app = _app(bundle)
    return lambda data: app.embed([base64.b64encode(data).decode("ascii")]), app.close


def _message(exc: BaseException) -> str:
    details = getattr(exc, "details", None)  # grpc.RpcError
    text = details() if callable(details) else str(exc)
    return " ".join(str(text).split())[:120]


def _refuse_all(send: Callable[[bytes], Any], bomb: bytes, concurrency: int) -> list[str]:
    """Send ``concurrency`` bombs at once, one per thread; every one must be refused."""

    def one(_: int) -> str:
        try:
            send(bomb)
        except Exception as exc:  # PayloadError, or grpc.RpcError over gRPC
            return _message(exc)
        raise RuntimeError("a bomb was accepted")

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(concurrency)))


class _Peak:
    """Peak RSS growth and tracemalloc peak of this process from ``start()`` to ``stop()``."""

    def start(self) -> None:
        self.reset = _reset_peak_rss()
        self.rss_before = _status_kb("VmRSS")
        tracemalloc.start()

    def stop(self) -> dict[str, float | None]:
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        growth = (_status_kb("VmHWM") - self.rss_before) / 1024 if self.reset else None
        return {"rss_peak_growth_mb": growth, "tracemalloc_peak_mb": traced / 2**20}


def run_cell(path: str, bundle: str, bomb_file: str, concurrency: int) -> dict[str, Any]:
    """Refuse ``concurrency`` bombs at once through an in-process ``path``, from a warm state."""
    from sculptserve.bundle.load import load_bundle

    shape = tuple(load_bundle(bundle).manifest.input.shape)
    bomb = Path(bomb_file).read_bytes()
    send, close = _in_process_sender(path, bundle)
    send(valid_png(shape))  # warm: imports, sessions
    with ThreadPoolExecutor(concurrency) as pool:  # the threads' own memory before the clock
        list(pool.map(lambda _: None, range(concurrency)))
    peak = _Peak()
    peak.start()
    start = time.perf_counter()
    messages = _refuse_all(send, bomb, concurrency)
    wall = time.perf_counter() - start
    memory = peak.stop()
    close()
    return {"wall_ms": 1000 * wall, **memory, "message": messages[0]}


def serve_cell(bundle: str) -> None:
    """The server of the ``grpc`` path, measured on its own (the driver is the client): prints
    its port, then answers the driver's stdin commands ``start`` and ``stop``."""
    import asyncio

    from sculptserve.serving.grpc.server import bound_port, build_server

    app = _app(bundle)

    async def serve() -> None:
        server = build_server(app, port=0)
        await server.start()
        peak = _Peak()
        print(f"port {bound_port(server)}", flush=True)
        while command := (await asyncio.to_thread(sys.stdin.readline)).strip():
            if command == "start":
                peak.start()
                print("started", flush=True)
            elif command == "stop":
                print(json.dumps(peak.stop()), flush=True)
                break
        await server.stop(None)

    asyncio.run(serve())
    app.close()


def run_grpc_cell(bundle: str, bomb_file: str, concurrency: int) -> dict[str, Any]:
    """The ``grpc`` path: a server process (measured) and this process as its client."""
    import grpc

    from sculptserve.bundle.load import load_bundle
    from sculptserve.serving.grpc import sculpt_pb2 as pb
    from sculptserve.serving.grpc import sculpt_pb2_grpc as pb_grpc

    shape = tuple(load_bundle(bundle).manifest.input.shape)
    bomb = Path(bomb_file).read_bytes()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", bundle],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None

    def command(text: str) -> str:
        server.stdin.write(text + "\n")
        server.stdin.flush()
        return server.stdout.readline().strip()

    try:
        port = int(server.stdout.readline().split()[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SculptStub(channel)

            def send(data: bytes) -> Any:
                return stub.Embed(pb.EmbedRequest(inputs=pb.Inputs(images=[data])), timeout=60)

            for _ in range(concurrency):  # warm: connection, the server's worker threads
                send(valid_png(shape))
            assert command("start") == "started"
            start = time.perf_counter()
            messages = _refuse_all(send, bomb, concurrency)
            wall = time.perf_counter() - start
            memory = json.loads(command("stop"))
    finally:
        server.wait(timeout=30)
    return {"wall_ms": 1000 * wall, **memory, "message": messages[0]}


# --- the driver --------------------------------------------------------------------------------


def _toy_bundle(folder: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from bundle_factory import make_bundle

    return str(make_bundle(folder / "toy", latent_dim=5, input_shape=(1, 32, 32)))


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle folder (default: a toy 1x32x32 bundle)")
    parser.add_argument("--size", type=int, default=13000, help="the bomb's side in pixels")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--cell", nargs=4, help=argparse.SUPPRESS)  # PATH BUNDLE BOMB N
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # BUNDLE
    args = parser.parse_args()
    if args.serve:  # the gRPC path's server process
        serve_cell(args.serve)
        return
    if args.cell:  # one cell in a fresh process
        path, bundle, bomb_file, n = args.cell
        cell = (
            run_grpc_cell(bundle, bomb_file, int(n))
            if path == "grpc"
            else run_cell(path, bundle, bomb_file, int(n))
        )
        print(json.dumps(cell))
        return

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or _toy_bundle(Path(tmp))
        bomb = png_bomb(args.size)
        bomb_file = Path(tmp) / "bomb.png"
        bomb_file.write_bytes(bomb)
        print(f"machine: {describe()}")
        print(f"bomb: {len(bomb)} bytes, RGBA {args.size}x{args.size} declared")
        print()
        print("| path | concurrent | wall ms | peak RSS growth MB | tracemalloc peak MB | goal |")
        print("|---|---|---|---|---|---|")
        messages = set()
        for path in args.paths:
            for n in args.concurrency:
                child = subprocess.run(
                    [sys.executable, __file__, "--cell", path, bundle, str(bomb_file), str(n)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if child.returncode != 0:
                    raise SystemExit(f"{path} x{n} failed:\n{child.stderr[-3000:]}")
                cell = json.loads(child.stdout.strip().splitlines()[-1])
                growth = cell["rss_peak_growth_mb"]
                met = cell["wall_ms"] < GOAL_MS and growth is not None and growth < GOAL_MB
                print(
                    f"| {path} | {n} | {cell['wall_ms']:.1f} | {_mb(growth)} | "
                    f"{cell['tracemalloc_peak_mb']:.2f} | {'met' if met else 'MISSED'} |"
                )
                messages.add(cell["message"])
        print()
        for message in sorted(messages):
            print(f"refused with: {message}")


if __name__ == "__main__":
    main()
