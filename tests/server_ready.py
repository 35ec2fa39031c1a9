"""Waiting for a server started by a test to answer /readyz."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_ready(
    url: str, proc: subprocess.Popen, log: Callable[[], str], timeout: float = 120.0
) -> None:
    """Return once ``url``/readyz answers 200; kill ``proc`` and raise RuntimeError with
    ``log()`` if it exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:  # not listening yet
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server at {url} did not become ready:\n{log()}")
