"""One-line description of the machine a benchmark ran on, for benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    import numpy

    parts = [
        f"date {datetime.date.today().isoformat()}",
        cpu_model(),
        f"{os.cpu_count()} cores visible",
        f"Python {platform.python_version()}",
        f"numpy {numpy.__version__}",
    ]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    return ", ".join(parts)
