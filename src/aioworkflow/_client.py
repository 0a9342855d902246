"""The client: ``Workflow`` and its handles. Async first; the sync twin runs it on a portal.

Nothing here blocks the event loop: compiling and encoding run in a worker thread (a 100,000
node canvas takes a good fraction of a second), Redis is spoken with redis.asyncio, and the
only blocking dramatiq call (``broker.enqueue`` in ready mode) runs in a worker thread too.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import dramatiq

from . import _codec
from ._compiler import DEFAULT_MAX_NODES, compile as compile_canvas
from ._dag import Dag, ResultSpec, spec_nodes
from ._dramatiq import Route, as_callback, direct_mode, route_for
from ._dramatiq._hooks import Stamped, stamp_direct
from ._graph import Step, _check_step  # pyright: ignore[reportPrivateUsage] - _graph's own check
from ._keys import check_workflow_id
from ._machine import CallbackKind, MetaField
from ._middleware import find_store
from ._observe import current_traceparent
from ._plan import Callback, build_upload
from ._status import Event, State, Transition, WorkflowStatus, status_from_meta
from ._store._base import Loaded
from ._upload import check_labels, check_name, message_fields
from .errors import (
    ConfigurationError,
    MessageTooLarge,
    StoreUnavailable,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping

    from ._store._base import StoreBackend

__all__ = ["SyncWorkflowHandle", "Workflow", "WorkflowHandle"]

T = TypeVar("T")


#: Default cap on one node's encoded arguments (``Workflow(max_message_bytes=...)``).
MAX_MESSAGE_BYTES = 8 << 20


def _check_sizes(dag: Dag, limit: int) -> None:
    for i, args in enumerate(dag.args):
        size = len(_codec.dumps_json(args)) + len(_codec.dumps_json(dag.kwargs.get(i, {})))
        if size > limit:
            raise MessageTooLarge(i, dag.node(i).actor_name, size, limit)


def _callback_fields(
    workflow_id: str, on_success: Callback | None, on_failure: Callback | None
) -> dict[str, dict[str, Any]]:
    """The callbacks' message fields by kind, for the enqueue hooks (direct mode)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, cb in ((CallbackKind.SUCCESS, on_success), (CallbackKind.FAILURE, on_failure)):
        if cb is not None:
            out[str(kind)] = message_fields(
                workflow_id, str(kind), cb.actor_name, cb.queue_name, (*cb.args, workflow_id),
                cb.kwargs, cb.options, "", cb.message_id,
            )  # fmt: skip
    return out


def _require_event_loop(what: str, instead: str) -> None:
    """Raise when no event loop runs in this thread: the coroutine would never be awaited."""
    try:
        anyio.get_current_task()
    except RuntimeError:  # anyio's NoEventLoopError (sniffio's error on older anyio)
        raise ConfigurationError(
            f"{what} was called with no running event loop: it returns a coroutine to await; "
            f"from sync code call {instead}"
        ) from None


def _resolve(
    broker: dramatiq.Broker | None, store: StoreBackend | None
) -> tuple[dramatiq.Broker, StoreBackend]:
    broker = broker or dramatiq.get_broker()
    store = store or find_store(broker)
    if store is None:
        raise ConfigurationError(
            "no workflow store: add WorkflowMiddleware(store) to the broker, or pass store="
        )
    return broker, store


#: Seconds a client call keeps retrying transient store errors (a lost connection, a full,
#: busy or failing-over Redis) before raising them; ``wait()`` retries until its timeout.
PATIENCE = 60.0
_FIRST_PAUSE, _MAX_PAUSE = 0.05, 2.0
#: Longest single blocking read of ``wait()`` before it reads the state again. Blocked waits
#: cost nothing but a place in a shared read (``_store/_waits``), so it can be long.
WAIT_SLICE = 30.0


async def _check_store(store: StoreBackend) -> None:
    """Refuse an evicting Redis at the first call (the store caches a passed check)."""
    check: Callable[[], Awaitable[None]] | None = getattr(store, "acheck_eviction", None)
    if check is not None:
        await check()


async def _patiently(store: StoreBackend, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, retried with capped back-off on transient store errors for the store's
    ``patience`` (``PATIENCE`` seconds if it has none): every call wrapped here reads, or is
    idempotent for the caller."""
    deadline = time.monotonic() + getattr(store, "patience", PATIENCE)
    pause = _FIRST_PAUSE
    while True:
        try:
            await _check_store(store)
            return await call()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            await anyio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)


@final
class Workflow:
    """A canvas to run, with optional callbacks.

    Args:
        canvas: a message, ``Chain``, ``Group``, ``WithDelay`` or ``Graph``.
        on_success: a dramatiq message enqueued once when the last node succeeds.
        on_failure: a dramatiq message enqueued once when a node fails for good.
        id: the workflow id (default: a fresh random id): any non-empty string of at most
            200 characters (``MAX_ID_LENGTH``) that encodes as UTF-8; quotes, backslashes and
            control characters work (they are escaped wherever the id is rendered). It must
            not start with ``}``: the id is the Redis Cluster hash tag of the workflow's keys
            (``aiowf:{<id>}:...``), and ``{}`` would hash each key on its own, spreading them
            over slots. Anything else raises :class:`~aioworkflow.errors.ConfigurationError`.
        audit: log every node release as a ``node_released`` event (costs one stream entry
            per release; meant for tests and debugging).
        name: a name for people and for ``list_workflows(name=)`` (1 to 200 characters; names
            need not be unique).
        labels: string keys and values (at most 32; keys of 1 to 64 characters without
            ``=``, values of at most 200), shown in status and matched by
            ``list_workflows(label=)``. Bad names or labels raise ``ConfigurationError``.
        max_message_bytes: the largest encoded arguments of one node; ``run()`` raises
            :class:`~aioworkflow.errors.MessageTooLarge` above it, before storing anything
            (brokers and Redis have hard limits; big data belongs in storage, passed by
            reference).
        max_nodes: the most task nodes the workflow may have; ``run()`` raises
            :class:`~aioworkflow.errors.WorkflowTooLarge` above it, counted before anything
            is built or stored (a workflow's size drives its Redis memory and submit time).

    Both callbacks receive the workflow id appended as their last positional argument, so
    ``notify.message("done")`` is called as ``notify("done", workflow_id)``.
    """

    def __init__(
        self,
        canvas: Step,
        *,
        on_success: Any = None,
        on_failure: Any = None,
        id: str | None = None,
        audit: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_nodes: int = DEFAULT_MAX_NODES,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        _check_step(canvas, "Workflow")
        self.name: str | None = check_name(name)
        self.labels: dict[str, str] = check_labels(labels)
        if id is not None:
            check_workflow_id(id)
        for what, cb in (("on_success", on_success), ("on_failure", on_failure)):
            if cb is not None:
                _check_step(cb, what)
        self.canvas = canvas
        self.on_success = on_success
        self.on_failure = on_failure
        self.id = id
        self.audit = audit
        self.max_message_bytes = max_message_bytes
        self.max_nodes = max_nodes

    def compile(self) -> Dag:
        """Compile the canvas (pure; raises GraphError, WorkflowTooLarge above ``max_nodes``)."""
        return compile_canvas(self.canvas, max_nodes=self.max_nodes)

    def run(
        self, *, broker: dramatiq.Broker | None = None, store: StoreBackend | None = None
    ) -> Coroutine[Any, Any, WorkflowHandle]:
        """Compile, store and start the workflow: ``handle = await workflow.run()``.

        Args:
            broker: defaults to dramatiq's global broker.
            store: defaults to the store of the broker's ``WorkflowMiddleware``.

        ``run()`` itself is a plain method that returns the coroutine to await, so that a call
        from sync code (no running event loop), where a coroutine would be created and silently
        dropped, raises at once instead (use :meth:`run_sync` there).

        Raises:
            ConfigurationError: called with no running event loop (raised by ``run()`` itself).
            GraphError: the canvas does not compile (nothing is stored).
            MessageTooLarge: a node's arguments exceed ``max_message_bytes``.
            WorkflowExists: ``id`` is taken (nothing is changed).
            ConfigurationError: the store's Redis evicts keys (``maxmemory-policy``; see
                ``RedisStore(allow_eviction=...)``).
            StoreError: the store failed. Transient errors (``StoreUnavailable``: connection
                errors, OOM, BUSY, READONLY...) are retried first, for about a minute; the
                attempts of one call are idempotent, so a retried submission never starts a
                node twice.
        """
        _require_event_loop("Workflow.run()", "Workflow.run_sync()")
        return self._run(broker, store)

    async def _run(
        self, broker: dramatiq.Broker | None, store: StoreBackend | None
    ) -> WorkflowHandle:
        broker, store = _resolve(broker, store)
        await _patiently(store, anyio.lowlevel.checkpoint)  # the eviction check, retried
        workflow_id = self.id or uuid.uuid4().hex
        trace = current_traceparent()  # observability: the root of the workflow's trace

        def prepare() -> tuple[Loaded, Any, Route, Stamped | None]:
            dag = self.compile()
            _check_sizes(dag, self.max_message_bytes)
            direct = direct_mode(store, broker)
            on_success, on_failure = as_callback(self.on_success), as_callback(self.on_failure)
            stamped = (
                stamp_direct(
                    broker, workflow_id, dag, _callback_fields(workflow_id, on_success, on_failure)
                )
                if direct
                else None
            )
            upload = build_upload(
                workflow_id,
                dag,
                direct=direct,
                on_success=on_success,
                on_failure=on_failure,
                retention_ms=store.retention_ms,
                now_ms=int(time.time() * 1000),
                audit=self.audit,
                trace=trace,
                stamped=None if stamped is None else stamped.options,
                failed_retention_ms=getattr(store, "failed_retention_ms", None),
                name=self.name,
                labels=self.labels,
            )
            callbacks = {str(kind): fields for kind, fields in upload.callbacks.items()}
            mode = str(upload.meta["mode"])
            loaded = Loaded(dag, mode, upload.slots, callbacks, trace=trace, token=upload.token)
            return loaded, upload, route_for(broker, workflow_id, loaded), stamped

        loaded, upload, route, stamped = await anyio.to_thread.run_sync(prepare)
        started = await store.aio().submit(workflow_id, upload, route.queue_keys)
        if stamped is not None and stamped.messages:
            await anyio.to_thread.run_sync(stamped.after_enqueue, broker)
        handle = WorkflowHandle(workflow_id, broker=broker, store=store)
        handle._cache = (loaded, route)  # pyright: ignore[reportPrivateUsage] - primes its own handle
        await route.send_async(started.released)
        return handle

    def run_sync(
        self, *, broker: dramatiq.Broker | None = None, store: StoreBackend | None = None
    ) -> SyncWorkflowHandle:
        """``run()`` for sync code: blocks until the workflow is stored and started."""
        handle = _portal_call(lambda: self._run(broker, store))
        return SyncWorkflowHandle(handle)


@final
class WorkflowHandle:
    """A running or finished workflow. Re-attach from anywhere with ``WorkflowHandle(id)``.

    Args:
        id: the workflow id.
        broker: defaults to dramatiq's global broker.
        store: defaults to the store of the broker's ``WorkflowMiddleware``.
    """

    def __init__(
        self,
        id: str,
        *,
        broker: dramatiq.Broker | None = None,
        store: StoreBackend | None = None,
    ) -> None:
        self.id: str = id
        self.broker: dramatiq.Broker
        self.store: StoreBackend
        self.broker, self.store = _resolve(broker, store)
        self._cache: tuple[Loaded, Route] | None = None
        self._dag: Loaded | None = None  # for status()'s actor names

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    async def _loaded(self) -> tuple[Loaded, Route]:
        if self._cache is None:
            loaded = await _patiently(self.store, lambda: self.store.aio().load(self.id))
            if loaded is None:
                raise WorkflowNotFound(self.id)
            self._cache = (loaded, route_for(self.broker, self.id, loaded))
        return self._cache

    async def status(self) -> WorkflowStatus:
        """The workflow's current state and counts.

        Raises:
            WorkflowNotFound: no such workflow (never created, or expired).
            StoreUnavailable: the store stayed unavailable for ``PATIENCE`` seconds.
        """
        return await _patiently(self.store, self._detailed)

    async def _detailed(self) -> WorkflowStatus:
        # status() shows which nodes run; waits poll _status, which skips that read
        found = await self.store.aio().meta(self.id)
        if found is None:
            raise WorkflowNotFound(self.id)
        meta, running = found
        if not running:
            return status_from_meta(self.id, meta, running)
        # actor names come from the DAG: loaded once per handle (a watch asks ten times a
        # second), again only if the id now names another submission
        loaded = self._cache[0] if self._cache is not None else self._dag
        if loaded is None or loaded.token != meta.get(MetaField.MSG_TOKEN, ""):
            loaded = self._dag = await self.store.aio().load(self.id)
        nodes = await self.store.aio().running_nodes(self.id, loaded)
        return status_from_meta(self.id, meta, running, nodes)

    async def _status(self) -> WorkflowStatus:
        found = await self.store.aio().meta(self.id)
        if found is None:
            raise WorkflowNotFound(self.id)
        return status_from_meta(self.id, *found)

    async def wait(self, timeout: float | None = None) -> WorkflowStatus:  # noqa: ASYNC109 - public API (DESIGN.md)
        """Wait until the workflow is SUCCEEDED, FAILED or CANCELLED; woken by its events.

        Raises:
            WorkflowTimeout: ``timeout`` seconds passed first.
            WorkflowNotFound: no such workflow.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        status: WorkflowStatus | None = None
        stale = False
        pause = _FIRST_PAUSE
        while True:
            # one blocking read at most WAIT_SLICE long, then the state is read again
            remaining = (
                WAIT_SLICE if deadline is None else min(WAIT_SLICE, deadline - time.monotonic())
            )
            if remaining <= 0:
                state = "unknown" if status is None else status.state
                raise WorkflowTimeout(f"workflow {self.id} still {state} after {timeout} s")
            try:
                await _check_store(self.store)
                aio = self.store.aio()
                if last is None:  # the stream position before the state is read
                    last = await aio.last_event_id(self.id, states_only=True)
                elif status is not None and not stale:
                    block_ms = max(1, int(remaining * 1000))
                    events = await aio.events(self.id, last, block_ms=block_ms, states_only=True)
                    if events:
                        last = events[-1].id
                # until the state is read after the events seen, do not block again: an end
                # read past but not yet checked would otherwise wait a whole slice
                stale = True
                status = await self._status()
                stale = False
                if status.done:
                    return status
                pause = _FIRST_PAUSE
            except StoreUnavailable:
                # A dropped connection, a restart, a full, busy or failing-over Redis is not
                # the workflow's outcome: keep waiting (with back-off) until the deadline.
                await anyio.sleep(min(pause, max(0.0, remaining)))
                pause = min(pause * 2, _MAX_PAUSE)

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - public API
        """Wait for the workflow and return its result (see ``Chain(pipe=True)``).

        Raises:
            WorkflowFailed: a node failed for good (details on the exception).
            WorkflowCancelled: the workflow was cancelled.
            WorkflowTimeout: ``timeout`` passed first.
        """
        status = await self.wait(timeout)
        if status.state is State.FAILED:
            raise WorkflowFailed(
                self.id,
                node=status.failed_node,
                actor=status.failed_actor,
                exc_type=status.exc_type,
                exc_message=status.exc_message,
            )
        if status.state is State.CANCELLED:
            raise WorkflowCancelled(self.id)
        loaded, _ = await self._loaded()
        nodes = spec_nodes(loaded.dag.result)
        blobs = await _patiently(self.store, lambda: self.store.aio().results(self.id, nodes))
        values = {
            n: None if b is None else _codec.unpack(b) for n, b in zip(nodes, blobs, strict=True)
        }
        return _assemble(loaded.dag.result, values)

    async def events(self, *, follow: bool = True) -> AsyncIterator[Event]:
        """Node and workflow events in order, from the start; with ``follow``, until it ends."""
        last = "0"
        while True:
            read = functools.partial(self._events, last, 1000 if follow else None)
            batch = await _patiently(self.store, read)
            for event in batch:
                last = event.id
                yield event
            if not batch and (not follow or (await self.status()).done):
                with contextlib.suppress(WorkflowNotFound):
                    rest = await _patiently(self.store, functools.partial(self._events, last, None))
                    for event in rest:
                        yield event
                return

    async def _events(self, after: str, block_ms: int | None) -> list[Event]:
        return await self.store.aio().events(self.id, after, block_ms)

    async def _control(self, op: str) -> Transition:
        _, route = await self._loaded()
        # a control script that got an error reply did nothing; one whose reply was lost
        # applied, and its retry says "not changed" (its releases are in the ready set)
        done = await _patiently(
            self.store, lambda: self.store.aio().control(op, self.id, route.queue_keys)
        )
        if done.status == -1 or done.state is None:
            raise WorkflowNotFound(self.id)
        await route.send_async(done.released)
        return Transition(changed=done.status == 1, state=done.state, released=len(done.released))

    async def cancel(self) -> Transition:
        """Cancel: nothing further is released, queued deliveries are skipped."""
        return await self._control("cancel")

    async def pause(self) -> Transition:
        """Pause a RUNNING workflow: nothing new starts until ``resume()``."""
        return await self._control("pause")

    async def resume(self) -> Transition:
        """Resume a PAUSED workflow, releasing what was held, exactly once."""
        return await self._control("resume")

    async def retry(self) -> Transition:
        """Re-run the failed nodes of a FAILED workflow and carry on."""
        return await self._control("retry")


def _assemble(spec: ResultSpec, values: dict[int, Any]) -> Any:
    if isinstance(spec, int):
        return values.get(spec)
    if isinstance(spec, list):
        return [_assemble(s, values) for s in spec]
    return None


# -- sync twin -------------------------------------------------------------------------------
_portal_lock = threading.Lock()
_portal_cm: contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
_portal: anyio.from_thread.BlockingPortal | None = None


def _close_portal() -> None:
    global _portal, _portal_cm
    if _portal_cm is not None:
        _portal_cm.__exit__(None, None, None)
    _portal = _portal_cm = None


def _portal_call(fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async client call from sync code on a shared background event loop."""
    global _portal, _portal_cm
    with _portal_lock:
        if _portal is None:
            _portal_cm = anyio.from_thread.start_blocking_portal()
            _portal = _portal_cm.__enter__()
            atexit.register(_close_portal)
        portal = _portal

    async def call() -> T:
        return await fn()

    return portal.call(call)


@final
class SyncWorkflowHandle:
    """The blocking twin of :class:`WorkflowHandle`, for sync code."""

    def __init__(self, handle: WorkflowHandle) -> None:
        self.handle: WorkflowHandle = handle
        self.id: str = handle.id

    @classmethod
    def attach(
        cls,
        id: str,
        *,
        broker: dramatiq.Broker | None = None,
        store: StoreBackend | None = None,
    ) -> SyncWorkflowHandle:
        """Re-attach to a workflow by id."""
        return cls(WorkflowHandle(id, broker=broker, store=store))

    def status(self) -> WorkflowStatus:
        """See :meth:`WorkflowHandle.status`."""
        return _portal_call(self.handle.status)

    def wait(self, timeout: float | None = None) -> WorkflowStatus:
        """See :meth:`WorkflowHandle.wait`."""
        return _portal_call(lambda: self.handle.wait(timeout))

    def result(self, timeout: float | None = None) -> Any:
        """See :meth:`WorkflowHandle.result`."""
        return _portal_call(lambda: self.handle.result(timeout))

    def cancel(self) -> Transition:
        """See :meth:`WorkflowHandle.cancel`."""
        return _portal_call(self.handle.cancel)

    def pause(self) -> Transition:
        """See :meth:`WorkflowHandle.pause`."""
        return _portal_call(self.handle.pause)

    def resume(self) -> Transition:
        """See :meth:`WorkflowHandle.resume`."""
        return _portal_call(self.handle.resume)

    def retry(self) -> Transition:
        """See :meth:`WorkflowHandle.retry`."""
        return _portal_call(self.handle.retry)

    def events(self) -> Iterator[Event]:
        """All events so far (not following)."""

        async def collect() -> list[Event]:
            return [e async for e in self.handle.events(follow=False)]

        return iter(_portal_call(collect))
