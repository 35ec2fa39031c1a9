"""A uvicorn worker run the way BentoML 1.4 runs one, around a tiny ASGI app.

For the shutdown and slow-client tests, without BentoML's start-up cost. The test process plays
BentoML's circus arbiter: it owns the listening socket, passes it to this process (``--fd``),
which serves it with ``uvicorn.Server(config).run(sockets=[...])`` exactly as
``_bentoml_impl/worker/service.py`` does, and keeps its own descriptor open until the worker
has exited. The app's lifespan startup installs the drain and the header deadline the way
``SculptService.__init__`` does; the middleware stack is the service's own.

Routes: ``GET /readyz`` (503 while draining); ``POST /work?ms=N`` reads the body, sleeps N ms
in a thread (a model call) and answers ``{"bytes": <body length>}``.

    python tests/uvicorn_worker.py --fd FD [--delay S] [--grace S] [--header-timeout S]
        [--body-timeout S]

Tests start one with :func:`launch` (or the ``worker`` fixture of the test modules).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from sculptserve.serving.http.shutdown import Drain, DrainingMiddleware
from sculptserve.serving.http.timeouts import BodyTimeout, install_header_timeout


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def build_app(args: argparse.Namespace) -> Any:
    drain = Drain(delay_s=args.delay, grace_s=args.grace)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    drain.install()
                    install_header_timeout(args.header_timeout)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/readyz":
            await _respond(send, 503 if drain.draining else 200, {"draining": drain.draining})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        ms = float(parse_qs(scope["query_string"].decode()).get("ms", ["0"])[0])
        await asyncio.to_thread(time.sleep, ms / 1000)
        await _respond(send, 200, {"bytes": len(body)})

    return DrainingMiddleware(BodyTimeout(app, timeout_s=args.body_timeout))


@dataclass
class Worker:
    """A running worker and the listening socket this process holds for it."""

    proc: subprocess.Popen[bytes]
    listener: socket.socket  # the "arbiter's" descriptor
    port: int

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 10.0
    ) -> http.client.HTTPResponse:
        """One request on a connection of its own (the response is read)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body, {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response
        finally:
            conn.close()

    def wait(self, timeout: float) -> float:
        """Seconds until the worker exits (raises past ``timeout``); then the "arbiter"
        closes its socket, as circus does once its workers are gone."""
        began = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.listener.close()
        return time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.listener.close()


def launch(start_timeout: float = 30.0, **options: float) -> Worker:
    """Start a worker on a fresh loopback socket (``options``: the command's, as keywords)
    and wait until /readyz answers 200."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    args = [sys.executable, str(Path(__file__).resolve()), "--fd", str(listener.fileno())]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(
        args, pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    worker = Worker(proc, listener, listener.getsockname()[1])
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            if worker.request("GET", "/readyz", timeout=1).status == 200:
                return worker
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"the worker did not start:\n{output}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--body-timeout", type=float, default=30.0)
    args = parser.parse_args()
    config = uvicorn.Config(build_app(args), lifespan="on", log_config=None, timeout_keep_alive=5)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
