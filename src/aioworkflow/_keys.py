"""Every Redis key name aioworkflow uses. Pure.

All keys of one workflow share the hash tag ``{<workflow id>}`` so that each script touches a
single Redis Cluster slot. :class:`WorkflowKeys` names them; its field order is the KEYS order
every Lua script expects (``lua/_lib.lua`` binds the same names, upper-cased, to ``KEYS[1..14]``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

__all__ = ["ACTIVE", "PARTS", "PREFIX", "WorkflowKeys", "keys_of", "workflow_keys"]

#: Prefix of every key aioworkflow writes.
PREFIX = "aiowf"


class WorkflowKeys(NamedTuple):
    """The 14 keys of one workflow, in script KEYS order (the field name is the key's suffix)."""

    #: hash: state, counts, timestamps, failure details, callbacks (``_machine.MetaField``).
    meta: str
    #: string: u32 big-endian per vertex, predecessors still to finish.
    cnt: str
    #: string: u32 big-endian per vertex + 1, CSR offsets into ``succ``.
    off: str
    #: string: u32 big-endian per edge, successor vertex indices.
    succ: str
    #: bitmap: a bit per vertex, completion counted (the exactly-once guard).
    done: str
    #: hash: node -> "slot:delay:" + message template (direct mode), callbacks too.
    tpl: str
    #: zset: released but not yet claimed (ready mode), score = release ms.
    ready: str
    #: set: released while PAUSED or FAILED, released again by resume/retry.
    held: str
    #: hash: node -> result blob, only for nodes whose result is needed.
    res: str
    #: stream: node and workflow events.
    ev: str
    #: hash: node -> message id of the delivery that started it.
    claims: str
    #: set: failed nodes (cleared by retry).
    failed: str
    #: string: the encoded DAG (never read by Lua; a key so PEXPIRE covers it).
    dag: str
    #: stream: workflow state changes only (what waiters block on).
    st: str

    def as_list(self) -> list[str]:
        """The keys in script KEYS order."""
        return list(self)


#: Per-workflow key parts, in the KEYS order of the Lua scripts.
PARTS: tuple[str, ...] = WorkflowKeys._fields
#: Sorted set of workflows the reconciler looks at (score: submit time in ms).
ACTIVE = f"{PREFIX}:active"


@lru_cache(maxsize=4096)
def keys_of(workflow_id: str) -> WorkflowKeys:
    """The named keys of a workflow (cached: workers ask for the same few again and again)."""
    return WorkflowKeys(*(f"{PREFIX}:{{{workflow_id}}}:{part}" for part in PARTS))


def workflow_keys(workflow_id: str) -> list[str]:
    """The 14 keys of a workflow, in script KEYS order."""
    return keys_of(workflow_id).as_list()
