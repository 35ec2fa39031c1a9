"""`sculpt` run as a separate process, the way a user runs it (exit status, stderr lines)."""

from __future__ import annotations

import subprocess
import sys


def run_cli(
    *args: object, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sculptserve.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
