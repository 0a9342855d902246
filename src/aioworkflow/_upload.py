"""What a store writes for a new workflow (its stored format), as plain data. Pure.

Theory of operation
-------------------
A workflow is stored once, at submit, as an :class:`Upload`: the meta hash (fields named by
``_machine.MetaField``, format ``_machine.META_FORMAT``), the encoded DAG (for workers), the
topology in a form Lua can read without decoding anything (three big-endian u32 arrays:
remaining-predecessor counters, CSR offsets, CSR targets), and in *direct mode* one message
template per task node. Everything after submit is one script call per event, built and parsed
by ``_protocol``.

Direct mode (a RedisBroker on the same Redis as the store, JSON encoding): scripts append
released messages to dramatiq's queues themselves, so release and enqueue are one atomic step.
A template is the JSON a RedisBroker would store, with three holes that Lua fills per push:
``\\0I`` (a fresh push id: the ``redis_message_id`` and the ref's push id), ``\\0T`` (the enqueue
time) and ``\\0E`` (the eta of a delayed node). The ``message_id`` is the one of the message
the user built (the Dag's id column), the same in every push of the node. orjson escapes control characters, so a raw NUL byte never
occurs in its output and the holes cannot collide with user data.

Ready mode (any other broker, or Redis Cluster): scripts put released nodes in a ready set and
reply with them; the worker enqueues them through the broker and the node's claim removes them.

Every message names its workflow in the ``OPTION`` option, a :func:`message_ref`:
``[workflow id, node, token, push id]`` (node a ``CallbackKind`` value for the callbacks), with
a last element ``1`` once a worker has appended the piped input to its arguments (a retried
delivery must not get it twice). The push id is fresh per push (the ``\\0I`` hole in direct
mode, a uuid4 in ready mode) while the ``message_id`` is the user's, the same in every push: the
claim script dedupes deliveries by the push id (a different one is a copy in flight, the same
one a redelivery that may run again), by the ``message_id`` for a ref without one (queued
before push ids existed: ``[workflow id, node, token]``). The token (``MetaField.MSG_TOKEN``, 16 hex digits drawn per
submission) is checked by the claim, complete and fail scripts: a message of an earlier
workflow that had the same id never matches. Messages of workflows stored before tokens
existed are ``[workflow id, node]`` (``[workflow id, node, 1]`` piped), and their meta has no
token: they keep working (:func:`parse_ref` reads both). The push ids the scripts draw
are ``<token>.<node>.<seq>`` (the token makes them unique across workflows and keeps their
length independent of the workflow id's), ``<workflow id>.<node>.<seq>`` without one.
"""

from __future__ import annotations

import secrets
import uuid
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast, final

from ._codec import dumps_json
from ._machine import (
    CALLBACK_FIELD,
    MESSAGE_TOKEN_CHARS,
    META_FORMAT,
    CallbackKind,
    MetaField,
    Mode,
)
from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._dag import Dag

__all__ = [
    "OPTION",
    "Callback",
    "Ref",
    "Upload",
    "build_upload",
    "check_labels",
    "check_name",
    "message_fields",
    "message_ref",
    "new_message_token",
    "new_push_id",
    "parse_ref",
    "piped_ref",
    "queue_slots",
    "ref_token",
    "template",
]

#: Option under which a workflow message carries its :func:`message_ref`, and nothing else
#: about the workflow.
OPTION = "aiowf"
#: Marker of a ref whose delivery already has its piped input (4th element).
_PIPED = 1
_CALLBACK_KEYS = frozenset(k.value for k in CallbackKind)


def new_message_token() -> str:
    """A fresh per-submission message token (``MESSAGE_TOKEN_CHARS`` hex digits, 64 bits)."""
    return secrets.token_hex(MESSAGE_TOKEN_CHARS // 2)


def message_ref(workflow_id: str, node: int | str, token: str, push: str = "") -> list[Any]:
    """The ``OPTION`` value of a node or callback message (``token`` "" : a legacy ref).

    ``push`` is the delivery's push id (the claim key); a ref without a token has none.
    """
    if not token:
        return [workflow_id, node]
    return [workflow_id, node, token, push] if push else [workflow_id, node, token]


def new_push_id() -> str:
    """A fresh push id for a message the worker enqueues (ready mode): a uuid4's hex digits."""
    return uuid.uuid4().hex


class Ref(NamedTuple):
    """A parsed ``OPTION`` value: which workflow, node and submission a delivery claims."""

    workflow_id: str
    #: A task node index (int, never bool) or a ``CallbackKind`` value.
    node: int | str
    #: The submission's message token ("" in messages of workflows stored before tokens).
    token: str
    #: The piped input was already appended to the arguments.
    piped: bool
    #: The push id, fresh per push ("" in refs queued before push ids): the claim key.
    push: str = ""

    def claim_key(self, message_id: str) -> str:
        """What the claim dedupes this delivery by: its push id, else its ``message_id``."""
        return self.push or message_id


def parse_ref(value: Any) -> Ref | str:
    """Read an ``OPTION`` value; a string says why it is not a valid ref (forged, corrupt).

    Only the node's *type* is checked here; its range is the workflow's business.
    """
    if not isinstance(value, list):
        return "not a list"
    items: list[Any] = value  # pyright: ignore[reportUnknownVariableType]
    if not 2 <= len(items) <= 5:
        return "not a list of 2 to 5 elements"
    workflow_id, node, rest = items[0], items[1], items[2:]
    if not isinstance(workflow_id, str):
        return "the workflow id is not a string"
    if isinstance(node, bool) or not (
        (isinstance(node, int) and node >= 0) or node in _CALLBACK_KEYS
    ):
        return f"node {node!r} is neither a node index nor a callback kind"
    # then the token and the push id (strings), then the piped marker
    strings: list[str] = []
    for item in rest[:2]:
        if not isinstance(item, str):
            break
        strings.append(item)
    rest = rest[len(strings) :]
    token, push = (*strings, "", "")[:2]
    if strings and not token:
        return "empty token"
    if len(strings) == 2 and not push:
        return "empty push id"
    if rest != [] and rest != [_PIPED]:
        return f"unexpected elements {rest!r}"
    return Ref(workflow_id, node, token, bool(rest), push)


def ref_token(value: Any) -> str:
    """The token of an ``OPTION`` value ("" when it has none or is malformed)."""
    ref = parse_ref(value)
    return "" if isinstance(ref, str) else ref.token


def piped_ref(ref: Ref) -> list[Any]:
    """``ref`` as an ``OPTION`` value marked "piped input injected"."""
    base = message_ref(ref.workflow_id, ref.node, ref.token, ref.push)
    return [*base, _PIPED]


@final
@dataclass(frozen=True, slots=True)
class Callback:
    """A success or failure callback message (the workflow id is appended to its args)."""

    actor_name: str
    queue_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    #: The user's message's id, kept by every delivery ("": a fresh one per delivery).
    message_id: str = ""


def message_fields(
    workflow_id: str, node: int | str, actor: str, queue: str,
    args: Sequence[Any], kwargs: Mapping[str, Any], options: Mapping[str, Any],
    token: str = "", message_id: str = "",
) -> dict[str, Any]:  # fmt: skip
    """The dramatiq message fields (less times and push id) of a node or callback delivery.

    ``message_id`` is the user's (kept by every delivery); "" leaves it out (a fresh one per
    delivery).
    """
    fields: dict[str, Any] = {
        "queue_name": queue,
        "actor_name": actor,
        "args": list(args),
        "kwargs": dict(kwargs),
        "options": {**options, OPTION: message_ref(workflow_id, node, token)},
    }
    if message_id:
        fields["message_id"] = message_id
    return fields


def template(fields: Mapping[str, Any], *, delayed: bool) -> bytes:
    """Render message fields as a RedisBroker payload with the ``\\0I``/``\\0T``/``\\0E`` holes.

    The push id (``\\0I``) is the ``redis_message_id`` and the last string of the ``OPTION``
    ref (a ref without a token gets none); the ``message_id`` is ``fields["message_id"]`` when
    given, else the push id too.
    """
    options = dict(fields["options"])
    ref = options.pop(OPTION)
    head = dumps_json({k: fields[k] for k in ("queue_name", "actor_name", "args", "kwargs")})
    opts = dumps_json(options)[:-1]
    sep = b"," if options else b""
    # the ref as JSON with the push id's hole spliced in (orjson would escape a NUL)
    ref_json = dumps_json(ref)[:-1] + (b',"\x00I"]' if len(ref) == 3 else b"]")
    eta = b',"eta":\x00E' if delayed else b""
    mid = fields.get("message_id")
    return (
        head[:-1]
        + b',"options":'
        + opts
        + sep
        + b'"%s":' % OPTION.encode()
        + ref_json
        + b',"redis_message_id":"\x00I"'
        + eta
        + b'},"message_id":'
        + (dumps_json(mid) if mid else b'"\x00I"')
        + b',"message_timestamp":\x00T}'
    )


def queue_slots(dag: Dag, callbacks: Sequence[Callback]) -> list[str]:
    """Distinct dramatiq queues a workflow pushes to: ``q`` or ``q.DQ`` for delayed nodes."""
    slots: dict[str, None] = {}
    for i in range(len(dag)):
        queue = dag.shapes[dag.shape_of[i]][1]
        slots[f"{queue}.DQ" if dag.delays.get(i) else queue] = None
    for cb in callbacks:
        slots[cb.queue_name] = None
    return list(slots)


_LITTLE = array("I", [1]).tobytes()[0] == 1


def _u32(values: Sequence[int]) -> bytes:
    """Big-endian u32 array, the layout BITFIELD and Lua's struct.unpack('>I4') read."""
    arr = array("I", values)
    if _LITTLE:
        arr.byteswap()
    return arr.tobytes()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Upload:
    """Everything stored at submit, before the start script runs."""

    meta: dict[str, str | int]
    dag: bytes
    cnt: bytes
    off: bytes
    succ: bytes
    templates: dict[str, bytes] = field(default_factory=dict[str, bytes])
    roots: tuple[int, ...] = ()
    slots: list[str] = field(default_factory=list[str])
    #: The callbacks' message fields (also stored as JSON in the meta hash).
    callbacks: dict[CallbackKind, dict[str, Any]] = field(
        default_factory=dict[CallbackKind, dict[str, Any]]
    )
    #: The token every message of this submission carries (``MetaField.MSG_TOKEN``).
    token: str = ""


#: Longest workflow name, in characters.
MAX_NAME = 200
#: Most labels on one workflow, and the longest label key and value, in characters.
MAX_LABELS = 32
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 200


def check_name(name: object) -> str | None:
    """Return a valid ``Workflow(name=)`` (None: unnamed).

    Raises:
        ConfigurationError: not a string, empty, or longer than ``MAX_NAME`` characters.
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigurationError(f"a workflow name is a string, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME:
        raise ConfigurationError(f"a workflow name has 1 to {MAX_NAME} characters, not {len(name)}")
    return name


def check_labels(labels: object) -> dict[str, str]:
    """Return a valid ``Workflow(labels=)`` as a plain dict (sorted by key).

    Raises:
        ConfigurationError: not a mapping of strings to strings; more than ``MAX_LABELS``
            labels; an empty key, a key with ``=`` (``--label k=v`` could not name it), or
            one longer than ``MAX_LABEL_KEY``; a value longer than ``MAX_LABEL_VALUE``.
    """
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ConfigurationError(f"labels are a mapping, not {type(labels).__name__}")
    items = cast("Mapping[object, object]", labels)
    if len(items) > MAX_LABELS:
        raise ConfigurationError(f"{len(items)} labels: at most {MAX_LABELS} are allowed")
    out: dict[str, str] = {}
    for key, value in items.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(f"label {key!r}: {value!r}: keys and values are strings")
        if not key or "=" in key or len(key) > MAX_LABEL_KEY:
            raise ConfigurationError(f"label key {key!r}: 1 to {MAX_LABEL_KEY} characters, no '='")
        if len(value) > MAX_LABEL_VALUE:
            raise ConfigurationError(
                f"label {key!r}: value of {len(value)} characters, at most {MAX_LABEL_VALUE}"
            )
        out[key] = value
    return dict(sorted(out.items()))


def build_upload(
    workflow_id: str,
    dag: Dag,
    *,
    direct: bool,
    on_success: Callback | None = None,
    on_failure: Callback | None = None,
    retention_ms: int,
    now_ms: int,
    audit: bool = False,
    trace: str = "",
    stamped: Mapping[int | str, Mapping[str, Any]] | None = None,
    failed_retention_ms: int | None = None,
    token: str | None = None,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Upload:
    """Build what a store writes for a new workflow.

    Args:
        workflow_id: the new workflow's id.
        dag: the compiled workflow.
        direct: render message templates for direct enqueue by the scripts.
        on_success: callback dispatched once when the last node succeeds.
        on_failure: callback dispatched once when a node fails for good.
        retention_ms: how long keys live after the workflow ends.
        now_ms: submit time (milliseconds since the epoch).
        audit: log every release as an event (for tests and debugging).
        trace: W3C traceparent of the root of the workflow's trace ("": not traced).
        stamped: options the broker's ``before_enqueue`` hooks added, per node index and
            callback kind (direct mode: rendered into the templates; see ``_dramatiq._hooks``).
        failed_retention_ms: how long keys live after the workflow failed (default:
            ``retention_ms``).
        token: the submission's message token (default: a fresh one).
        name: the workflow's name (checked by ``check_name``).
        labels: the workflow's labels (checked by ``check_labels``).
    """
    extra = stamped or {}
    token = token or new_message_token()
    callbacks = {CallbackKind.SUCCESS: on_success, CallbackKind.FAILURE: on_failure}
    present = [cb for cb in callbacks.values() if cb is not None]
    slots = queue_slots(dag, present) if direct else []
    meta: dict[str, str | int] = {
        MetaField.FORMAT: META_FORMAT,
        MetaField.TOTAL: len(dag),
        MetaField.SUCCEEDED: 0,
        MetaField.FAILED_COUNT: 0,
        MetaField.SEQ: 0,
        MetaField.MODE: Mode.DIRECT if direct else Mode.READY,
        MetaField.RETENTION_MS: retention_ms,
        MetaField.FAILED_RETENTION_MS: (
            retention_ms if failed_retention_ms is None else failed_retention_ms
        ),
        MetaField.MSG_TOKEN: token,
        MetaField.CREATED: now_ms,
        MetaField.SLOTS: dumps_json(slots).decode(),
    }
    if audit:
        meta[MetaField.AUDIT] = 1
    if trace:
        meta[MetaField.TRACE] = trace
    if name is not None:
        meta[MetaField.NAME] = check_name(name) or ""
    if labels:
        meta[MetaField.LABELS] = dumps_json(check_labels(labels)).decode()
    templates: dict[str, bytes] = {}
    stored: dict[CallbackKind, dict[str, Any]] = {}
    slot_of = {q: i for i, q in enumerate(slots)}
    for key, cb in callbacks.items():
        if cb is None:
            continue
        fields = message_fields(
            workflow_id, key, cb.actor_name, cb.queue_name, (*cb.args, workflow_id),
            cb.kwargs, {**cb.options, **extra.get(str(key), {})}, token, cb.message_id,
        )  # fmt: skip
        stored[key] = fields
        meta[CALLBACK_FIELD[key]] = dumps_json(fields).decode()
        if direct:
            templates[key] = b"%d:0:" % slot_of[cb.queue_name] + template(fields, delayed=False)
    if direct:
        for i in range(len(dag)):
            actor, queue, options = dag.shapes[dag.shape_of[i]]
            delay = dag.delays.get(i, 0)
            eff = f"{queue}.DQ" if delay else queue
            fields = message_fields(
                workflow_id, i, actor, eff, dag.args[i], dag.kwargs.get(i, {}),
                {**options, **extra[i]} if i in extra else options, token,
                dag.ids[i] if dag.ids else "",
            )  # fmt: skip
            templates[str(i)] = b"%d:%d:" % (slot_of[eff], delay) + template(
                fields, delayed=bool(delay)
            )
    return Upload(
        meta=meta,
        # direct mode: the templates carry the message ids (ready mode: build_message reads them)
        dag=dag.encode(ids=not direct),
        cnt=_u32(dag.pred_counts),
        off=_u32(dag.offsets),
        succ=_u32(dag.targets),
        templates=templates,
        roots=dag.roots,
        slots=slots,
        callbacks=stored,
        token=token,
    )
