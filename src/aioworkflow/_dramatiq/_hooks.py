"""The broker's ``before_enqueue``/``after_enqueue`` middleware hooks for direct-mode messages.

In ready mode every node and callback goes through ``broker.enqueue`` when it is released, so
dramatiq runs the hooks then. In direct mode the scripts push pre-rendered templates into the
queues and ``broker.enqueue`` is never called: the hooks run at submit instead, once per node
and callback, on a dramatiq ``Message`` with the node's fields. What ``before_enqueue`` stamps
into its options (a tenant id, a trace context, ...) is rendered into the node's template, so
it reaches the actor on every delivery of that node (retries and ``retry()`` included);
``after_enqueue`` runs once the workflow is stored and started.

Differences from a plain ``broker.enqueue``, documented in the README: the hooks see the node's
message at submit, not when it is released (its ``message_id`` is the one its deliveries carry:
the user's); ``delay`` is the node's own delay.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

import dramatiq

from aioworkflow._compiler import INTERNAL_OPTIONS
from aioworkflow._plan import OPTION

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aioworkflow._dag import Dag

__all__ = ["Stamped", "has_enqueue_hooks", "stamp_direct"]

_HOOKS = ("before_enqueue", "after_enqueue")
#: dramatiq's no-op hooks; a middleware whose class keeps both needs no call per node.
_BASE: tuple[object, ...] = tuple(getattr(dramatiq.Middleware, h) for h in _HOOKS)


def has_enqueue_hooks(broker: dramatiq.Broker) -> bool:
    """Whether a middleware of ``broker`` overrides ``before_enqueue`` or ``after_enqueue``."""
    return any(
        getattr(type(m), h, base) is not base
        for m in broker.middleware
        for h, base in zip(_HOOKS, _BASE, strict=True)
    )


@final
@dataclass(slots=True)
class Stamped:
    """What ``before_enqueue`` added per node/callback, and the messages for ``after_enqueue``."""

    options: dict[int | str, dict[str, Any]] = field(
        default_factory=dict[int | str, dict[str, Any]]
    )
    messages: list[tuple[dramatiq.Message[Any], int | None]] = field(
        default_factory=list[tuple[dramatiq.Message[Any], int | None]]
    )

    def after_enqueue(self, broker: dramatiq.Broker) -> None:
        """Run the broker's ``after_enqueue`` hooks for every message stamped at submit."""
        for msg, delay in self.messages:
            broker.emit_after("enqueue", msg, delay)


def _stamp(
    broker: dramatiq.Broker,
    fields: Mapping[str, Any],
    delay: int | None,
    stamped: Stamped,
    key: int | str,
) -> None:
    original: Mapping[str, Any] = fields["options"]
    msg: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=fields["queue_name"],
        actor_name=fields["actor_name"],
        args=tuple(fields["args"]),
        kwargs=dict(fields["kwargs"]),
        options=dict(original),
    )
    if fields.get("message_id"):  # the id every delivery of the node carries
        msg = dataclasses.replace(msg, message_id=fields["message_id"])
    broker.emit_before("enqueue", msg, delay)
    added = {
        k: v
        for k, v in msg.options.items()
        if k not in INTERNAL_OPTIONS and (k not in original or original[k] != v)
    }
    if added:
        stamped.options[key] = added
    stamped.messages.append((msg, delay))


def stamp_direct(
    broker: dramatiq.Broker,
    workflow_id: str,
    dag: Dag,
    callbacks: Mapping[str, Mapping[str, Any]],
) -> Stamped:
    """Run ``before_enqueue`` for every node and callback (``callbacks``: kind -> fields)."""
    stamped = Stamped()
    if not has_enqueue_hooks(broker):
        return stamped
    for i in range(len(dag)):
        node = dag.node(i)
        fields: dict[str, Any] = {
            "queue_name": node.queue_name,
            "actor_name": node.actor_name,
            "args": node.args,
            "kwargs": node.kwargs,
            "options": {**node.options, OPTION: [workflow_id, i]},
            "message_id": node.message_id,
        }
        _stamp(broker, fields, node.delay or None, stamped, i)
    for kind, cb_fields in callbacks.items():
        _stamp(broker, cb_fields, None, stamped, kind)
    return stamped
