"""Multiplexed stream waits: many pending ``wait()``/``events()`` share a few connections.

Without this, every blocked ``wait()`` held one connection of the event loop's pool in its own
``XREAD BLOCK``; past the pool's size every other client call (``run()``, ``status()``) queued
behind them. Here each event loop has ``SHARDS`` reader tasks; a waiter registers
``(stream key, after id)`` with the shard its key hashes to and awaits a future. A shard's
reader blocks in one ``XREAD`` over all its keys (each read from the lowest ``after`` of its
waiters) plus a private wake stream, and hands each waiter the entries past its own ``after``.

A waiter that arrives while its shard's read is in flight, for a key not in that read (or
from an earlier id), wakes the reader by adding to the shard's wake stream (one ``XADD`` on
the ordinary pool, at most one in flight per shard); the reader then reads again with the new
key set. The wake stream is read from the last wake entry seen, so a wake written before the
read reaches Redis is not lost either.

Transient errors (connection, OOM, BUSY, READONLY, LOADING) in a reader are retried with
back-off; waiters stay registered with their own ``after`` ids, so none misses an entry.
Standalone Redis only: on Redis Cluster a multi-key ``XREAD`` must stay in one slot, and the
driver keeps one ``XREAD`` per waiter there.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import zlib
from typing import TYPE_CHECKING, Any, final

from aioworkflow import _keys
from aioworkflow.errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["StreamWaits", "stream_id"]

#: Reader tasks (so connections held in a blocking read) per event loop.
SHARDS = 4
#: Longest blocking read: inside redis-py's default socket read timeout (5 s).
BLOCK_MS = 2000
#: Entries read per stream per read.
COUNT = 1000
#: Seconds the private wake stream outlives its last wake (it is tiny: one entry).
WAKE_TTL_MS = 3_600_000
_FIRST_PAUSE, _MAX_PAUSE = 0.05, 1.0

Entry = tuple[bytes, dict[bytes, bytes]]


def stream_id(raw: str | bytes) -> tuple[int, int]:
    """A stream entry id as a comparable pair (``"0"`` and ``"5"`` read as ``5-0``)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@final
class _Waiter:
    __slots__ = ("after", "future")

    def __init__(self, after: tuple[int, int], future: asyncio.Future[list[Entry]]) -> None:
        self.after = after
        self.future = future


@final
class _Shard:
    """One reader task and the waiters of the keys that hash to it."""

    def __init__(self, client: Any, guard: Callable[[], Any], wake_key: str) -> None:
        self._client = client
        self._guard = guard  # map_exceptions, passed in (no import cycle with _redis)
        self._wake_key = wake_key
        self._wake_last = b"0-0"
        self._waiters: dict[str, list[_Waiter]] = {}
        self._reading: dict[str, tuple[int, int]] | None = None  # the read in flight
        self._wake_sent = False
        self._task: asyncio.Task[None] | None = None
        self._wake_task: asyncio.Task[None] | None = None

    def add(self, key: str, waiter: _Waiter) -> None:
        self._waiters.setdefault(key, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read_loop())
            return
        reading = self._reading
        covered = reading is not None and key in reading and reading[key] <= waiter.after
        if not covered and reading is not None and not self._wake_sent:
            self._wake_sent = True  # kept: the loop holds tasks only weakly
            self._wake_task = asyncio.get_running_loop().create_task(self._wake())

    def remove(self, key: str, waiter: _Waiter) -> None:
        # a stale key only costs a place in the read in flight: no wake needed
        waiters = self._waiters.get(key)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                del self._waiters[key]

    async def _wake(self) -> None:
        pause = _FIRST_PAUSE
        for _ in range(20):  # a reader that is not woken still reads again within BLOCK_MS
            try:
                with self._guard():
                    pipe = self._client.pipeline(transaction=False)
                    pipe.xadd(self._wake_key, {b"w": b"1"}, maxlen=1, approximate=False)
                    pipe.pexpire(self._wake_key, WAKE_TTL_MS)
                    await pipe.execute()
                return
            except StoreUnavailable:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)
            except Exception:  # noqa: BLE001 - the reader re-reads within BLOCK_MS anyway
                return

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _read_loop(self) -> None:
        pause = _FIRST_PAUSE
        while self._waiters:
            streams = {key: min(w.after for w in ws) for key, ws in self._waiters.items() if ws}
            self._reading = streams
            self._wake_sent = False
            request: dict[str, bytes] = {k: b"%d-%d" % v for k, v in streams.items()}
            request[self._wake_key] = self._wake_last
            try:
                with self._guard():
                    reply: Any = await self._client.xread(request, count=COUNT, block=BLOCK_MS)
                pause = _FIRST_PAUSE
            except StoreUnavailable:
                self._reading = None
                await asyncio.sleep(pause)  # every waiter keeps its own ``after``: none lost
                pause = min(pause * 2, _MAX_PAUSE)
                continue
            except BaseException as exc:
                self._reading = None
                if not isinstance(exc, Exception):
                    raise
                self._fail_all(exc)  # a bug or a refused command: tell the waiters
                return
            self._reading = None
            if isinstance(reply, dict):  # RESP3 clients answer a map
                reply = [*reply.items()]
            self._dispatch(reply or [])
        self._reading = None

    def _dispatch(self, reply: list[Any]) -> None:
        for raw_key, entries in reply:
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            if key == self._wake_key:
                if entries:
                    self._wake_last = entries[-1][0]
                continue
            waiters = self._waiters.get(key)
            if not waiters or not entries:
                continue
            ids = [stream_id(eid) for eid, _ in entries]
            kept: list[_Waiter] = []
            for w in waiters:
                if w.future.done():
                    continue
                mine = [e for e, i in zip(entries, ids, strict=True) if i > w.after]
                if mine:
                    w.future.set_result(mine)
                else:
                    kept.append(w)
            if kept:
                self._waiters[key] = kept
            else:
                del self._waiters[key]

    def _fail_all(self, exc: Exception) -> None:
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.future.done():
                    w.future.set_exception(exc)
        self._waiters.clear()


@final
class StreamWaits:
    """The multiplexed readers of one event loop (see the module docstring)."""

    def __init__(self, client: Any, guard: Callable[[], Any], shards: int = SHARDS) -> None:
        token = secrets.token_hex(8)
        self._shards = [
            _Shard(client, guard, f"{_keys.PREFIX}:wake:{token}:{i}") for i in range(shards)
        ]

    async def read(self, key: str, after: str, block_ms: int) -> list[Entry]:
        """Entries of stream ``key`` past ``after``; waits up to ``block_ms`` (``[]`` then)."""
        shard = self._shards[zlib.crc32(key.encode()) % len(self._shards)]
        waiter = _Waiter(stream_id(after), asyncio.get_running_loop().create_future())
        shard.add(key, waiter)
        try:
            async with asyncio.timeout(block_ms / 1000 if block_ms > 0 else None):
                return await waiter.future
        except TimeoutError:
            return []
        finally:
            shard.remove(key, waiter)

    async def aclose(self) -> None:
        """Stop the readers (their waiters see ``CancelledError`` only if still waiting)."""
        for shard in self._shards:
            await shard.aclose()
