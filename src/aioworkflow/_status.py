"""Workflow states, status snapshots and events: plain values. Pure.

State machine: the rules are data in ``_machine`` (``TRANSITIONS``), which the Lua scripts and
the MemoryStore follow. Every transition is one compare-and-set inside a Lua script, or under the
MemoryStore lock; an operation that does not apply changes nothing and says so. The table below is
rendered from that data by ``python -m aioworkflow._machine_render``:

.. transitions: begin (rendered from _machine.TRANSITIONS; do not edit)

======= ========= ========= ==================================================================================================
from    operation to        also
======= ========= ========= ==================================================================================================
PENDING start     RUNNING   roots released (SUCCEEDED at once if there are no tasks)
PENDING finish    SUCCEEDED ``on_success`` dispatched once
RUNNING finish    SUCCEEDED ``on_success`` dispatched once
PAUSED  finish    SUCCEEDED ``on_success`` dispatched once
FAILED  finish    SUCCEEDED ``on_success`` dispatched once
RUNNING fail      FAILED    nothing new released, ``on_failure`` dispatched once
PAUSED  fail      FAILED    nothing new released, ``on_failure`` dispatched once
RUNNING pause     PAUSED    released nodes are held
PAUSED  resume    RUNNING   held nodes released once
FAILED  retry     RUNNING   failed and held nodes released once, failure details cleared
PENDING cancel    CANCELLED nothing released any more, queued deliveries skipped
RUNNING cancel    CANCELLED nothing released any more, queued deliveries skipped
PAUSED  cancel    CANCELLED nothing released any more, queued deliveries skipped
FAILED  cancel    CANCELLED nothing released any more, queued deliveries skipped
PENDING lose      FAILED    a key is missing: nothing written but this, exc type ``StateLost``, ``on_failure`` dispatched once
RUNNING lose      FAILED    a key is missing: nothing written but this, exc type ``StateLost``, ``on_failure`` dispatched once
PAUSED  lose      FAILED    a key is missing: nothing written but this, exc type ``StateLost``, ``on_failure`` dispatched once
======= ========= ========= ==================================================================================================

.. transitions: end

SUCCEEDED and CANCELLED are final; FAILED is final unless retried.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, final

from ._machine import LEGACY_FIELDS, MetaField, State
from .errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "Event",
    "Progress",
    "RunningNode",
    "State",
    "Transition",
    "WorkflowStatus",
    "status_from_meta",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What a running node last reported with ``report_progress(done, total, note)``."""

    done: float
    total: float | None = None
    note: str | None = None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RunningNode:
    """A node a worker has started and not yet finished (``WorkflowStatus.running_nodes``)."""

    #: The node's index in the workflow (as in events and ``failed_node``).
    node: int
    #: The dramatiq actor it runs ("" when the DAG could not be read).
    actor: str
    #: When the current attempt started (ms since the epoch; None: its start event was
    #: trimmed from the events stream).
    started: int | None
    #: 1 for the first delivery, dramatiq's retries + 1 after (None: start event trimmed).
    attempt: int | None
    #: The node's last ``report_progress`` (None: it reported none in this attempt).
    progress: Progress | None = None


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
    #: ``Workflow(name=)`` (None: unnamed).
    name: str | None = None
    #: ``Workflow(labels=)``.
    labels: Mapping[str, str] = field(default_factory=dict[str, str])
    #: The running nodes, by node index (empty when the caller did not ask for them: ``list``
    #: leaves them out; ``status()`` fills them in).
    running_nodes: tuple[RunningNode, ...] = ()

    @property
    def done(self) -> bool:
        """Whether the workflow has reached a final state."""
        return self.state.is_final


EventKind = Literal[
    "node_started", "node_progress", "node_succeeded", "node_failed", "node_released", "state"
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened to a workflow, from ``handle.events()``.

    ``kind`` is ``"node_started"`` (``attempt`` says which attempt), ``"node_progress"``
    (``progress`` holds the report), ``"node_succeeded"`` or ``"node_failed"`` (``node`` says
    which node) or ``"state"`` (the workflow moved to ``state``); workflows run with
    ``audit=True`` also log ``"node_released"`` for every release. ``id`` orders events (a
    Redis stream id). Every run of a node logs ``node_started`` before its
    ``node_succeeded``/``node_failed``.
    """

    id: str
    kind: EventKind
    node: int | None
    state: State
    #: The attempt of a ``node_started`` event (1: first delivery).
    attempt: int | None = None
    #: The report of a ``node_progress`` event.
    progress: Progress | None = None


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


#: Where 0.1.0 kept each renamed field: a hash no script has touched since the upgrade.
_OLD_NAME = {new: old for old, new in LEGACY_FIELDS.items()}


def _get(meta: dict[str, str], field: MetaField) -> str | None:
    value = meta.get(field)
    if value is None and field in _OLD_NAME:
        value = meta.get(_OLD_NAME[field])
    return value


_INT = re.compile(r"-?[0-9]{1,19}")


def _int(meta: dict[str, str], field: MetaField) -> int | None:
    # a corrupt number (hand-edited, half-written by a foreign tool) reads as missing: a status
    # is for looking at a workflow, it must not crash on what it cannot read
    value = _get(meta, field)
    if value is None or _INT.fullmatch(value) is None:
        return None
    return int(value)


def _state(meta: dict[str, str]) -> State:
    raw = meta.get(MetaField.STATE, "")
    try:
        return State(raw)
    except ValueError:
        data = str(raw).encode("utf-8", "backslashreplace")
        raise DecodeError(f"corrupt workflow meta: {raw!r} is not a state", data) from None


def _labels(meta: dict[str, str]) -> dict[str, str]:
    raw = meta.get(MetaField.LABELS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}  # unreadable labels read as none, like a corrupt number
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]


def status_from_meta(
    workflow_id: str,
    meta: dict[str, str],
    running: int,
    running_nodes: tuple[RunningNode, ...] = (),
) -> WorkflowStatus:
    """Build a WorkflowStatus from a stored meta hash (format 2, or 0.1.0's field names).

    A numeric field that is not an integer reads as missing (None; 0 for the counts).

    Raises:
        DecodeError: the state field is missing or not a state.
    """
    return WorkflowStatus(
        id=workflow_id,
        state=_state(meta),
        total=_int(meta, MetaField.TOTAL) or 0,
        succeeded=_int(meta, MetaField.SUCCEEDED) or 0,
        failed=_int(meta, MetaField.FAILED_COUNT) or 0,
        running=running,
        created_at=_int(meta, MetaField.CREATED),
        started_at=_int(meta, MetaField.STARTED),
        finished_at=_int(meta, MetaField.FINISHED),
        failed_node=_int(meta, MetaField.FAILED_NODE),
        failed_actor=_get(meta, MetaField.FAILED_ACTOR),
        exc_type=_get(meta, MetaField.EXC_TYPE),
        exc_message=_get(meta, MetaField.EXC_MESSAGE),
        name=meta.get(MetaField.NAME),
        labels=_labels(meta),
        running_nodes=running_nodes,
    )
