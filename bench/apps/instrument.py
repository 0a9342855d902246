"""Client-side instruments shared by the benchmark process and its CLI worker processes.

* Round trips: every request a Redis client sends and waits for (a single command, a whole
  pipeline, or one call on aioworkflow's lean wire path) counts one. Polls of dramatiq's
  consumers that come back empty (idle queues backing off) are counted apart, so the
  per-task figure holds only work done for tasks.
* Message bytes: every payload dramatiq's consumers read from a queue goes through
  ``Message.decode``; its length is added up. Each message enqueued is consumed once (no
  retries in the benchmark), so this is the bytes enqueued, whoever wrote them: a client's
  ``enqueue``, a worker sending a successor, or a Lua script pushing into the queue hash.

Calls made inside :func:`uncounted` (the harness's own INFO/FLUSHDB/BLPOP, the completion
counter, the reporter) are not counted. The flag is a context variable, so it follows
``asyncio.to_thread`` and tasks, and never leaks into dramatiq's worker threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

import dramatiq
import redis.asyncio.connection
import redis.connection
from dramatiq.brokers.redis import RedisBroker

if TYPE_CHECKING:
    from collections.abc import Iterator

_UNCOUNTED: contextvars.ContextVar[bool] = contextvars.ContextVar("bench_uncounted", default=False)


class Counters:
    """Process-wide totals, safe to bump from any thread."""

    FIELDS = ("rt", "bytes", "msgs", "empty")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


COUNTERS = Counters()


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Requests made in this block (and threads/tasks it starts) are not counted."""
    token = _UNCOUNTED.set(True)
    try:
        yield
    finally:
        _UNCOUNTED.reset(token)


def _patch_sync(cls: Any, name: str) -> None:
    original = getattr(cls, name)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _UNCOUNTED.get():
            COUNTERS.add("rt")
        return original(self, *args, **kwargs)

    setattr(cls, name, counted)


def _patch_async(cls: Any, name: str) -> None:
    original = getattr(cls, name)

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _UNCOUNTED.get():
            COUNTERS.add("rt")
        return await original(self, *args, **kwargs)

    setattr(cls, name, counted)


_installed = False


def install() -> None:
    """Patch redis-py, aioworkflow's wire path and dramatiq's consumer (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    _patch_sync(redis.connection.AbstractConnection, "send_packed_command")
    _patch_async(redis.asyncio.connection.AbstractConnection, "send_packed_command")
    try:  # aioworkflow's lean socket path for the per-task scripts (a private module)
        from aioworkflow._store import _wire

        _patch_sync(_wire._Conn, "call")
    except (ImportError, AttributeError):  # pragma: no cover - the store was restructured
        pass

    decode = dramatiq.Message.decode.__func__  # type: ignore[attr-defined]

    def counting_decode(cls: Any, data: bytes) -> Any:
        COUNTERS.add("bytes", len(data))
        COUNTERS.add("msgs")
        return decode(cls, data)

    dramatiq.Message.decode = classmethod(counting_decode)  # type: ignore[method-assign,assignment]

    # RedisBroker resolves ``do_<command>`` in __getattr__; a class attribute takes precedence
    def counting_fetch(self: RedisBroker, queue_name: str, prefetch: int) -> Any:
        got = self._dispatch("fetch")(queue_name, prefetch)  # type: ignore[no-untyped-call]
        if not got and not _UNCOUNTED.get():
            COUNTERS.add("empty")
        return got

    RedisBroker.do_fetch = counting_fetch  # type: ignore[attr-defined]


class Reporter(threading.Thread):
    """In a CLI worker: adds this process's counter deltas to a Redis hash every 50 ms."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        super().__init__(name="bench-reporter", daemon=True)
        self.client, self.key = client, key
        self.sent = dict.fromkeys(Counters.FIELDS, 0)

    def run(self) -> None:
        with uncounted():
            while True:
                time.sleep(0.05)
                now = COUNTERS.snapshot()
                delta = {k: now[k] - self.sent[k] for k in Counters.FIELDS}
                if not any(delta.values()):
                    continue
                pipe = self.client.pipeline(transaction=False)
                for k, v in delta.items():
                    if v:
                        pipe.hincrby(self.key, k, v)
                try:
                    pipe.execute()
                except redis.RedisError:
                    continue
                self.sent = now
