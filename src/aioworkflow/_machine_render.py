"""Render ``_machine``'s tables as a Lua chunk and as prose, and check both are current. Pure.

``python -m aioworkflow._machine_render`` writes ``lua/_machine.lua`` and the transition table in
``_status.py``'s docstring; ``python -m aioworkflow._machine_render --check`` only compares, and exits 1
naming what drifted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from . import _machine as m

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["LUA_PATH", "STATUS_PATH", "check", "main", "render_lua", "render_table"]

_HERE = Path(__file__).parent
#: The generated Lua chunk.
LUA_PATH = _HERE / "lua" / "_machine.lua"
#: The module whose docstring carries the rendered transition table.
STATUS_PATH = _HERE / "_status.py"
_BEGIN = ".. transitions: begin (rendered from _machine.TRANSITIONS; do not edit)"
_END = ".. transitions: end"


def _q(value: object) -> str:
    return "'" + str(value) + "'"


def _table(name: str, pairs: Iterable[tuple[str, str]], comment: str) -> list[str]:
    body = ", ".join(f"{k} = {v}" for k, v in pairs)
    line = f"local {name} = {{{body}}}"
    out = [f"-- {comment}"]
    if len(line) <= 100:
        return [*out, line]
    return [*out, f"local {name} = {{", *(f"    {k} = {v}," for k, v in pairs), "}"]


def render_lua() -> str:
    """The Lua chunk every script is loaded behind (``lua/_machine.lua``)."""
    lines = [
        "-- _machine.lua: GENERATED from src/aioworkflow/_machine.py by",
        "-- `python -m aioworkflow._machine_render`; do not edit (--check fails on drift).",
        "-- The state machine as data; the loader puts this chunk before _lib.lua and each script.",
    ]
    lines += _table("S", [(s.name, _q(s)) for s in m.State], "workflow states")
    lines += [
        "-- T[op][state]: the state after op; nil: op does not apply in that state",
        "local T = {",
    ]
    for op, rules in m.TRANSITIONS.items():
        body = ", ".join(f"{a.name} = {_q(b)}" for a, b in rules.items())
        lines.append(f"    {op.value} = {{{body}}},")
    lines.append("}")
    lines += _table("FINAL", [(s.name, "true") for s in m.State if s.is_final], "final states")
    lines += _table("RELEASE", [(r.name, _q(r)) for r in m.Release], "release decisions")
    lines += _table(
        "ON_RELEASE",
        [(s.name, _q(r)) for s, r in m.ON_RELEASE.items()],
        "release decision by state (nil: RELEASE.DROP)",
    )
    lines += _table("CLAIM", [(c.name, str(c.value)) for c in m.ClaimCode], "claim.lua codes")
    lines += _table(
        "CLAIM_IN_STATE",
        [(s.name, str(c.value)) for s, c in m.CLAIM_IN_STATE.items()],
        "claim answer decided by the state alone",
    )
    lines += _table("SUBMIT", [(c.name, str(c.value)) for c in m.SubmitCode], "submit.lua codes")
    lines += _table("OUT", [(o.name, str(o.value)) for o in m.Outcome], "reply outcomes")
    lines += _table("REJECT", [(r.name, _q(r)) for r in m.RejectReason], "rejection reasons")
    lines += _table("CB", [(c.name, _q(c)) for c in m.CallbackKind], "callback kinds (wire)")
    lines += _table(
        "IS_CB", [(c.value, "true") for c in m.CallbackKind], "is this node key a callback?"
    )
    lines += _table(
        "CB_FIELD",
        [(c.value, _q(f)) for c, f in m.CALLBACK_FIELD.items()],
        "meta field of each callback's message",
    )
    lines += _table("MODE", [(x.name, _q(x)) for x in m.Mode], "dispatch modes (stored)")
    lines += _table("EVENT", [(e.name, _q(e)) for e in m.EventCode], "event codes (stored)")
    lines += _table(
        "EVENT_FIELD", [(k, _q(v)) for k, v in m.EVENT_FIELDS.items()], "event stream entry fields"
    )
    lines += _table("F", [(f.name.lower(), _q(f)) for f in m.MetaField], "meta hash fields")
    lines += [
        "-- the stored format this version writes",
        f"local FORMAT = {m.META_FORMAT}",
        "-- exception type of a workflow failed by T.lose; hex digits of a message token",
        f"local STATE_LOST = {_q(m.STATE_LOST)}",
        f"local MSG_TOKEN_CHARS = {m.MESSAGE_TOKEN_CHARS}",
        "-- 0.1.0 names of renamed meta fields {old, new}, and fields no longer written",
        "local LEGACY = {",
        *(f"    {{{_q(old)}, {_q(new)}}}," for old, new in m.LEGACY_FIELDS.items()),
        "}",
        "local DROPPED = {" + ", ".join(_q(x) for x in m.DROPPED_FIELDS) + "}",
    ]
    return "\n".join(lines) + "\n"


def render_table() -> str:
    """The transition table as reStructuredText (for ``_status.py``'s docstring)."""
    rows = [("from", "operation", "to", "also")]
    for op, rules in m.TRANSITIONS.items():
        rows += [(a.value, op.value, b.value, m.EFFECTS[op]) for a, b in rules.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = " ".join("=" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        return " ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([rule, fmt(rows[0]), rule, *(fmt(r) for r in rows[1:]), rule])


def _with_table(text: str) -> str:
    head, sep, rest = text.partition(_BEGIN + "\n")
    _old, sep2, tail = rest.partition(_END)
    if not sep or not sep2:
        raise SystemExit(f"{STATUS_PATH}: the transition table markers are missing")
    return head + sep + "\n" + render_table() + "\n\n" + _END + tail


def check() -> list[str]:
    """Paths whose rendered text differs from what this module renders now."""
    drifted: list[str] = []
    if not LUA_PATH.exists() or LUA_PATH.read_text(encoding="utf-8") != render_lua():
        drifted.append(str(LUA_PATH))
    status = STATUS_PATH.read_text(encoding="utf-8")
    if _with_table(status) != status:
        drifted.append(str(STATUS_PATH))
    return drifted


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the rendered texts; 1 if ``--check`` found drift."""
    parser = argparse.ArgumentParser(
        prog="python -m aioworkflow._machine_render", description=__doc__
    )
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        drifted = check()
        for path in drifted:
            print(f"{path} is out of date: run python -m aioworkflow._machine_render")  # noqa: T201
        return 1 if drifted else 0
    LUA_PATH.write_text(render_lua(), encoding="utf-8")
    STATUS_PATH.write_text(_with_table(STATUS_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover - the generator's command line
    raise SystemExit(main())
