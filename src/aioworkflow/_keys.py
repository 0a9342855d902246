"""Every Redis key name aioworkflow uses. Pure.

All keys of one workflow share the hash tag ``{<workflow id>}`` so that each script touches a
single Redis Cluster slot. :class:`WorkflowKeys` names them; its field order is the KEYS order
every Lua script expects (``lua/_lib.lua`` binds the same names, upper-cased, to ``KEYS[1..14]``).
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import NamedTuple

from .errors import ConfigurationError

__all__ = [
    "ACTIVE",
    "INDEX_SHARDS",
    "MAX_ID_LENGTH",
    "PARTS",
    "PREFIX",
    "WorkflowKeys",
    "check_workflow_id",
    "index_key",
    "index_keys",
    "keys_of",
    "workflow_keys",
]

#: Longest workflow id, in characters: it is repeated in every key of the workflow and in
#: every message id its scripts push, so it is bounded (message size stays small).
MAX_ID_LENGTH = 200


def check_workflow_id(workflow_id: object) -> str:
    """Return ``workflow_id`` if it can name a workflow in every mode.

    Any non-empty string of at most ``MAX_ID_LENGTH`` characters that encodes as UTF-8 and does
    not start with ``}`` works: quotes, backslashes and control characters (NUL included) are
    JSON-escaped wherever an id is rendered into a message.

    Raises:
        ConfigurationError: not a string, empty, too long, not encodable as UTF-8 (a lone
            surrogate), or starting with ``}`` (the id is the Redis Cluster hash tag of the
            workflow's keys, ``aiowf:{<id>}:...``; ``{}`` would hash each key on its own).
    """
    if not isinstance(workflow_id, str):
        raise ConfigurationError(f"a workflow id is a string, not {type(workflow_id).__name__}")
    if not workflow_id:
        raise ConfigurationError("a workflow id must not be empty (omit id= for a random one)")
    if len(workflow_id) > MAX_ID_LENGTH:
        raise ConfigurationError(
            f"workflow id of {len(workflow_id)} characters: at most {MAX_ID_LENGTH} are allowed"
        )
    try:
        workflow_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = workflow_id[exc.start]
        raise ConfigurationError(f"workflow id contains {bad!r}, not encodable as UTF-8") from None
    if workflow_id.startswith("}"):
        raise ConfigurationError(
            f"workflow id {workflow_id!r} starts with '}}': its keys would not share a Redis "
            "Cluster slot (the id is their hash tag)"
        )
    return workflow_id


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


#: Shards of the listing index (``list_workflows``): sorted sets ``aiowf:{idx:<k>}``, member
#: the workflow id, score its submit time in ms. Each shard is its own hash tag, so on Redis
#: Cluster the shards spread over slots; the client writes a workflow's entry at submit (one
#: ZADD, pipelined with the ACTIVE one), never a script: a script may touch one slot only.
INDEX_SHARDS = 16


def index_key(workflow_id: str) -> str:
    """The listing-index shard of a workflow (a stable hash of its id)."""
    return f"{PREFIX}:{{idx:{zlib.crc32(workflow_id.encode()) % INDEX_SHARDS}}}"


def index_keys() -> list[str]:
    """Every listing-index shard."""
    return [f"{PREFIX}:{{idx:{k}}}" for k in range(INDEX_SHARDS)]


@lru_cache(maxsize=4096)
def keys_of(workflow_id: str) -> WorkflowKeys:
    """The named keys of a workflow (cached: workers ask for the same few again and again)."""
    return WorkflowKeys(*(f"{PREFIX}:{{{workflow_id}}}:{part}" for part in PARTS))


def workflow_keys(workflow_id: str) -> list[str]:
    """The 14 keys of a workflow, in script KEYS order."""
    return keys_of(workflow_id).as_list()
