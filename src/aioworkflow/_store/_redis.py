"""RedisStore: the Lua scripts run by a sync (redis-py) and an async (redis.asyncio) driver."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import secrets
import time
import weakref
from typing import TYPE_CHECKING, Any, final

import orjson
import redis
import redis.cluster
import redis.exceptions

from aioworkflow import _keys, _protocol as p
from aioworkflow._dag import Dag
from aioworkflow._machine import (
    CALLBACK_FIELD,
    EVENT_FIELDS,
    CallbackKind,
    EventCode,
    MetaField,
    Outcome,
    State,
)
from aioworkflow._protocol import BrokerAck, Claim, Completion, ScriptCall, SubmitCode
from aioworkflow._redact import redact_text
from aioworkflow._status import Event, Progress, RunningNode
from aioworkflow.errors import (
    ConfigurationError,
    DecodeError,
    StoreConnectionError,
    StoreError,
    StoreUnavailable,
    WorkflowExists,
)

from . import _connect, _durable, _urls
from ._base import DEFAULT_FAILED_RETENTION, DEFAULT_RETENTION, Loaded, retention_ms
from ._index import Entry, index_page
from ._policy import EvictionCheck
from ._scripts import SOURCES, ScriptName, explain
from ._waits import StreamWaits
from ._wire import WireScripts, reply_error

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    from aioworkflow._status import EventKind
    from aioworkflow._upload import Upload

__all__ = ["RedisStore"]

#: Roots released per start-script call: keeps each call short on a 100,000-root workflow.
ROOT_CHUNK = 1000
#: Seconds one run() submission keeps retrying transient store errors (connection errors,
#: OOM, BUSY, READONLY...), its first and its longest back-off.
SUBMIT_PATIENCE = 60.0
SUBMIT_FIRST_BACKOFF = 0.05
SUBMIT_MAX_BACKOFF = 1.0
#: Connections per event loop for the async client; further callers wait for a free one.
AIO_MAX_CONNECTIONS = 64
#: Longest blocking XREAD: redis-py's default socket read timeout (5 s) must not cut it off;
#: callers simply block again.
MAX_BLOCK_MS = 2000
#: Template fields written per HSET when storing a workflow.
TEMPLATE_CHUNK = 250
#: Largest stored DAG + successor list uploaded in the one-round-trip path.
FUSE_MAX_BYTES = 64 << 10

#: Scripts every task runs: sent through the lean wire path where the client allows it.
_HOT = frozenset((ScriptName.CLAIM, ScriptName.COMPLETE, ScriptName.FAIL))


def _redis_version() -> str:
    # redis-py reads its own version from package metadata (file I/O) on every new
    # connection unless it is given; read it once here, not on the event loop
    try:
        return importlib.metadata.version("redis")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "0"


def _driver_info() -> dict[str, Any]:
    version = _redis_version()
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # pragma: no cover - redis-py before 7
        return {"lib_name": "redis-py", "lib_version": version}
    return {"driver_info": DriverInfo(name="redis-py", lib_version=version)}


#: What the async clients tell Redis about themselves (CLIENT SETINFO).
_LIB = _driver_info()
_EVENT_KINDS: dict[bytes, EventKind] = {
    EventCode.NODE_SUCCEEDED.encode(): "node_succeeded",
    EventCode.NODE_FAILED.encode(): "node_failed",
    EventCode.STATE.encode(): "state",
    EventCode.NODE_RELEASED.encode(): "node_released",
    EventCode.NODE_STARTED.encode(): "node_started",
    EventCode.NODE_PROGRESS.encode(): "node_progress",
}
_EV_KIND = EVENT_FIELDS["kind"].encode()
_EV_NODE = EVENT_FIELDS["node"].encode()
_EV_STATE = EVENT_FIELDS["state"].encode()
_EV_ATTEMPT = EVENT_FIELDS["attempt"].encode()
_EV_DONE = EVENT_FIELDS["done"].encode()
_EV_TOTAL = EVENT_FIELDS["total"].encode()
_EV_NOTE = EVENT_FIELDS["note"].encode()
_STARTED = EventCode.NODE_STARTED.encode()
_PROGRESS = EventCode.NODE_PROGRESS.encode()
#: What ``load`` reads from the meta hash.
_LOAD_FIELDS = [
    MetaField.MODE,
    MetaField.SLOTS,
    MetaField.TRACE,
    MetaField.MSG_TOKEN,
    *(CALLBACK_FIELD[kind] for kind in CallbackKind),
]


@contextlib.contextmanager
def map_exceptions(script: ScriptName | None = None) -> Generator[None]:
    """Translate redis-py errors into the aioworkflow tree, once, at the store boundary.

    A script's error names the file and line it comes from (``complete.lua:24``), not the line
    of the joined source Redis ran (``user_script:168``).

    Error replies are classified by their code (``reply_error``): transient ones (OOM, BUSY,
    READONLY, LOADING...) become :class:`~aioworkflow.errors.StoreUnavailable` subclasses that
    callers retry, the rest a ``ScriptError``.
    """
    try:
        yield
    except redis.exceptions.BusyLoadingError as exc:  # -LOADING (a redis-py ConnectionError)
        raise reply_error("LOADING", f"LOADING {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreConnectionError(str(exc)) from exc
    except redis.ResponseError as exc:
        code, message = _reply_code(exc)
        raise reply_error(code, explain(message, script)) from exc
    except redis.RedisError as exc:
        raise StoreError(str(exc)) from exc


#: redis-py's own classes for some error codes (it strips the code from their message).
_CODE_OF: tuple[tuple[type[redis.ResponseError], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)


def _reply_code(exc: redis.ResponseError) -> tuple[str, str]:
    """An error reply's code and full text, whichever class redis-py made of it."""
    text = str(exc)
    status: object = getattr(exc, "status_code", None)  # redis-py >= 6 keeps the code
    if isinstance(status, str) and status:
        return status, f"{status} {text}"
    for cls, code in _CODE_OF:
        if isinstance(exc, cls):
            return code, f"{code} {text}"
    return text.split(" ", 1)[0], text


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"corrupt workflow meta field: {exc}", raw[:64]) from exc


def _loaded(blob: bytes | None, fields: list[bytes | None]) -> Loaded | None:
    mode, slots, trace, token, *cbs = fields
    if blob is None or mode is None:
        return None
    callbacks: dict[str, Any] = {k: _json(v) for k, v in zip(CallbackKind, cbs, strict=True) if v}
    return Loaded(
        Dag.decode(blob),
        mode.decode(),
        _json(slots or b"[]"),
        callbacks,
        trace=trace.decode() if trace else "",
        token=(token or b"").decode(),
    )


def _load_cmds(pipe: Any, workflow_id: str) -> None:
    keys = _keys.keys_of(workflow_id)
    pipe.get(keys.dag)
    pipe.hmget(keys.meta, _LOAD_FIELDS)


class _SyncDriver:
    """The worker-side driver (redis-py, thread-safe through its connection pool)."""

    def __init__(self, client: Any, wait: _durable.Wait | None = None) -> None:
        self._client = client
        self._wait = wait
        self._scripts = {n: client.register_script(src) for n, src in SOURCES.items()}
        self._wire = WireScripts.for_client(client, SOURCES, wait)

    def _run(self, call: ScriptCall) -> Any:
        if self._wire is not None and call.script in _HOT:
            return self._wire.run(call)
        with map_exceptions(call.script):
            if self._wait is not None:
                script = self._scripts[call.script]
                return _durable.run_sync(self._client, script, call.keys, call.args, self._wait)
            return self._scripts[call.script](keys=call.keys, args=call.args)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()

    def load(self, workflow_id: str) -> Loaded | None:
        with map_exceptions():
            pipe = self._client.pipeline(transaction=False)
            _load_cmds(pipe, workflow_id)
            blob, fields = pipe.execute()
        return _loaded(blob, fields)

    def claim(
        self,
        workflow_id: str,
        node: int | str,
        message_id: str,
        pipe_nodes: Sequence[int],
        token: str = "",
        attempt: int = 1,
    ) -> Claim:
        inline = len(pipe_nodes) <= p.PIPE_INLINE
        call = p.claim_call(
            workflow_id, node, message_id, pipe_nodes if inline else (), token, attempt
        )
        claim = p.parse_claim(self._run(call))
        if inline or not claim.run:
            return claim
        # a wide piped input: read after the claim, in bounded HMGETs (see PIPE_INLINE). The
        # nodes come from the stored DAG, so claim.lua's index check of them is not needed.
        key = _keys.keys_of(workflow_id).res
        with map_exceptions():
            pipe = self._client.pipeline(transaction=False)
            for i in range(0, len(pipe_nodes), p.PIPE_INLINE):
                pipe.hmget(key, [str(n) for n in pipe_nodes[i : i + p.PIPE_INLINE]])
            parts: list[list[bytes | None]] = pipe.execute()
        return Claim(claim.code, tuple(r for part in parts for r in part))

    def progress(
        self,
        workflow_id: str,
        node: int,
        message_id: str,
        token: str,
        progress: tuple[float, float | None, str | None],
    ) -> bool:
        call = p.progress_call(workflow_id, node, message_id, token, progress)
        return p.parse_progress(self._run(call))

    def complete(
        self,
        workflow_id: str,
        node: int,
        result: bytes | None,
        queue_keys: list[str],
        ack: BrokerAck | None = None,
        token: str = "",
    ) -> Completion:
        now = 0 if ack is None else int(time.time() * 1000)
        call = p.complete_call(workflow_id, node, result, queue_keys, ack, now, token)
        return p.parse_complete(self._run(call))

    def fail(
        self,
        workflow_id: str,
        node: int,
        info: tuple[str, str, str],
        queue_keys: list[str],
        token: str = "",
    ) -> Completion:
        return p.parse_fail(self._run(p.fail_call(workflow_id, node, info, queue_keys, token)))

    def reconcile(
        self, workflow_id: str, age_ms: int, limit: int, queue_keys: list[str]
    ) -> Completion:
        call = p.reconcile_call(workflow_id, age_ms, limit, queue_keys)
        return p.parse_reconcile(self._run(call))

    def active(self, limit: int) -> list[str]:
        with map_exceptions():
            ids = [x.decode() for x in self._client.zrange(_keys.ACTIVE, 0, limit - 1)]
            if ids:  # rotate: the next sweep starts with the workflows not seen for longest
                now = int(time.time() * 1000)
                self._client.zadd(_keys.ACTIVE, dict.fromkeys(ids, now), xx=True)
            return ids

    def forget(self, workflow_id: str) -> None:
        with map_exceptions():
            self._client.zrem(_keys.ACTIVE, workflow_id)


class _AsyncDriver:
    """The client-side driver (redis.asyncio), bound to one event loop."""

    def __init__(
        self, client: Any, wait: _durable.Wait | None = None, *, multiplex: bool = True
    ) -> None:
        self._client = client
        self._wait = wait
        # standalone Redis: one-round-trip upload + start; not with replicas=N, whose WAIT
        # follows each script call (the fused transaction would skip it)
        self._fuse = multiplex and wait is None
        self._scripts = {n: client.register_script(src) for n, src in SOURCES.items()}
        # blocking reads share a few connections (see _waits); Redis Cluster keeps one XREAD
        # per waiter (a multi-key XREAD must stay in one slot)
        self._waits = StreamWaits(client, map_exceptions) if multiplex else None

    async def aclose(self) -> None:
        """Stop the stream readers and close this driver's connection pool (and its Sentinel
        connections)."""
        if self._waits is not None:
            await self._waits.aclose()
        await _connect.aclose(self._client)

    async def _call(self, call: ScriptCall) -> Any:
        return await self._run(call.script, call.keys, call.args)

    async def _run(self, script: ScriptName, keys: Sequence[str], args: Sequence[Any]) -> Any:
        # the one place a script runs (tests wrap it to lose replies)
        with map_exceptions(script):
            if self._wait is not None:
                return await _durable.run_async(
                    self._client, self._scripts[script], keys, args, self._wait
                )
            return await self._scripts[script](keys=keys, args=args)

    async def submit(self, workflow_id: str, upload: Upload, queue_keys: list[str]) -> Completion:
        token = secrets.token_hex(16)
        delay = SUBMIT_FIRST_BACKOFF
        deadline = time.monotonic() + SUBMIT_PATIENCE
        while True:
            try:
                return await self._submit(workflow_id, upload, queue_keys, token)
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)  # back-off before reconnecting
                delay = min(delay * 2, SUBMIT_MAX_BACKOFF)

    async def _submit(
        self, workflow_id: str, upload: Upload, queue_keys: list[str], token: str
    ) -> Completion:
        """One attempt; attempts of one submission (same ``token``) are idempotent: the id is
        claimed once, the upload rewritten only while still PENDING, and each root chunk is
        released once (start.lua's chunk offsets)."""
        keys = _keys.keys_of(workflow_id)
        c = self._client
        retention = int(upload.meta[MetaField.RETENTION_MS])
        claimed = p.parse_submit(await self._call(p.submit_call(workflow_id, token, retention)))
        if claimed.code is SubmitCode.TAKEN:
            raise WorkflowExists(f"a workflow with id {workflow_id!r} already exists")
        roots = list(upload.roots)
        if claimed.pending and self._fusable(upload, roots):
            # small workflow: upload and start in one MULTI/EXEC round trip
            reply = await self._upload_and_start(workflow_id, upload, queue_keys, roots)
            done = p.parse_start(reply)
            return Completion(Outcome.APPLIED, done.state, tuple(done.released))
        if claimed.pending:
            with map_exceptions():
                pipe = c.pipeline(transaction=False)
                pipe.hset(keys.meta, mapping=upload.meta)
                pipe.set(keys.cnt, upload.cnt)
                pipe.set(keys.off, upload.off)
                pipe.set(keys.succ, upload.succ)
                pipe.set(keys.dag, upload.dag)
                for key in keys:  # an abandoned PENDING upload must not leak; start.lua persists
                    pipe.pexpire(key, retention)
                await pipe.execute()
                # Templates go in modest pipelines: redis-py packs commands on the event loop,
                # and one 10,000-template pipeline would stall it for ~100 ms.
                items = list(upload.templates.items())
                for i in range(0, len(items), TEMPLATE_CHUNK):
                    await c.hset(keys.tpl, mapping=dict(items[i : i + TEMPLATE_CHUNK]))
                if items:
                    await c.pexpire(keys.tpl, retention)
                # the reconciler's set and the listing index (_index.py), in one round trip
                created = int(upload.meta[MetaField.CREATED])
                pipe = c.pipeline(transaction=False)
                pipe.zadd(_keys.ACTIVE, {workflow_id: int(time.time() * 1000)})
                pipe.zadd(_keys.index_key(workflow_id), {workflow_id: created})
                await pipe.execute()
        roots = list(upload.roots)
        first = await self._call(p.start_call(workflow_id, True, 0, roots[:ROOT_CHUNK], queue_keys))
        done = p.parse_start(first)
        released = list(done.released)
        for i in range(ROOT_CHUNK, len(roots), ROOT_CHUNK):
            more = await self._call(
                p.start_call(workflow_id, False, i, roots[i : i + ROOT_CHUNK], queue_keys)
            )
            released += p.parse_start(more).released
        return Completion(Outcome.APPLIED, done.state, tuple(released))

    def _fusable(self, upload: Upload, roots: list[int]) -> bool:
        # one transaction stays short and its arguments modest; Redis Cluster cannot put the
        # global active set in the workflow's slot
        return (
            self._fuse
            and len(roots) <= ROOT_CHUNK
            and len(upload.templates) <= TEMPLATE_CHUNK
            and len(upload.dag) + len(upload.succ) <= FUSE_MAX_BYTES
        )

    async def _upload_and_start(
        self, workflow_id: str, upload: Upload, queue_keys: list[str], roots: list[int]
    ) -> Any:
        """Store a claimed (PENDING) upload and run start.lua's first phase in one MULTI/EXEC:
        all of it applies or nothing does (an -OOM at queueing aborts the EXEC). A lost reply
        is retried by ``submit``: the claim is then found RUNNING and start says UNCHANGED."""
        keys = _keys.keys_of(workflow_id)
        retention = int(upload.meta[MetaField.RETENTION_MS])
        call = p.start_call(workflow_id, True, 0, roots, queue_keys)
        script = self._scripts[ScriptName.START]
        with map_exceptions(ScriptName.START):
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(keys.meta, mapping=upload.meta)
            pipe.set(keys.cnt, upload.cnt)
            pipe.set(keys.off, upload.off)
            pipe.set(keys.succ, upload.succ)
            pipe.set(keys.dag, upload.dag)
            for key in keys:  # as on the chunked path: start.lua persists them
                pipe.pexpire(key, retention)
            if upload.templates:
                pipe.hset(keys.tpl, mapping=upload.templates)
                pipe.pexpire(keys.tpl, retention)
            pipe.zadd(_keys.ACTIVE, {workflow_id: int(time.time() * 1000)})
            pipe.zadd(
                _keys.index_key(workflow_id), {workflow_id: int(upload.meta[MetaField.CREATED])}
            )
            # a raw EVALSHA: redis-py's pipelined Script would cost a SCRIPT EXISTS round trip
            pipe.execute_command("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
            replies = await pipe.execute(raise_on_error=False)
            reply = replies[-1]
            if isinstance(reply, redis.exceptions.NoScriptError):  # the upload applied
                return await self._call(call)  # loads the script, then runs it
            if isinstance(reply, Exception):
                raise reply
            return reply

    async def meta(self, workflow_id: str) -> tuple[dict[str, str], int] | None:
        keys = _keys.keys_of(workflow_id)
        with map_exceptions():
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(keys.meta)
            pipe.hlen(keys.claims)
            for kind in CallbackKind:  # claim.lua records callback deliveries there too
                pipe.hexists(keys.claims, kind.value)
            raw, claims, *callbacks = await pipe.execute()
        if not raw or MetaField.STATE.encode() not in raw:
            return None
        running = int(claims) - sum(map(bool, callbacks))  # task nodes only, as MemoryStore
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}, running

    async def index_page(
        self, cursor: tuple[int, str] | None, since_ms: int, count: int
    ) -> list[Entry]:
        with map_exceptions():
            return await index_page(self._client, cursor, since_ms, count)

    async def control(self, op: str, workflow_id: str, queue_keys: list[str]) -> Completion:
        done = p.parse_control(await self._call(p.control_call(op, workflow_id, queue_keys)))
        if done.status is Outcome.APPLIED and op in ("resume", "retry"):  # live: reconcile it
            with map_exceptions():
                await self._client.zadd(_keys.ACTIVE, {workflow_id: int(time.time() * 1000)})
        return done

    async def load(self, workflow_id: str) -> Loaded | None:
        with map_exceptions():
            pipe = self._client.pipeline(transaction=False)
            _load_cmds(pipe, workflow_id)
            blob, fields = await pipe.execute()
        return _loaded(blob, fields)

    async def results(self, workflow_id: str, nodes: Sequence[int]) -> list[bytes | None]:
        if not nodes:
            return []
        key = _keys.keys_of(workflow_id).res
        with map_exceptions():
            return list(await self._client.hmget(key, [str(n) for n in nodes]))

    async def events(
        self,
        workflow_id: str,
        after: str,
        block_ms: int | None,
        count: int = 1000,
        *,
        states_only: bool = False,
    ) -> list[Event]:
        keys = _keys.keys_of(workflow_id)
        key = keys.st if states_only else keys.ev
        entries: list[Any]
        if block_ms is not None and self._waits is not None and after != "$":
            entries = (await self._waits.read(key, after, block_ms))[:count]
        else:
            if block_ms is not None:  # stay well inside redis-py's socket read timeout
                block_ms = min(block_ms, MAX_BLOCK_MS)
            with map_exceptions():
                reply: Any = await self._client.xread({key: after}, count=count, block=block_ms)
            streams: list[Any] = reply or []
            entries = [e for stream in streams for e in stream[1]]
        out: list[Event] = []
        for eid, fields in entries:
            state = State(fields[_EV_STATE].decode())
            if states_only:
                out.append(Event(id=eid.decode(), kind="state", node=None, state=state))
                continue
            out.append(_event(eid, fields, state))
        return out

    async def running_nodes(
        self, workflow_id: str, loaded: Loaded | None = None
    ) -> tuple[RunningNode, ...]:
        keys = _keys.keys_of(workflow_id)
        with map_exceptions():
            claimed: dict[bytes, bytes] = await self._client.hgetall(keys.claims)
            nodes = sorted(int(k) for k in claimed if k.isdigit())
            if not nodes:
                return ()
            # the start and progress of each running node are its latest events: read the
            # stream backwards, at most RUNNING_SCAN entries (bounded work per status call)
            entries: list[Any] = await self._client.xrevrange(keys.ev, count=RUNNING_SCAN)
        if loaded is None:
            loaded = await self.load(workflow_id)
        return running_from_events(nodes, entries, loaded)

    async def last_event_id(self, workflow_id: str, *, states_only: bool = False) -> str:
        keys = _keys.keys_of(workflow_id)
        key = keys.st if states_only else keys.ev
        with map_exceptions():
            last = await self._client.xrevrange(key, count=1)
        return last[0][0].decode() if last else "0"


def _event(eid: bytes, fields: dict[bytes, bytes], state: State) -> Event:
    node = int(fields[_EV_NODE])
    kind = _EVENT_KINDS[fields[_EV_KIND]]
    attempt = fields.get(_EV_ATTEMPT)
    return Event(
        id=eid.decode(),
        kind=kind,
        node=None if node < 0 else node,
        state=state,
        attempt=None if attempt is None else int(attempt),
        progress=_progress(fields) if kind == "node_progress" else None,
    )


def _progress(fields: dict[bytes, bytes]) -> Progress:
    total, note = fields.get(_EV_TOTAL), fields.get(_EV_NOTE)
    return Progress(
        done=_number(fields.get(_EV_DONE, b"0")),
        total=None if total is None else _number(total),
        note=None if note is None else note.decode(errors="replace"),
    )


def _number(raw: bytes) -> float:
    value = float(raw)
    return int(value) if value.is_integer() else value


#: Events read back by ``running_nodes`` to find each running node's start and progress.
RUNNING_SCAN = 2000


def running_from_events(
    nodes: list[int], entries: list[Any], loaded: Loaded | None
) -> tuple[RunningNode, ...]:
    """RunningNodes of ``nodes`` from the newest-first events stream ``entries``."""
    wanted = set(nodes)
    started: dict[int, tuple[int, int | None]] = {}
    progress: dict[int, Progress] = {}
    for eid, fields in entries:
        node = int(fields[_EV_NODE])
        if node not in wanted or node in started:
            continue  # an older run's events, once the latest start was seen
        kind = fields[_EV_KIND]
        if kind == _STARTED:
            attempt = fields.get(_EV_ATTEMPT)
            started[node] = (int(eid.split(b"-")[0]), None if attempt is None else int(attempt))
        elif kind == _PROGRESS and node not in progress:
            progress[node] = _progress(fields)
    out: list[RunningNode] = []
    for node in nodes:
        at, attempt = started.get(node, (None, None))
        actor = ""
        if loaded is not None and node < len(loaded.dag):
            actor = loaded.dag.shapes[loaded.dag.shape_of[node]][0]
        out.append(
            RunningNode(
                node=node,
                actor=actor,
                started=at,
                attempt=attempt,
                progress=progress.get(node) if node in started else None,
            )
        )
    return tuple(out)


@final
class RedisStore:
    """Workflow state in Redis (standalone, Sentinel-managed, or Redis Cluster).

    Args:
        url: ``redis://``, ``rediss://`` (TLS), ``unix://`` or
            ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``.
        client: any redis-py client for the worker side: ``redis.Redis`` (TCP, TLS, unix
            socket, ACL user, credential provider), a Sentinel master
            (``Sentinel([...]).master_for(name)``) or a ``redis.cluster.RedisCluster``. The
            async side reaches the same server(s) with the same credentials and TLS settings
            (and follows Sentinel failovers); a client it cannot reproduce raises
            ``ConfigurationError`` here.
        cluster: connect to a Redis Cluster (with ``url``).
        retention: seconds a finished workflow's keys are kept (default one day).
        result_limit: largest stored result in bytes (default 1 MiB).
        failed_retention: seconds a FAILED workflow's keys are kept (default seven days): it
            can still be retried, so it is kept longer than one that succeeded or was
            cancelled.
        allow_eviction: accept a Redis whose ``maxmemory-policy`` evicts keys
            (``allkeys-*``, ``volatile-*``), with a warning. By default such a Redis is
            refused with ``ConfigurationError`` at worker boot and at the client's first call:
            an evicted key makes its workflow hang for good. Use ``noeviction``: Redis then
            answers ``-OOM`` when full, which workers and clients retry.
        replicas: opt-in durability: a submission, completion, failure or control call
            counts as done only once this many replicas acknowledged it (Redis ``WAIT``
            after every script); fewer is a transient error, retried. 0 (default): the
            primary's reply is enough, and a failover may lose the last writes.
        replica_timeout: seconds each ``WAIT`` may block.
        patience: seconds a client call (``run()``, ``status()``, control calls, ...) keeps
            retrying transient errors (a lost connection, a full, busy or failing-over Redis)
            before raising them (default one minute; the CLI uses a few seconds).

    Raises:
        ConfigurationError: a retention is not a positive finite number, a bad URL, a client
            the async side cannot reproduce, or ``replicas`` on Redis Cluster.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        cluster: bool = False,
        retention: float = DEFAULT_RETENTION,
        result_limit: int = 1 << 20,
        failed_retention: float = DEFAULT_FAILED_RETENTION,
        allow_eviction: bool = False,
        patience: float = 60.0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self.retention_ms: int = retention_ms("retention", retention)
        self.failed_retention_ms: int = retention_ms("failed_retention", failed_retention)
        if (url is None) == (client is None):
            raise StoreError("RedisStore needs exactly one of url= or client=")
        wait = _durable.Wait.of(replicas, replica_timeout)
        self.cluster: bool = cluster or isinstance(client, redis.cluster.RedisCluster)
        if wait is not None and self.cluster:
            raise ConfigurationError(
                "replicas= is not supported on Redis Cluster: WAIT would have to go to the "
                "shard of each script; see the README's reliability section"
            )
        if client is None:
            assert url is not None
            client = _urls.client_from_url(url, cluster=cluster)
        self._factory = _connect.async_factory(client, AIO_MAX_CONNECTIONS, _LIB)
        self._secrets = _urls.secrets_of(client, url)
        self.url = url
        self.replicas = replicas
        self.patience: float = patience
        self.result_limit = result_limit
        self._wait = wait
        self._client: Any = client
        self._sync = _SyncDriver(client, wait)
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncDriver] = (
            weakref.WeakKeyDictionary()
        )
        self._direct: dict[int, bool] = {}
        self._eviction = EvictionCheck(allow_eviction)

    def __repr__(self) -> str:
        where = _urls.describe(self._client)
        extra = f", replicas={self.replicas}" if self.replicas else ""
        return f"RedisStore({where!r}{extra})"

    def redact(self, text: str) -> str:
        """``text`` without this store's passwords (for log lines and error messages)."""
        return redact_text(text, self._secrets)

    @property
    def sync(self) -> _SyncDriver:
        """The sync driver (worker threads)."""
        return self._sync

    @property
    def client(self) -> Any:
        """The sync redis-py client."""
        return self._client

    def aio(self) -> _AsyncDriver:
        """The async driver for the running event loop (one connection pool per loop)."""
        loop = asyncio.get_running_loop()
        driver = self._aio.get(loop)
        if driver is None:
            driver = self._aio[loop] = _AsyncDriver(
                self._factory(), self._wait, multiplex=not self.cluster
            )
        return driver

    async def aclose(self) -> None:
        """Close the async connection pool of the running event loop (call before it ends)."""
        driver = self._aio.pop(asyncio.get_running_loop(), None)
        if driver is not None:
            await driver.aclose()

    def close(self) -> None:
        """Close the sync connection pool, the worker threads' sockets, and the async pools of
        event loops still running in other threads (such as the one behind ``run_sync``)."""
        self._sync.close()
        _connect.close(self._client, owned=self.url is not None)
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, driver in list(self._aio.items()):
            if loop is not current and loop.is_running():
                self._aio.pop(loop, None)
                future = asyncio.run_coroutine_threadsafe(driver.aclose(), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout=5)

    def check_eviction(self) -> None:
        """Refuse an evicting ``maxmemory-policy`` (see ``allow_eviction``); cached once passed.

        Raises:
            ConfigurationError: a (primary) server evicts keys and ``allow_eviction`` is off.
            StoreUnavailable: the server could not be reached (checked again next time).
        """
        if not self._eviction.done:
            with map_exceptions():
                self._eviction.check(self._client, self.cluster)

    async def acheck_eviction(self) -> None:
        """``check_eviction`` for the event loop (in a thread the first time, then free)."""
        if not self._eviction.done:
            await asyncio.to_thread(self.check_eviction)

    def shares_server(self, client: Any) -> bool:
        """Whether ``client`` (a sync redis-py client) talks to this store's very Redis, so
        that scripts can write into keys it reads. Probed once per client with a nonce key;
        always False on Redis Cluster (a script cannot reach another slot's queue keys)."""
        if self.cluster:
            return False
        known = self._direct.get(id(client))
        if known is None:
            key = f"{_keys.PREFIX}:probe:{secrets.token_hex(8)}"
            try:
                with map_exceptions():
                    self._client.set(key, b"1", px=60_000)
                    known = client.get(key) == b"1"
                    self._client.delete(key)
            except StoreError:
                known = False
            self._direct[id(client)] = known
        return known
