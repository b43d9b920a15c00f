"""The machine a benchmark ran on, in words (torch-free, for the benchmarks of the refine path)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
