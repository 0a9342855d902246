"""Every Redis key name aioworkflow uses. Pure.

All keys of one workflow share the hash tag ``{<workflow id>}`` so that each script touches a
single Redis Cluster slot. The order of ``PARTS`` is the KEYS order every Lua script expects
(documented in ``lua/_lib.lua``).
"""

from __future__ import annotations

__all__ = ["ACTIVE", "PARTS", "PREFIX", "workflow_keys"]

#: Prefix of every key aioworkflow writes.
PREFIX = "aiowf"
#: Per-workflow key parts, in the KEYS order of the Lua scripts.
PARTS = (
    "meta", "cnt", "off", "succ", "done", "tpl", "ready", "held", "res", "ev", "claims",
    "failed", "dag", "st",
)  # fmt: skip
#: Sorted set of workflows the reconciler looks at (score: submit time in ms).
ACTIVE = f"{PREFIX}:active"


def workflow_keys(workflow_id: str) -> list[str]:
    """The 14 keys of a workflow, in script KEYS order."""
    return [f"{PREFIX}:{{{workflow_id}}}:{part}" for part in PARTS]
