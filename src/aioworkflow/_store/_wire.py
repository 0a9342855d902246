"""A lean EVALSHA path for the worker's per-task scripts (claim, complete, fail).

Every task a worker runs costs two script calls, and on a small machine redis-py's generic
command path (connection pool, argument encoding, pure-Python reply parser, response
callbacks) costs more CPU than the round trip itself. This module sends the same EVALSHA
over one plain socket per thread: the KEYS block of a workflow is packed once and cached, the
reply is read with a buffered reader, and a ``NOSCRIPT`` reply (after ``SCRIPT FLUSH`` or a
failover) loads the script and tries again.

It is only used where it is equivalent to redis-py: a plain TCP ``redis.Redis`` client,
without TLS, unix sockets, Sentinel or credential providers (a static password is sent with
AUTH, as redis-py does). Everything else goes through redis-py (:func:`wire_refusal` says
why). With ``RedisStore(replicas=N)`` each EVALSHA is followed on the same socket by
``WAIT N timeout`` (``_durable.py``), sent in the same packet.

Why it is kept (measured 2026-12-02 on the 2-core shared dev machine, redis-py 8.1.0, hiredis
3.x, ``python bench/bench_wire.py --rounds 7 --group 3000 --chain 300``: one RedisBroker in
direct mode, one in-process worker with 8 threads, each variant in a fresh process, rounds
alternating; tasks/s, median (min-max) of 7):

=================  ======================  ===================
variant            Group of 3,000          Chain of 300
=================  ======================  ===================
this wire path     1857 (1731-1949)        125 (114-129)
redis-py+hiredis   1563 (1479-1747) 0.84x  128 (121-131) 1.02x
redis-py           1515 (1278-1698) 0.82x  123 (116-125) 0.98x
=================  ======================  ===================

A second run (7 rounds, Group of 2,000, Chain of 300) gave 1782 / 1547 (0.87x) / 1346 (0.76x)
on the group and 126 / 124 / 124 on the chain. The wire path wins by 13-19% where throughput
is bound by the worker's CPU (the group), the criterion for keeping it (10% or more); a chain
is bound by dramatiq's fetch latency, and all three tie there. hiredis is not a dependency:
with the wire path on, redis-py only carries the cold scripts. ``AIOWORKFLOW_NO_WIRE=1``
turns this path off.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, BinaryIO

import redis
import redis.connection

from aioworkflow.errors import ScriptError, StoreBusy, StoreConnectionError, StoreError

from ._scripts import SOURCES, explain

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aioworkflow._protocol import ScriptCall, ScriptName

    from ._durable import Wait

__all__ = ["TRANSIENT_CODES", "WireScripts", "reply_error", "wire_refusal"]

_KEY_CACHE = 4096
_CRLF = b"\r\n"


def _bulk(value: Any) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, int):
        data = b"%d" % value
    else:
        data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


#: Error codes of replies a server gives while it is up but cannot serve for a while: the
#: command did nothing, and trying again later is right. ``OOM``: ``maxmemory`` reached with
#: ``noeviction``; ``BUSY``: another client's script runs past ``busy-reply-threshold``;
#: ``READONLY``: a demoted primary; ``LOADING``: a restarted server reading its data;
#: ``MASTERDOWN``: a replica lost its primary; ``NOREPLICAS``: ``min-replicas-to-write``
#: unmet; ``TRYAGAIN``/``CLUSTERDOWN``: a cluster resharding or failing over; ``MISCONF``: a
#: failed RDB save stops writes; ``NOSCRIPT``: the script cache was flushed again between
#: loading a script and running it (a failover or ``SCRIPT FLUSH``).
TRANSIENT_CODES = frozenset(
    (
        "OOM",
        "BUSY",
        "READONLY",
        "LOADING",
        "MASTERDOWN",
        "NOREPLICAS",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MISCONF",
        "NOSCRIPT",
    )
)


def reply_error(code: str, message: str) -> StoreError:
    """The aioworkflow error for a Redis error reply (``code``: its first word, ``OOM``).

    The one classification of error replies, for the wire path and redis-py alike:
    ``LOADING`` is a :class:`StoreConnectionError` (as redis-py has it), the other
    :data:`TRANSIENT_CODES` a :class:`StoreBusy`, anything else a :class:`ScriptError`
    (callers first map ``user_script:N`` in ``message`` to the Lua file and line).
    """
    if code == "LOADING":
        return StoreConnectionError(message)
    if code in TRANSIENT_CODES:
        return StoreBusy(message, code)
    return ScriptError(message)


class _ReplyError(Exception):
    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


def _read(f: BinaryIO) -> Any:
    line = f.readline()
    if not line.endswith(_CRLF):
        raise ConnectionError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed by Redis")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    if kind == b"+":
        return rest
    if kind == b"-":
        return _ReplyError(rest.decode(errors="replace"))
    raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")


class _Conn:
    def __init__(self, params: dict[str, Any]) -> None:
        self.pid = os.getpid()
        self.sock = socket.create_connection(
            (params["host"], params["port"]), timeout=params["connect_timeout"]
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(params["timeout"])
        self.reader = self.sock.makefile("rb")
        hello: list[list[Any]] = []
        if params["password"] is not None:
            user = params["username"]
            hello.append(
                ["AUTH", params["password"]] if user is None else ["AUTH", user, params["password"]]
            )
        if params["db"]:
            hello.append(["SELECT", params["db"]])
        for cmd in hello:
            reply = self.call(_command(cmd))
            if isinstance(reply, _ReplyError):
                self.close()
                raise reply_error(reply.code, f"{cmd[0]} failed: {reply}")

    def call(self, packet: bytes) -> Any:
        self.sock.sendall(packet)
        return _read(self.reader)

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:  # pragma: no cover - closing a broken socket
            pass


def _command(args: Sequence[Any]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class WireScripts:
    """EVALSHA over a socket per thread; build with :meth:`for_client` (None if unsuitable)."""

    def __init__(
        self, params: dict[str, Any], sources: Mapping[ScriptName, str], wait: Wait | None = None
    ) -> None:
        self._params = params
        self._wait = wait
        self._wait_packet = b"" if wait is None else _command(wait.args)
        self._sources = {name: src.encode() for name, src in sources.items()}
        # scripts whose error lines explain() can map back to their files
        self._known = frozenset(n for n, src in sources.items() if SOURCES.get(n) == src)
        self._heads = {
            name: _bulk(b"EVALSHA") + _bulk(hashlib.sha1(src).hexdigest())
            for name, src in self._sources.items()
        }
        self._local = threading.local()
        self._keys: dict[tuple[str, ...], bytes] = {}
        # Every open socket with its thread, so that close() (and threads that have ended)
        # do not leave sockets for the garbage collector.
        self._open: list[tuple[weakref.ref[threading.Thread], _Conn]] = []
        self._open_lock = threading.Lock()

    @classmethod
    def for_client(
        cls, client: Any, sources: Mapping[ScriptName, str], wait: Wait | None = None
    ) -> WireScripts | None:
        """A wire path equivalent to ``client``, or None where only redis-py will do.

        ``AIOWORKFLOW_NO_WIRE=1`` in the environment turns it off (redis-py for every script;
        used by ``bench/bench_wire.py`` to compare the two).
        """
        if os.environ.get("AIOWORKFLOW_NO_WIRE") == "1" or wire_refusal(client) is not None:
            return None
        pool = client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        params = {
            "host": conn.host,
            "port": conn.port,
            "db": int(conn.db or 0),
            "username": conn.username,
            "password": conn.password,
            "timeout": conn.socket_timeout,
            "connect_timeout": conn.socket_connect_timeout,
        }
        return cls(params, sources, wait)

    def _conn(self) -> _Conn:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.pid != os.getpid():
            conn = self._local.conn = _Conn(self._params)
            with self._open_lock:
                alive: list[tuple[weakref.ref[threading.Thread], _Conn]] = []
                for ref, other in self._open:
                    thread = ref()
                    if thread is not None and thread.is_alive() and other.pid == conn.pid:
                        alive.append((ref, other))
                    elif other.pid == conn.pid:
                        other.close()
                self._open = [*alive, (weakref.ref(threading.current_thread()), conn)]
        return conn

    def close(self) -> None:
        """Close every socket this process opened (threads reconnect on their next call)."""
        with self._open_lock:
            opened, self._open = self._open, []
        for _ref, conn in opened:
            if conn.pid == os.getpid():
                conn.close()

    def _drop(self) -> None:
        conn: _Conn | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._open_lock:
                self._open = [(r, c) for r, c in self._open if c is not conn]

    def _key_block(self, keys: tuple[str, ...]) -> bytes:
        # ScriptCall keys are tuples already (a cached WorkflowKeys for claim): no copy
        block = self._keys.get(keys)
        if block is None:
            block = _bulk(len(keys)) + b"".join(_bulk(k) for k in keys)
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            self._keys[tuple(keys)] = block
        return block

    def run(self, call: ScriptCall) -> Any:
        """EVALSHA ``call.script``; loads the script once if Redis does not know it.

        Raises:
            StoreConnectionError: Redis unreachable, timed out, the connection broke, or
                Redis is still loading its data set.
            StoreBusy: a transient error reply (OOM, BUSY, READONLY...: ``TRANSIENT_CODES``).
            ScriptError: the script raised an error (naming the Lua file and line).
        """
        name, keys, args = call.script, call.keys, call.args
        packet = (
            b"*%d\r\n" % (3 + len(keys) + len(args))
            + self._heads[name]
            + self._key_block(keys)
            + b"".join(_bulk(a) for a in args)
        )
        try:
            conn = self._conn()
            tail = self._wait_packet  # WAIT N timeout right after the script (replicas=N)
            reply, acked = self._call(conn, packet, tail)
            if isinstance(reply, _ReplyError) and reply.code == "NOSCRIPT":
                loaded = conn.call(_command([b"SCRIPT", b"LOAD", self._sources[name]]))
                if isinstance(loaded, _ReplyError):
                    raise reply_error(loaded.code, f"SCRIPT LOAD {name} failed: {loaded}")
                reply, acked = self._call(conn, packet, tail)
        except (OSError, ConnectionError, ValueError) as exc:
            # A broken or timed-out socket cannot be resynchronised: start afresh next time.
            self._drop()
            raise StoreConnectionError(f"Redis connection failed: {exc}") from exc
        if isinstance(reply, _ReplyError):
            message = str(reply)
            raise reply_error(
                reply.code, explain(message, name) if name in self._known else message
            )
        if self._wait is not None:  # the script applied: now the replicas must have it
            if isinstance(acked, _ReplyError):
                raise StoreConnectionError(f"WAIT failed: {acked}")
            self._wait.check(acked)
        return reply

    @staticmethod
    def _call(conn: _Conn, packet: bytes, tail: bytes) -> tuple[Any, Any]:
        """Send ``packet`` (and ``tail``, a WAIT, in the same write); read both replies, so
        the socket stays in step."""
        if not tail:
            return conn.call(packet), None
        reply = conn.call(packet + tail)
        return reply, _read(conn.reader)


def wire_refusal(client: Any) -> str | None:
    """Why the wire path cannot stand in for ``client`` (None: it can)."""
    if type(client) is not redis.Redis:
        return f"{type(client).__name__} client"
    pool = client.connection_pool
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        return f"{type(pool).__name__} (Sentinel or custom pool)"
    if pool.connection_class is not redis.connection.Connection:
        return f"{pool.connection_class.__name__} (TLS, unix socket or custom transport)"
    kwargs = pool.connection_kwargs
    if kwargs.get("credential_provider") is not None:
        return "credential provider"
    if kwargs.get("redis_connect_func") is not None:
        return "custom connect function"
    return None
