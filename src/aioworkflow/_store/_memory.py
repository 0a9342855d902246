"""MemoryStore: the scripts' semantics in one process, for the embedded default and unit tests.

Each method below is the Python twin of the Lua script of the same name and runs under one
lock, which gives it the same atomicity. Like the scripts, it takes every rule from the tables of
``_machine`` (``TRANSITIONS``, ``ON_RELEASE``, ``CLAIM_IN_STATE``) and names meta fields by
``MetaField``. It always works in ready mode (there is no Redis queue to push into): released
nodes are returned and the worker enqueues them.
"""

# pyright: reportPrivateUsage=false
# (_AsyncMemory is the same store's async face: it shares the store's lock and tables)
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from aioworkflow._dag import Dag
from aioworkflow._machine import (
    CLAIM_IN_STATE,
    FINAL_STATES,
    ON_RELEASE,
    CallbackKind,
    ClaimCode,
    MetaField,
    Mode,
    Op,
    Outcome,
    RejectReason,
    Release,
    State,
    transition,
)
from aioworkflow._protocol import Claim, Completion
from aioworkflow._status import Event, EventKind, Progress, RunningNode
from aioworkflow.errors import WorkflowExists

from ._base import DEFAULT_FAILED_RETENTION, DEFAULT_RETENTION, Loaded, retention_ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aioworkflow._protocol import BrokerAck
    from aioworkflow._upload import Upload

__all__ = ["MemoryStore"]


def _now() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Wf:
    meta: dict[str, str]
    loaded: Loaded
    cnt: list[int]
    done: set[int] = field(default_factory=set[int])
    ready: dict[int | CallbackKind, int] = field(default_factory=dict[int | CallbackKind, int])
    held: set[int] = field(default_factory=set[int])
    res: dict[int, bytes] = field(default_factory=dict[int, bytes])
    events: list[Event] = field(default_factory=list[Event])
    claims: dict[int | CallbackKind, str] = field(default_factory=dict[int | CallbackKind, str])
    failed: set[int] = field(default_factory=set[int])
    expires: float | None = None
    #: node -> (start ms, attempt) of its latest run (read only for nodes in ``claims``).
    started: dict[int, tuple[int, int]] = field(default_factory=dict[int, tuple[int, int]])
    #: node -> the latest progress report of its current run.
    progress: dict[int, Progress] = field(default_factory=dict[int, Progress])

    @property
    def state(self) -> State:
        return State(self.meta[MetaField.STATE])


_CALLBACK_KEYS = frozenset(k.value for k in CallbackKind)


def _token_ok(wf: _Wf, token: str) -> bool:
    # as token_ok in _lib.lua: a workflow without a token accepts only messages without one
    return wf.meta.get(MetaField.MSG_TOKEN, "") == token


def _actor(loaded: Loaded, node: int) -> str:
    dag = loaded.dag
    return dag.shapes[dag.shape_of[node]][0]


def _is_node(wf: _Wf, node: object) -> bool:
    # as task_node in _lib.lua: an int (not a bool) 0 <= node < total
    return type(node) is int and 0 <= node < len(wf.loaded.dag)


def _rejected(wf: _Wf, node: object, token: str) -> Completion | None:
    if not _token_ok(wf, token):
        return Completion(Outcome.REJECTED, wf.state, reason=RejectReason.TOKEN)
    if not _is_node(wf, node):
        return Completion(Outcome.REJECTED, wf.state, reason=RejectReason.NODE)
    return None


@final
class MemoryStore:
    """Workflow state in this process: no Redis needed (pair it with dramatiq's StubBroker).

    Args:
        retention: seconds a finished workflow is kept (default one day).
        result_limit: largest stored result in bytes (default 1 MiB).
        failed_retention: seconds a FAILED workflow is kept (default seven days): it can still
            be retried, so it is kept longer than one that succeeded or was cancelled.

    Raises:
        ConfigurationError: a retention is not a positive finite number.
    """

    def __init__(
        self,
        *,
        retention: float = DEFAULT_RETENTION,
        result_limit: int = 1 << 20,
        failed_retention: float = DEFAULT_FAILED_RETENTION,
    ) -> None:
        self.retention_ms: int = retention_ms("retention", retention)
        self.failed_retention_ms: int = retention_ms("failed_retention", failed_retention)
        self.result_limit = result_limit
        self._lock = threading.Lock()
        self._wfs: dict[str, _Wf] = {}
        self._seq = 0
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    # -- backend protocol ------------------------------------------------------------------
    @property
    def sync(self) -> MemoryStore:
        """This store is its own sync driver."""
        return self

    def aio(self) -> _AsyncMemory:
        """An async view of this store."""
        return _AsyncMemory(self)

    async def aclose(self) -> None:
        """Nothing to close (present for symmetry with RedisStore)."""

    def close(self) -> None:
        """Nothing to close (present for symmetry with RedisStore)."""

    def shares_server(self, client: Any) -> bool:
        """Never: there is no Redis for a broker to share."""
        return False

    # -- helpers (caller holds the lock) ----------------------------------------------------
    def _get(self, workflow_id: str) -> _Wf | None:
        wf = self._wfs.get(workflow_id)
        if wf is not None and wf.expires is not None and wf.expires < time.time():
            del self._wfs[workflow_id]
            return None
        return wf

    def _event(
        self,
        workflow_id: str,
        wf: _Wf,
        kind: EventKind,
        node: int | None,
        *,
        attempt: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._seq += 1
        wf.events.append(
            Event(
                id=str(self._seq),
                kind=kind,
                node=node,
                state=wf.state,
                attempt=attempt,
                progress=progress,
            )
        )
        for loop, ev in self._waiters.get(workflow_id, ()):
            loop.call_soon_threadsafe(ev.set)

    def _set_state(self, workflow_id: str, wf: _Wf, state: State) -> None:
        wf.meta[MetaField.STATE] = state.value
        wf.meta[MetaField.UPDATED] = str(_now())
        self._event(workflow_id, wf, "state", None)
        if state in FINAL_STATES:
            wf.meta[MetaField.FINISHED] = str(_now())
            keep = self.retention_ms
            if state is State.FAILED:
                keep = int(wf.meta.get(MetaField.FAILED_RETENTION_MS) or keep)
            wf.expires = time.time() + keep / 1000
        else:
            wf.expires = None

    def _release(self, wf: _Wf, node: int, out: list[int | CallbackKind]) -> None:
        decision = ON_RELEASE.get(wf.state, Release.DROP)
        if decision is Release.DISPATCH:
            wf.ready[node] = _now()
            out.append(node)
            if wf.meta.get(MetaField.AUDIT) == "1":
                self._event(wf.meta["id"], wf, "node_released", node)
        elif decision is Release.HOLD:
            wf.held.add(node)

    def _dispatch_callback(self, wf: _Wf, key: CallbackKind, out: list[int | CallbackKind]) -> None:
        if key in wf.loaded.callbacks:
            wf.ready[key] = _now()
            out.append(key)

    def _cascade(self, wf: _Wf, v0: int, out: list[int | CallbackKind]) -> None:
        dag = wf.loaded.dag
        stack = [v0]
        while stack:
            v = stack.pop()
            for w in dag.successors(v):
                wf.cnt[w] -= 1
                if wf.cnt[w] == 0:
                    if dag.is_join(w):
                        wf.done.add(w)
                        stack.append(w)
                    else:
                        self._release(wf, w, out)

    # -- the sync driver ------------------------------------------------------------------
    def submit(self, workflow_id: str, upload: Upload) -> Completion:
        """Store and start a workflow (the twin of upload + ``start.lua``)."""
        dag = Dag.decode(upload.dag)
        callbacks: dict[str, dict[str, Any]] = dict(upload.callbacks.items())
        with self._lock:
            if self._get(workflow_id) is not None:
                raise WorkflowExists(f"a workflow with id {workflow_id!r} already exists")
            meta = {str(k): str(v) for k, v in upload.meta.items()}
            meta[MetaField.STATE] = State.PENDING.value
            meta["id"] = workflow_id
            loaded = Loaded(
                dag, Mode.READY, [], callbacks,
                trace=meta.get(MetaField.TRACE, ""), token=upload.token,
            )  # fmt: skip
            wf = _Wf(meta, loaded, list(dag.pred_counts))
            self._wfs[workflow_id] = wf
            wf.meta[MetaField.STARTED] = str(_now())
            out: list[int | CallbackKind] = []
            started = transition(Op.START, wf.state)
            assert started is not None
            if len(dag) == 0:
                finished = transition(Op.FINISH, wf.state)
                assert finished is not None
                self._set_state(workflow_id, wf, finished)
                self._dispatch_callback(wf, CallbackKind.SUCCESS, out)
            else:
                self._set_state(workflow_id, wf, started)
                for root in upload.roots:
                    self._release(wf, root, out)
            return Completion(Outcome.APPLIED, wf.state, tuple(out))

    def load(self, workflow_id: str) -> Loaded | None:
        """See :meth:`Store.load`."""
        with self._lock:
            wf = self._get(workflow_id)
            return None if wf is None else wf.loaded

    def claim(
        self,
        workflow_id: str,
        node: int | str,
        message_id: str,
        pipe_nodes: Sequence[int],
        token: str = "",
        attempt: int = 1,
    ) -> Claim:
        """The twin of ``claim.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Claim(ClaimCode.MISSING)
            if not _token_ok(wf, token):
                return Claim(ClaimCode.REJECTED, (RejectReason.TOKEN.encode(),))
            if node in _CALLBACK_KEYS:
                node = CallbackKind(node)
                wf.ready.pop(node, None)
                prev = wf.claims.get(node)
                if prev is not None and prev != message_id:
                    return Claim(ClaimCode.DUPLICATE)
                wf.claims[node] = message_id
                return Claim(ClaimCode.RUN)
            if not all(_is_node(wf, n) for n in (node, *pipe_nodes)):
                return Claim(ClaimCode.REJECTED, (RejectReason.NODE.encode(),))
            assert isinstance(node, int)
            if node in wf.done:
                wf.ready.pop(node, None)
                return Claim(ClaimCode.DONE)
            decided = CLAIM_IN_STATE.get(wf.state)
            if decided is ClaimCode.ENDED:
                wf.ready.pop(node, None)
                return Claim(decided)
            # only a released node may be held (resume/retry release the held set)
            if wf.cnt[node] != 0:
                return Claim(ClaimCode.UNRELEASED)
            if decided is ClaimCode.HELD:
                wf.ready.pop(node, None)
                wf.claims.pop(node, None)
                wf.held.add(node)
                return Claim(decided)
            prev = wf.claims.get(node)
            if prev is not None and prev != message_id:
                return Claim(ClaimCode.DUPLICATE)
            wf.claims[node] = message_id
            wf.ready.pop(node, None)
            attempt = attempt if 0 < attempt < 1_000_000 else 1  # as claim.lua reads it
            wf.started[node] = (_now(), attempt)
            wf.progress.pop(node, None)
            self._event(workflow_id, wf, "node_started", node, attempt=attempt)
            return Claim(ClaimCode.RUN, tuple(wf.res.get(n) for n in pipe_nodes))

    def progress(
        self,
        workflow_id: str,
        node: int,
        message_id: str,
        token: str,
        progress: tuple[float, float | None, str | None],
    ) -> bool:
        """The twin of ``progress.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None or not _token_ok(wf, token) or not _is_node(wf, node):
                return False
            if wf.claims.get(node) != message_id:
                return False
            done, total, note = progress
            report = Progress(done=done, total=total, note=note or None)
            wf.progress[node] = report
            self._event(workflow_id, wf, "node_progress", node, progress=report)
            return True

    def running_nodes(self, workflow_id: str) -> tuple[RunningNode, ...]:
        """The running nodes of a workflow (empty: none, or no such workflow)."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return ()
            out: list[RunningNode] = []
            for node in sorted(n for n in wf.claims if isinstance(n, int)):
                started, attempt = wf.started.get(node, (None, None))
                out.append(
                    RunningNode(
                        node=node,
                        actor=_actor(wf.loaded, node),
                        started=started,
                        attempt=attempt,
                        progress=wf.progress.get(node),
                    )
                )
            return tuple(out)

    def complete(
        self,
        workflow_id: str,
        node: int,
        result: bytes | None,
        queue_keys: list[str],
        ack: BrokerAck | None = None,
        token: str = "",
    ) -> Completion:
        """The twin of ``complete.lua`` (its state is never lost: no ``Outcome.LOST``)."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(Outcome.MISSING, None)
            rejected = _rejected(wf, node, token)
            if rejected is not None:
                return rejected
            if node in wf.done:
                return Completion(Outcome.UNCHANGED, wf.state)
            wf.done.add(node)
            wf.claims.pop(node, None)
            if node in wf.failed:
                wf.failed.discard(node)
                wf.meta[MetaField.FAILED_COUNT] = str(int(wf.meta[MetaField.FAILED_COUNT]) - 1)
            if result is not None:
                wf.res[node] = result
            succeeded = int(wf.meta[MetaField.SUCCEEDED]) + 1
            wf.meta[MetaField.SUCCEEDED] = str(succeeded)
            self._event(workflow_id, wf, "node_succeeded", node)
            out: list[int | CallbackKind] = []
            if wf.state is not State.CANCELLED:
                self._cascade(wf, node, out)
            finished = transition(Op.FINISH, wf.state)
            if succeeded == len(wf.loaded.dag) and finished is not None:
                self._set_state(workflow_id, wf, finished)
                self._dispatch_callback(wf, CallbackKind.SUCCESS, out)
            return Completion(Outcome.APPLIED, wf.state, tuple(out))

    def fail(
        self,
        workflow_id: str,
        node: int,
        info: tuple[str, str, str],
        queue_keys: list[str],
        token: str = "",
    ) -> Completion:
        """The twin of ``fail.lua`` (its state is never lost: no ``Outcome.LOST``)."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(Outcome.MISSING, None)
            rejected = _rejected(wf, node, token)
            if rejected is not None:
                return rejected
            if node in wf.done:
                return Completion(Outcome.UNCHANGED, wf.state)
            wf.claims.pop(node, None)
            if node in wf.failed:
                return Completion(Outcome.UNCHANGED, wf.state)
            wf.failed.add(node)
            wf.meta[MetaField.FAILED_COUNT] = str(int(wf.meta[MetaField.FAILED_COUNT]) + 1)
            self._event(workflow_id, wf, "node_failed", node)
            out: list[int | CallbackKind] = []
            failed = transition(Op.FAIL, wf.state)
            if failed is not None:
                actor, exc_type, exc_message = info
                wf.meta[MetaField.FAILED_NODE] = str(node)
                wf.meta[MetaField.FAILED_ACTOR] = actor
                wf.meta[MetaField.EXC_TYPE] = exc_type
                wf.meta[MetaField.EXC_MESSAGE] = exc_message
                self._set_state(workflow_id, wf, failed)
                self._dispatch_callback(wf, CallbackKind.FAILURE, out)
            return Completion(Outcome.APPLIED, wf.state, tuple(out))

    def control(self, op: str, workflow_id: str) -> Completion:
        """The twins of ``cancel.lua``, ``pause.lua``, ``resume.lua`` and ``retry.lua``."""
        operation = Op(op)
        if operation not in (Op.CANCEL, Op.PAUSE, Op.RESUME, Op.RETRY):
            raise ValueError(op)
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(Outcome.MISSING, None)
            to = transition(operation, wf.state)
            if to is None:
                return Completion(Outcome.UNCHANGED, wf.state)
            out: list[int | CallbackKind] = []
            self._set_state(workflow_id, wf, to)
            if operation is Op.CANCEL:
                wf.held.clear()
                wf.ready.clear()
            elif operation is Op.RESUME:
                for node in sorted(wf.held - wf.done):
                    self._release(wf, node, out)
                wf.held.clear()
            elif operation is Op.RETRY:
                for key in (
                    MetaField.FINISHED, MetaField.FAILED_NODE, MetaField.FAILED_ACTOR,
                    MetaField.EXC_TYPE, MetaField.EXC_MESSAGE,
                ):  # fmt: skip
                    wf.meta.pop(key, None)
                wf.meta[MetaField.FAILED_COUNT] = "0"
                for node in sorted((wf.failed | wf.held) - wf.done):
                    wf.claims.pop(node, None)
                    self._release(wf, node, out)
                wf.failed.clear()
                wf.held.clear()
            return Completion(Outcome.APPLIED, wf.state, tuple(out))

    def reconcile(
        self, workflow_id: str, age_ms: int, limit: int, queue_keys: list[str]
    ) -> Completion:
        """The twin of ``reconcile.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(Outcome.MISSING, None)
            now = _now()
            stale = sorted((ts, str(n), n) for n, ts in wf.ready.items() if ts <= now - age_ms)
            decision = ON_RELEASE.get(wf.state, Release.DROP)
            out: list[int | CallbackKind] = []
            for _, _, n in stale[:limit]:
                if isinstance(n, str) or (decision is Release.DISPATCH and n not in wf.done):
                    wf.ready[n] = now
                    out.append(n)
                else:
                    del wf.ready[n]
                    if decision is Release.HOLD and n not in wf.done:
                        wf.held.add(n)
            return Completion(Outcome.APPLIED, wf.state, tuple(out), len(wf.ready))

    def active(self, limit: int) -> list[str]:
        """Every live workflow (the memory store has no separate index)."""
        with self._lock:
            return [k for k, wf in self._wfs.items() if wf.ready][:limit]

    def forget(self, workflow_id: str) -> None:
        """Nothing to do: the memory store has no separate index."""


@final
class _AsyncMemory:
    """Async driver over a MemoryStore: no I/O, so only waiting needs the event loop."""

    def __init__(self, store: MemoryStore) -> None:
        self._s = store

    async def submit(self, workflow_id: str, upload: Upload, queue_keys: list[str]) -> Completion:
        return self._s.submit(workflow_id, upload)

    async def meta(self, workflow_id: str) -> tuple[dict[str, str], int] | None:
        with self._s._lock:
            wf = self._s._get(workflow_id)
            if wf is None:
                return None
            return dict(wf.meta), len([c for c in wf.claims if isinstance(c, int)])

    async def running_nodes(
        self, workflow_id: str, loaded: Loaded | None = None
    ) -> tuple[RunningNode, ...]:
        return self._s.running_nodes(workflow_id)  # its own DAG: always the right one

    async def index_page(
        self, cursor: tuple[int, str] | None, since_ms: int, count: int
    ) -> list[tuple[int, str, tuple[dict[str, str], int] | None]]:
        # the twin of _index.index_page: expired workflows are dropped by _get
        with self._s._lock:
            found: list[tuple[int, str, tuple[dict[str, str], int] | None]] = []
            for wid in list(self._s._wfs):
                wf = self._s._get(wid)
                if wf is None:
                    continue
                entry = (int(wf.meta[MetaField.CREATED]), wid)
                if entry[0] < since_ms or (cursor is not None and entry >= cursor):
                    continue
                running = len([c for c in wf.claims if isinstance(c, int)])
                found.append((*entry, (dict(wf.meta), running)))
        found.sort(key=lambda e: (e[0], e[1]), reverse=True)
        return found[:count]

    async def control(self, op: str, workflow_id: str, queue_keys: list[str]) -> Completion:
        return self._s.control(op, workflow_id)

    async def load(self, workflow_id: str) -> Loaded | None:
        return self._s.load(workflow_id)

    async def results(self, workflow_id: str, nodes: Sequence[int]) -> list[bytes | None]:
        with self._s._lock:
            wf = self._s._get(workflow_id)
            return [None if wf is None else wf.res.get(n) for n in nodes]

    def _after(self, workflow_id: str, after: str, count: int, states: bool) -> list[Event]:
        with self._s._lock:
            wf = self._s._get(workflow_id)
            if wf is None:
                return []
            n = int(after.split("-")[0]) if after else 0
            found = [e for e in wf.events if int(e.id) > n and (not states or e.kind == "state")]
            return found[:count]

    async def events(
        self,
        workflow_id: str,
        after: str,
        block_ms: int | None,
        count: int = 1000,
        *,
        states_only: bool = False,
    ) -> list[Event]:
        found = self._after(workflow_id, after, count, states_only)
        if found or block_ms is None:
            return found
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        waiters = self._s._waiters.setdefault(workflow_id, [])
        with self._s._lock:
            waiters.append((loop, ev))
        try:
            found = self._after(workflow_id, after, count, states_only)
            if found:
                return found
            try:
                async with asyncio.timeout(block_ms / 1000 if block_ms else None):
                    await ev.wait()
            except TimeoutError:
                return []
            return self._after(workflow_id, after, count, states_only)
        finally:
            with self._s._lock:
                waiters.remove((loop, ev))

    async def last_event_id(self, workflow_id: str, *, states_only: bool = False) -> str:
        with self._s._lock:
            wf = self._s._get(workflow_id)
            events = [e for e in wf.events if e.kind == "state"] if wf and states_only else None
            if events is None:
                events = wf.events if wf else []
            return events[-1].id if events else "0"
