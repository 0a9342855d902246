"""list_workflows: the index, filters, limit, newest first, expiry leaving the index."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from aioworkflow import (
    Chain,
    MemoryStore,
    RedisStore,
    State,
    WithDelay,
    Workflow,
    _keys,
    list_workflows,
    list_workflows_sync,
)
from aioworkflow._listing import parse_duration
from aioworkflow.errors import ConfigurationError
from tests.conftest import poll_until

if TYPE_CHECKING:
    from aioworkflow import WorkflowStatus
    from tests.conftest import Env


async def listed(**kwargs: Any) -> list[WorkflowStatus]:
    return [st async for st in list_workflows(**kwargs)]


async def until(predicate: Any) -> None:
    deadline = time.monotonic() + 30
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class TestListing:
    async def test_200_workflows_in_mixed_states_filter_and_limit(self, env: Env) -> None:
        def boom(label: int) -> None:
            raise RuntimeError("no")

        later = env.actor(lambda label: None, actor_name=f"later_{env.name}")
        bad = env.actor(boom, actor_name=f"boom_{env.name}", max_retries=0)
        env.worker(threads=8)
        expected: dict[str, State] = {}
        for i in range(200):
            kind = i % 5
            labels = {"tenant": f"t{i % 3}"}
            if kind == 0:  # SUCCEEDED at once
                h = await Workflow(Chain(), name="empty", labels=labels).run()
                want = State.SUCCEEDED
            elif kind == 1 and i < 40:  # RUNNING: its node waits a minute
                h = await Workflow(
                    WithDelay(later.message(i), delay=60_000), name="held", labels=labels
                ).run()
                want = State.RUNNING
            elif kind == 2 and i < 60:  # FAILED
                h = await Workflow(Chain(bad.message(i)), name="bad", labels=labels).run()
                await h.wait(timeout=30)
                want = State.FAILED
            elif kind == 3:  # CANCELLED
                h = await Workflow(
                    WithDelay(later.message(i), delay=60_000), name="cx", labels=labels
                ).run()
                await h.cancel()
                want = State.CANCELLED
            else:
                h = await Workflow(Chain(), labels=labels).run()
                want = State.SUCCEEDED
            expected[h.id] = want
        # all of them, newest first (by submit millisecond; ties in id order)
        every = await listed(limit=None)
        assert {st.id: st.state for st in every} == expected
        assert len(every) == 200
        order = [(st.created_at, st.id) for st in every]
        assert order == sorted(order, reverse=True)
        submitted = {w: i for i, w in enumerate(expected)}
        assert submitted[every[0].id] >= 190  # newest first
        assert submitted[every[-1].id] <= 10

        def ids(states: set[State] | None = None, name: str | None = None) -> list[str]:
            return [
                st.id
                for st in every
                if (states is None or st.state in states) and (name is None or st.name == name)
            ]

        created = [st.created_at or 0 for st in every]
        assert created == sorted(created, reverse=True)
        # filters
        for state in (State.SUCCEEDED, State.RUNNING, State.FAILED, State.CANCELLED):
            got = await listed(state=state, limit=None)
            assert [st.id for st in got] == ids({state}), state
        failed_or_cancelled = await listed(state=["failed", "cancelled"], limit=None)
        assert [st.id for st in failed_or_cancelled] == ids({State.FAILED, State.CANCELLED})
        named = await listed(name="bad", limit=None)
        assert [st.id for st in named] == ids(name="bad")
        assert len(named) == 12
        t1 = await listed(label="tenant=t1", limit=None)
        assert len(t1) == len([i for i in range(200) if i % 3 == 1])
        assert all(st.labels["tenant"] == "t1" for st in t1)
        both = await listed(label={"tenant": "t0"}, name="empty", limit=None)
        assert len(both) == len([i for i in range(200) if i % 5 == 0 and i % 3 == 0])
        # limit
        first = await listed(limit=7)
        assert [st.id for st in first] == [st.id for st in every[:7]]
        assert await listed(limit=0) == []
        # since
        assert await listed(since=dt.timedelta(hours=1), limit=None) == every
        future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        assert await listed(since=future) == []
        if env.name == "rabbitmq":
            # the delayed messages must not outlive the test on the shared RabbitMQ: a later
            # test's worker would enqueue them (through its hooks) when they fall due
            for worker in env.workers:
                worker.stop()  # its unacked (delayed) messages go back to the queues
            env.workers.clear()

            rabbit: Any = env.broker

            def drained() -> bool:
                rabbit.flush_all()
                counts: tuple[int, ...] = rabbit.get_queue_message_counts("default")
                return sum(counts) == 0

            await poll_until(drained, 10, "the delayed messages to be purged")

    async def test_expired_workflows_leave_the_listing_and_the_index(
        self, env: Env, redis_url: str
    ) -> None:
        store: Any = (
            MemoryStore(retention=0.2)
            if env.name == "memory"
            else RedisStore(url=redis_url, retention=0.2)
        )
        try:
            keep = await Workflow(Chain()).run(store=store, broker=env.broker)
            gone = [
                (await Workflow(Chain()).run(store=store, broker=env.broker)).id for _ in range(3)
            ]

            async def expired() -> bool:
                return [st.id for st in await listed(store=store)] == []

            await until(expired)
            if env.name != "memory":
                client = redis.Redis.from_url(redis_url)
                for wid in [keep.id, *gone]:
                    assert client.zscore(_keys.index_key(wid), wid) is None
                client.close()
        finally:
            if env.name != "memory":
                await store.aclose()
                store.close()

    def test_the_sync_twin_lists_too(self, env: Env) -> None:
        handles = [Workflow(Chain(), name="sync").run_sync() for _ in range(3)]
        got = list_workflows_sync(name="sync")
        assert {st.id for st in got} == {h.id for h in handles}
        assert all(st.name == "sync" for st in got)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"state": "nope"},
            {"label": "novalue"},
            {"label": {"k": 1}},
            {"since": -1},
            {"since": dt.datetime(2020, 1, 1)},
            {"limit": -1},
            {"name": ""},
        ],
    )
    async def test_bad_filters_are_configuration_errors(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ConfigurationError):
            await listed(store=MemoryStore(), **kwargs)

    def test_durations(self) -> None:
        assert parse_duration("90") == 90
        assert parse_duration("15m") == 900
        assert parse_duration("1.5h") == 5400
        assert parse_duration("2d") == 172_800
        with pytest.raises(ConfigurationError):
            parse_duration("soon")
