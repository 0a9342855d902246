"""The Lua scripts, read once from package data (works from wheels and zips), and where their
lines come from.

Each script is sent as one source: ``_machine.lua`` (rendered from ``_machine.py``), then
``_lib.lua``, then the script's own file. Redis numbers the lines of that whole source
(``user_script:168``); :func:`explain` maps them back to the file they came from
(``complete.lua:24``), so that an error names the line to look at.
"""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files
from typing import Final

from aioworkflow._protocol import ScriptName

__all__ = ["SHAS", "SOURCES", "ScriptName", "explain", "locate"]

#: Files joined in front of every script, in order.
PRELUDE: Final = ("_machine", "_lib")


def _read(name: str) -> str:
    return files("aioworkflow").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _join(parts: list[tuple[str, str]]) -> tuple[str, tuple[tuple[int, str], ...]]:
    """The joined source and, for each part, (first line in the joined source, file name)."""
    starts: list[tuple[int, str]] = []
    line = 1
    texts: list[str] = []
    for name, text in parts:
        body = text if text.endswith("\n") else text + "\n"
        starts.append((line, f"{name}.lua"))
        line += body.count("\n")
        texts.append(body)
    return "".join(texts), tuple(starts)


_PRELUDE = [(name, _read(name)) for name in PRELUDE]
_JOINED = {name: _join([*_PRELUDE, (name.value, _read(name.value))]) for name in ScriptName}
#: Full source of each script: the state machine chunk, the shared helpers, then the operation.
SOURCES: dict[ScriptName, str] = {name: src for name, (src, _) in _JOINED.items()}
#: Script by the SHA1 Redis knows it by (and names in its error messages).
SHAS: dict[str, ScriptName] = {
    hashlib.sha1(src.encode()).hexdigest(): name for name, src in SOURCES.items()
}
_LINE = re.compile(r"user_script:(\d+)")
_SHA = re.compile(r"script: ([0-9a-f]{40})")


def locate(script: ScriptName, line: int) -> tuple[str, int]:
    """The file and line of ``line`` of ``script``'s joined source."""
    for first, name in reversed(_JOINED[script][1]):
        if line >= first:
            return name, line - first + 1
    return f"{script.value}.lua", line  # pragma: no cover - line numbers start at 1


def explain(message: str, script: ScriptName | None = None) -> str:
    """``message`` (a Redis error) with ``user_script:N`` as ``<file>.lua:<line>``.

    Args:
        message: the error text Redis sent.
        script: the script that ran; found from the SHA1 in ``message`` when not given.
    """
    if script is None:
        found = _SHA.search(message)
        script = SHAS.get(found.group(1)) if found else None
        if script is None:
            return message
    known = script

    def where(m: re.Match[str]) -> str:
        name, line = locate(known, int(m.group(1)))
        return f"{name}:{line}"

    return _LINE.sub(where, message)
