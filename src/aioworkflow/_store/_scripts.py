"""The Lua scripts, read once from package data (works from wheels and zips)."""

from __future__ import annotations

import enum
from importlib.resources import files

__all__ = ["SOURCES", "ScriptName"]


class ScriptName(enum.StrEnum):
    """One atomic operation each; the file is ``lua/<value>.lua``."""

    SUBMIT = "submit"
    START = "start"
    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    RETRY = "retry"
    RECONCILE = "reconcile"


def _read(name: str) -> str:
    return files("aioworkflow").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


_LIB = _read("_lib")
#: Full source of each script: the shared helpers, then the operation.
SOURCES: dict[ScriptName, str] = {name: _LIB + "\n" + _read(name.value) for name in ScriptName}
