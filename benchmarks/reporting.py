"""Where a benchmark's numbers come from, said in its table: the code version, the machine, and
a median with its range."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def code_version() -> str:
    """The checkout's commit, '+' when it has uncommitted changes (results name the code that made them)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]" if values else "-"
