"""``list_workflows``: which workflows ran, newest first, filtered by state, name and labels.

The store keeps an index of submitted workflows (ids by submit time; on Redis sharded over
``_keys.INDEX_SHARDS`` sorted sets, see ``_store/_index.py``). A listing reads it a page at a
time, newest first, down to ``since``, reads each entry's current meta, and keeps those that
match: filters see the live state, and the work is proportional to the workflows submitted
since ``since``, not to everything stored.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, cast

from ._client import _portal_call, _resolve  # pyright: ignore[reportPrivateUsage]
from ._machine import State
from ._status import WorkflowStatus, status_from_meta
from ._upload import check_labels, check_name
from .errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import dramatiq

    from ._store._base import StoreBackend

__all__ = ["list_workflows", "list_workflows_sync", "parse_duration"]

#: Entries read per index page.
PAGE = 200
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` or ``"1w"``.

    Raises:
        ConfigurationError: anything else.
    """
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ConfigurationError(f"not a duration: {text!r} (try 90s, 15m, 1h, 2d)")
    return float(found.group(1)) * _UNIT[found.group(2)]


def _since_ms(since: float | dt.timedelta | dt.datetime | None) -> int:
    if since is None:
        return 0
    if isinstance(since, dt.datetime):
        if since.tzinfo is None:
            raise ConfigurationError("since= as a datetime must be timezone-aware")
        return int(since.timestamp() * 1000)
    seconds: object = since.total_seconds() if isinstance(since, dt.timedelta) else since
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:  # pyright: ignore[reportUnnecessaryIsInstance] - callers may pass anything
        raise ConfigurationError(f"since= is a non-negative number of seconds, not {since!r}")
    return int((time.time() - seconds) * 1000)


def _states(state: State | str | Iterable[State | str] | None) -> frozenset[State] | None:
    if state is None:
        return None
    given = [state] if isinstance(state, str) else list(state)  # a State is a str
    try:
        return frozenset(State(str(s).upper()) for s in given)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise ConfigurationError(f"state= takes {names}, not {state!r}") from None


def _labels(label: Mapping[str, str] | str | Iterable[str] | None) -> dict[str, str]:
    if label is None:
        return {}
    if isinstance(label, Mapping):
        return check_labels(cast("Mapping[object, object]", label))
    pairs = [label] if isinstance(label, str) else list(label)
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = str(pair).partition("=")
        if not eq:
            raise ConfigurationError(f"label= takes key=value, not {pair!r}")
        out[key] = value
    return check_labels(out)


async def list_workflows(
    *,
    state: State | str | Iterable[State | str] | None = None,
    name: str | None = None,
    label: Mapping[str, str] | str | Iterable[str] | None = None,
    since: float | dt.timedelta | dt.datetime | None = None,
    limit: int | None = 100,
    store: StoreBackend | None = None,
    broker: dramatiq.Broker | None = None,
) -> AsyncIterator[WorkflowStatus]:
    """The stored workflows, newest first (by submit time), as ``WorkflowStatus``.

    ``async for st in list_workflows(state="failed", since=3600): ...``

    Args:
        state: one state or several (``State`` or its name in any case, ``"failed"``).
        name: only workflows with this ``Workflow(name=)``.
        label: only workflows with all these labels: a mapping, ``"k=v"``, or several.
        since: only workflows submitted in the last ``since`` seconds (a number or a
            ``timedelta``), or after a timezone-aware ``datetime``.
        limit: at most this many (None: all).
        store: default: the store of the broker's ``WorkflowMiddleware``.
        broker: default: dramatiq's global broker (to find the store).

    The statuses carry no ``running_nodes`` (ask ``WorkflowHandle(id).status()``). Expired
    workflows are not listed (and leave the index). The sync twin is
    :func:`list_workflows_sync`.

    Raises:
        ConfigurationError: a bad filter, or no store.
        StoreUnavailable: the store is unavailable.
    """
    states = _states(state)
    wanted_name = check_name(name)
    labels = _labels(label)
    since_ms = _since_ms(since)
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ConfigurationError(f"limit= is a non-negative integer or None, not {limit!r}")
    if store is None:
        _, store = _resolve(broker, None)
    driver = store.aio()
    left = limit
    cursor: tuple[int, str] | None = None
    while left is None or left > 0:
        page = await driver.index_page(cursor, since_ms, PAGE)
        for created, wid, found in page:
            cursor = (created, wid)
            if found is None:
                continue
            st = status_from_meta(wid, *found)
            if states is not None and st.state not in states:
                continue
            if wanted_name is not None and st.name != wanted_name:
                continue
            if any(st.labels.get(k) != v for k, v in labels.items()):
                continue
            yield st
            if left is not None:
                left -= 1
                if left == 0:
                    return
        if len(page) < PAGE:
            return


def list_workflows_sync(
    *,
    state: State | str | Iterable[State | str] | None = None,
    name: str | None = None,
    label: Mapping[str, str] | str | Iterable[str] | None = None,
    since: float | dt.timedelta | dt.datetime | None = None,
    limit: int | None = 100,
    store: StoreBackend | None = None,
    broker: dramatiq.Broker | None = None,
) -> list[WorkflowStatus]:
    """The blocking twin of :func:`list_workflows`, for sync code: a list, newest first."""

    async def collect() -> list[WorkflowStatus]:
        found = list_workflows(
            state=state, name=name, label=label, since=since, limit=limit, store=store,
            broker=broker,
        )  # fmt: skip
        return [st async for st in found]

    return _portal_call(collect)
