"""Chaos figures: one line per run on the terminal, and JSON lines in ``$AIOWF_CHAOS_REPORT``.

Every chaos test ends with ``report(name, workflows=..., nodes=..., lost=0, doubly_released=0,
...)`` so that a run prints the figures the reliability issue asks for (workflows, nodes, kills,
duplicates injected, lost, doubly released, time to recover), whatever pytest's capture setting.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

SCALE = os.environ.get("AIOWF_CHAOS_SCALE", "short")
"""``short`` (the default test run and CI) or ``long`` (``nox -s chaos``)."""


def scaled(short: int, long: int) -> int:
    """``short`` in the default run, ``long`` under ``AIOWF_CHAOS_SCALE=long``."""
    return long if SCALE == "long" else short


def report(name: str, **figures: Any) -> None:
    """Print ``name`` and its figures on stderr (past capture) and append them as JSON."""
    line = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    err = sys.__stderr__ or sys.stderr
    err.write(f"\n[chaos] {name} ({SCALE}): {line}\n")
    err.flush()
    path = os.environ.get("AIOWF_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": name, "scale": SCALE, "at": time.time(), **figures}) + "\n")
