"""Workflow states, status snapshots and events: plain values. Pure.

State machine (every transition is one compare-and-set inside a Lua script, or under the
MemoryStore lock; a call that does not apply changes nothing and says so):

=========== ========================= ==========================================
from        operation                 to
=========== ========================= ==========================================
PENDING     start (inside ``run()``)  RUNNING (SUCCEEDED at once if no tasks)
RUNNING     last node succeeds        SUCCEEDED, ``on_success`` dispatched once
RUNNING     a node fails for good     FAILED, ``on_failure`` dispatched once
RUNNING     ``pause()``               PAUSED
PAUSED      ``resume()``              RUNNING, held nodes released once
PAUSED      last node succeeds        SUCCEEDED
PAUSED      a node fails for good     FAILED
FAILED      ``retry()``               RUNNING, failed and held nodes released once
any live    ``cancel()``              CANCELLED (PENDING, RUNNING, PAUSED, FAILED)
=========== ========================= ==========================================

SUCCEEDED and CANCELLED are final; FAILED is final unless retried.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, final

__all__ = ["Event", "State", "Transition", "WorkflowStatus", "status_from_meta"]


class State(enum.StrEnum):
    """The state of a workflow."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED: nothing runs until a ``retry()`` (FAILED only)."""
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStatus:
    """A snapshot of a workflow's progress, from ``handle.status()``."""

    id: str
    state: State
    #: Task nodes in the workflow.
    total: int
    succeeded: int
    #: Nodes that failed for good (cleared by ``retry()``).
    failed: int
    #: Nodes a worker has started and not yet finished.
    running: int
    created_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    #: Details of the node that made the workflow fail, when FAILED.
    failed_node: int | None = None
    failed_actor: str | None = None
    exc_type: str | None = None
    exc_message: str | None = None

    @property
    def done(self) -> bool:
        """Whether the workflow has reached a final state."""
        return self.state.is_final


EventKind = Literal["node_succeeded", "node_failed", "node_released", "state"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened to a workflow, from ``handle.events()``.

    ``kind`` is ``"node_succeeded"`` or ``"node_failed"`` (``node`` says which) or ``"state"``
    (the workflow moved to ``state``); workflows run with ``audit=True`` also log
    ``"node_released"`` for every release. ``id`` orders events (a Redis stream id).
    """

    id: str
    kind: EventKind
    node: int | None
    state: State


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """The answer of a control call (``cancel``, ``pause``, ``resume``, ``retry``).

    ``changed`` is False when the call did not apply (cancel after success, resume of a running
    workflow, a second concurrent retry); ``state`` is the state after the call.
    """

    changed: bool
    state: State
    #: Nodes released by this call (``resume``, ``retry``).
    released: int = 0


def _int(meta: dict[str, str], key: str) -> int | None:
    value = meta.get(key)
    return int(value) if value not in (None, "") else None


def status_from_meta(workflow_id: str, meta: dict[str, str], running: int) -> WorkflowStatus:
    """Build a WorkflowStatus from a stored meta hash."""
    return WorkflowStatus(
        id=workflow_id,
        state=State(meta["state"]),
        total=int(meta.get("total", 0)),
        succeeded=int(meta.get("ok", 0)),
        failed=int(meta.get("nf", 0)),
        running=running,
        created_at=_int(meta, "created"),
        started_at=_int(meta, "started"),
        finished_at=_int(meta, "finished"),
        failed_node=_int(meta, "fnode"),
        failed_actor=meta.get("factor"),
        exc_type=meta.get("fexc"),
        exc_message=meta.get("fmsg"),
    )
