"""Describing the machine a benchmark ran on (for benchmarks/RESULTS.md)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back below
    return platform.processor() or platform.machine()


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_results_section(section: str, text: str) -> None:
    """Replace (or append) one benchmark's ``## ...`` section of RESULTS.md, leaving the others alone."""
    import re

    from engine.fileio import atomic_write_text

    old = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text.rstrip() + "\n\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    atomic_write_text(RESULTS, new.rstrip() + "\n")


def publish(section: str, text: str, write: bool) -> int:
    """Print a benchmark's report and, with ``write`` (its ``--write-results``), put it into RESULTS.md
    as ``section``; the exit status of the benchmark's ``main``."""
    print(text)
    if write:
        write_results_section(section, text)
    return 0
