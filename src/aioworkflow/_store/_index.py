"""The listing index on Redis: reading pages of it newest first, and pruning what expired.

The index is ``INDEX_SHARDS`` sorted sets (``_keys.index_key``): member the workflow id, score
its submit time. The client adds the entry at submit, in the same pipeline as the ``ACTIVE``
entry; no script writes it (a workflow's scripts touch its own slot only, and the shards live
in other slots on Redis Cluster). So the index knows ids and submit times only: a reader
re-reads each listed workflow's meta hash (state, name, labels) and filters on that, which also
makes state changes visible at once. An entry whose meta is gone (the workflow expired) is
removed by the reader that finds it; each first page also checks the oldest few entries of
every shard, so expired entries leave the index even if nobody lists that far back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioworkflow import _keys
from aioworkflow._machine import CallbackKind, MetaField

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Entry", "index_page"]

#: One listed workflow: (submit ms, id, (meta, running count) or None when it expired).
Entry = tuple[int, str, tuple[dict[str, str], int] | None]
#: Oldest entries of each shard checked for expiry by every first page.
PRUNE_OLDEST = 32


def _before(score: int, wid: str, cursor: tuple[int, str] | None) -> bool:
    # newest first: (score, id) descending; the cursor is the last entry already returned
    return cursor is None or (score, wid) < cursor


async def _metas(client: Any, ids: Sequence[str]) -> list[tuple[dict[str, str], int] | None]:
    pipe = client.pipeline(transaction=False)
    for wid in ids:
        keys = _keys.keys_of(wid)
        pipe.hgetall(keys.meta)
        pipe.hlen(keys.claims)
        for kind in CallbackKind:
            pipe.hexists(keys.claims, kind.value)
    replies: list[Any] = await pipe.execute()
    step = 2 + len(CallbackKind)
    out: list[tuple[dict[str, str], int] | None] = []
    for i in range(len(ids)):
        raw, claims, *callbacks = replies[i * step : (i + 1) * step]
        if not raw or MetaField.STATE.encode() not in raw:
            out.append(None)
            continue
        meta = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        out.append((meta, int(claims) - sum(map(bool, callbacks))))
    return out


async def _prune(client: Any, gone: Sequence[str]) -> None:
    if not gone:
        return
    pipe = client.pipeline(transaction=False)
    for wid in gone:
        pipe.zrem(_keys.index_key(wid), wid)
    await pipe.execute()


async def _prune_oldest(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    for key in _keys.index_keys():
        pipe.zrange(key, 0, PRUNE_OLDEST - 1)
    oldest = [m.decode() for members in await pipe.execute() for m in members]
    if not oldest:
        return
    pipe = client.pipeline(transaction=False)
    for wid in oldest:
        pipe.exists(_keys.keys_of(wid).meta)
    alive = await pipe.execute()
    await _prune(client, [wid for wid, n in zip(oldest, alive, strict=True) if not n])


async def index_page(
    client: Any, cursor: tuple[int, str] | None, since_ms: int, count: int
) -> list[Entry]:
    """Up to ``count`` entries submitted at ``since_ms`` or later, newest first, after
    ``cursor`` (the last entry of the previous page; None: the first page), with their meta.

    Entries found expired are removed from the index (and returned with None)."""
    if cursor is None:
        await _prune_oldest(client)
    top: Any = "+inf" if cursor is None else cursor[0]
    # entries with the cursor's own score come back too and are filtered; ask for enough to
    # get past a few of them (submit times are milliseconds: ties are rare and short)
    want = count * 2 + 16
    pipe = client.pipeline(transaction=False)
    for key in _keys.index_keys():
        pipe.zrevrangebyscore(key, top, since_ms, start=0, num=want, withscores=True)
    found: list[tuple[int, str]] = []
    for members in await pipe.execute():
        for member, score in members:
            entry = (int(score), member.decode())
            if _before(*entry, cursor):
                found.append(entry)
    found.sort(reverse=True)
    found = found[:count]
    metas = await _metas(client, [wid for _, wid in found])
    await _prune(client, [wid for (_, wid), m in zip(found, metas, strict=True) if m is None])
    return [(score, wid, m) for (score, wid), m in zip(found, metas, strict=True)]
