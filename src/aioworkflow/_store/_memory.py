"""MemoryStore: the scripts' semantics in one process, for the embedded default and unit tests.

Each method below is the Python twin of the Lua script of the same name and runs under one
lock, which gives it the same atomicity. It always works in ready mode (there is no Redis
queue to push into): released nodes are returned and the worker enqueues them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from aioworkflow._dag import Dag
from aioworkflow._plan import Claim, ClaimCode, Completion, Upload
from aioworkflow._status import Event, EventKind, State
from aioworkflow.errors import WorkflowExists

from ._base import Loaded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._base import BrokerAck

__all__ = ["MemoryStore"]


def _now() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Wf:
    meta: dict[str, str]
    loaded: Loaded
    cnt: list[int]
    done: set[int] = field(default_factory=set)
    ready: dict[int | str, int] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)
    res: dict[int, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    claims: dict[int | str, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    expires: float | None = None

    @property
    def state(self) -> State:
        return State(self.meta["state"])


@final
class MemoryStore:
    """Workflow state in this process: no Redis needed (pair it with dramatiq's StubBroker).

    Args:
        retention: seconds a finished workflow is kept (default one day).
        result_limit: largest stored result in bytes (default 1 MiB).
    """

    def __init__(self, *, retention: float = 86_400, result_limit: int = 1 << 20) -> None:
        self.retention_ms = int(retention * 1000)
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

    def _event(self, workflow_id: str, wf: _Wf, kind: EventKind, node: int | None) -> None:
        self._seq += 1
        wf.events.append(Event(id=str(self._seq), kind=kind, node=node, state=wf.state))
        for loop, ev in self._waiters.get(workflow_id, ()):
            loop.call_soon_threadsafe(ev.set)

    def _set_state(self, workflow_id: str, wf: _Wf, state: State) -> None:
        wf.meta["state"] = state.value
        wf.meta["updated"] = str(_now())
        self._event(workflow_id, wf, "state", None)
        if state in (State.SUCCEEDED, State.CANCELLED, State.FAILED):
            wf.meta["finished"] = str(_now())
            wf.expires = time.time() + self.retention_ms / 1000
        else:
            wf.expires = None

    def _release(self, wf: _Wf, node: int, out: list[int | str]) -> None:
        if wf.state is State.RUNNING:
            wf.ready[node] = _now()
            out.append(node)
            if wf.meta.get("audit") == "1":
                self._event(wf.meta["id"], wf, "node_released", node)
        elif wf.state in (State.PAUSED, State.FAILED):
            wf.held.add(node)

    def _dispatch_callback(self, wf: _Wf, key: str, out: list[int | str]) -> None:
        if key in wf.loaded.callbacks:
            wf.ready[key] = _now()
            out.append(key)

    def _cascade(self, wf: _Wf, v0: int, out: list[int | str]) -> None:
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
        import orjson

        callbacks = {
            k: orjson.loads(str(upload.meta[f"cb_{k}"])) for k in "sf" if f"cb_{k}" in upload.meta
        }
        with self._lock:
            if self._get(workflow_id) is not None:
                raise WorkflowExists(f"a workflow with id {workflow_id!r} already exists")
            meta = {k: str(v) for k, v in upload.meta.items()}
            meta["state"] = State.PENDING.value
            meta["id"] = workflow_id
            wf = _Wf(meta, Loaded(dag, "r", [], callbacks), list(dag.pred_counts))
            self._wfs[workflow_id] = wf
            wf.meta["started"] = str(_now())
            out: list[int | str] = []
            if len(dag) == 0:
                self._set_state(workflow_id, wf, State.SUCCEEDED)
                self._dispatch_callback(wf, "s", out)
            else:
                self._set_state(workflow_id, wf, State.RUNNING)
                for root in upload.roots:
                    self._release(wf, root, out)
            return Completion(1, wf.state, tuple(out))

    def load(self, workflow_id: str) -> Loaded | None:
        """See :meth:`Store.load`."""
        with self._lock:
            wf = self._get(workflow_id)
            return None if wf is None else wf.loaded

    def claim(
        self, workflow_id: str, node: int | str, message_id: str, pipe_nodes: Sequence[int]
    ) -> Claim:
        """The twin of ``claim.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Claim(ClaimCode.MISSING)
            if isinstance(node, str):
                wf.ready.pop(node, None)
                prev = wf.claims.get(node)
                if prev is not None and prev != message_id:
                    return Claim(ClaimCode.DUPLICATE)
                wf.claims[node] = message_id
                return Claim(ClaimCode.RUN)
            if node in wf.done:
                wf.ready.pop(node, None)
                return Claim(ClaimCode.DONE)
            if wf.state in (State.CANCELLED, State.SUCCEEDED):
                wf.ready.pop(node, None)
                return Claim(ClaimCode.ENDED)
            if wf.state in (State.PAUSED, State.FAILED):
                wf.ready.pop(node, None)
                wf.claims.pop(node, None)
                wf.held.add(node)
                return Claim(ClaimCode.HELD)
            if wf.cnt[node] != 0:
                return Claim(ClaimCode.UNRELEASED)
            prev = wf.claims.get(node)
            if prev is not None and prev != message_id:
                return Claim(ClaimCode.DUPLICATE)
            wf.claims[node] = message_id
            wf.ready.pop(node, None)
            return Claim(ClaimCode.RUN, tuple(wf.res.get(n) for n in pipe_nodes))

    def complete(
        self,
        workflow_id: str,
        node: int,
        result: bytes | None,
        queue_keys: list[str],
        ack: BrokerAck | None = None,
    ) -> Completion:
        """The twin of ``complete.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(-1, None)
            if node in wf.done:
                return Completion(0, wf.state)
            wf.done.add(node)
            wf.claims.pop(node, None)
            if node in wf.failed:
                wf.failed.discard(node)
                wf.meta["nf"] = str(int(wf.meta["nf"]) - 1)
            if result is not None:
                wf.res[node] = result
            ok = int(wf.meta["ok"]) + 1
            wf.meta["ok"] = str(ok)
            self._event(workflow_id, wf, "node_succeeded", node)
            out: list[int | str] = []
            if wf.state is not State.CANCELLED:
                self._cascade(wf, node, out)
            if ok == len(wf.loaded.dag) and wf.state not in (State.CANCELLED, State.SUCCEEDED):
                self._set_state(workflow_id, wf, State.SUCCEEDED)
                self._dispatch_callback(wf, "s", out)
            return Completion(1, wf.state, tuple(out))

    def fail(
        self, workflow_id: str, node: int, info: tuple[str, str, str], queue_keys: list[str]
    ) -> Completion:
        """The twin of ``fail.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(-1, None)
            if node in wf.done:
                return Completion(0, wf.state)
            wf.claims.pop(node, None)
            if node in wf.failed:
                return Completion(0, wf.state)
            wf.failed.add(node)
            wf.meta["nf"] = str(int(wf.meta["nf"]) + 1)
            self._event(workflow_id, wf, "node_failed", node)
            out: list[int | str] = []
            if wf.state in (State.RUNNING, State.PAUSED):
                actor, exc_type, exc_message = info
                wf.meta.update(fnode=str(node), factor=actor, fexc=exc_type, fmsg=exc_message)
                self._set_state(workflow_id, wf, State.FAILED)
                self._dispatch_callback(wf, "f", out)
            return Completion(1, wf.state, tuple(out))

    def control(self, op: str, workflow_id: str) -> Completion:
        """The twins of ``cancel.lua``, ``pause.lua``, ``resume.lua`` and ``retry.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(-1, None)
            state = wf.state
            out: list[int | str] = []
            if op == "cancel":
                if state in (State.SUCCEEDED, State.CANCELLED):
                    return Completion(0, state)
                self._set_state(workflow_id, wf, State.CANCELLED)
                wf.held.clear()
                wf.ready.clear()
            elif op == "pause":
                if state is not State.RUNNING:
                    return Completion(0, state)
                self._set_state(workflow_id, wf, State.PAUSED)
            elif op == "resume":
                if state is not State.PAUSED:
                    return Completion(0, state)
                self._set_state(workflow_id, wf, State.RUNNING)
                for node in sorted(wf.held - wf.done):
                    self._release(wf, node, out)
                wf.held.clear()
            elif op == "retry":
                if state is not State.FAILED:
                    return Completion(0, state)
                self._set_state(workflow_id, wf, State.RUNNING)
                for key in ("finished", "fnode", "factor", "fexc", "fmsg"):
                    wf.meta.pop(key, None)
                wf.meta["nf"] = "0"
                for node in sorted((wf.failed | wf.held) - wf.done):
                    wf.claims.pop(node, None)
                    self._release(wf, node, out)
                wf.failed.clear()
                wf.held.clear()
            else:  # pragma: no cover - the client only sends the four above
                raise ValueError(op)
            return Completion(1, wf.state, tuple(out))

    def reconcile(
        self, workflow_id: str, age_ms: int, limit: int, queue_keys: list[str]
    ) -> Completion:
        """The twin of ``reconcile.lua``."""
        with self._lock:
            wf = self._get(workflow_id)
            if wf is None:
                return Completion(-1, None)
            now = _now()
            stale = sorted((ts, str(n), n) for n, ts in wf.ready.items() if ts <= now - age_ms)
            out: list[int | str] = []
            for _, _, n in stale[:limit]:
                if isinstance(n, str) or (wf.state is State.RUNNING and n not in wf.done):
                    wf.ready[n] = now
                    out.append(n)
                else:
                    del wf.ready[n]
                    if wf.state in (State.PAUSED, State.FAILED) and n not in wf.done:
                        wf.held.add(n)
            return Completion(1, wf.state, tuple(out), len(wf.ready))

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
