"""The Lua scripts' KEYS/ARGV/reply contracts, tested directly against a real Redis."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any, cast

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, Group, MemoryStore, RedisStore, State, WithDelay, compile
from aioworkflow._dramatiq import queue_keys
from aioworkflow._keys import PARTS, workflow_keys
from aioworkflow._machine import ClaimCode, MetaField
from aioworkflow._store._scripts import PRELUDE, SOURCES, ScriptName
from aioworkflow._upload import Callback, build_upload

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis

WF = "wf1"
#: The message token of the workflows these tests store (deliveries carry it).
TOKEN = "0123456789abcdef"
_broker = StubBroker()
dramatiq.set_broker(_broker)


@dramatiq.actor(broker=_broker)
def t(label: Any) -> None:
    """A task for canvases (never run here)."""


def key(part: str) -> str:
    return workflow_keys(WF)[PARTS.index(part)]


@pytest.fixture
async def store(redis_client: redis.Redis, redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(url=redis_url, retention=60)
    yield s
    await s.aclose()
    s.close()


async def submit(
    store: RedisStore, canvas: Any, *, direct: bool = False, callbacks: bool = False
) -> list[str]:
    cb = Callback("cb", "default", (), {}, {}) if callbacks else None
    up = build_upload(
        WF,
        compile(canvas),
        direct=direct,
        on_success=cb,
        on_failure=cb,
        retention_ms=60_000,
        now_ms=0,
        token=TOKEN,
    )
    qkeys = queue_keys("dramatiq", up.slots) if direct else []
    await store.aio().submit(WF, up, qkeys)
    return qkeys


class TestLoading:
    def test_every_script_file_has_a_name_and_loads(self, redis_client: redis.Redis) -> None:
        listing = {
            p.name[:-4]
            for p in files("aioworkflow").joinpath("lua").iterdir()
            if p.name.endswith(".lua")
        }
        assert listing - set(PRELUDE) == {n.value for n in ScriptName}
        for name, src in SOURCES.items():
            assert redis_client.script_load(src), name

    async def test_scripts_keep_working_after_script_flush(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        await submit(store, Chain(t.message(0), t.message(1)))
        redis_client.script_flush()
        done = store.sync.complete(WF, 0, None, [], None, TOKEN)
        assert done.status == 1
        assert done.released == (1,)
        redis_client.script_flush()
        assert (await store.aio().control("pause", WF, [])).state is State.PAUSED


class TestComplete:
    async def test_a_duplicate_completion_changes_nothing(self, store: RedisStore) -> None:
        await submit(store, Chain(t.message(0), t.message(1)))
        first = store.sync.complete(WF, 0, None, [], None, TOKEN)
        second = store.sync.complete(WF, 0, None, [], None, TOKEN)
        assert (first.status, first.released) == (1, (1,))
        assert (second.status, second.released) == (0, ())

    async def test_a_join_releases_the_next_group_once_when_the_last_member_finishes(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        await submit(
            store,
            Chain(
                Group(*[t.message(i) for i in range(5)]),
                Group(*[t.message(i) for i in range(5, 9)]),
            ),
        )
        released = [store.sync.complete(WF, i, None, [], None, TOKEN).released for i in range(5)]
        assert released[:4] == [()] * 4
        assert sorted(released[4]) == [5, 6, 7, 8]
        # per-node state is compact: a few strings, not a key per node
        assert len(redis_client.keys(f"aiowf:{{{WF}}}:*")) <= len(PARTS)

    async def test_the_last_node_ends_the_workflow_and_dispatches_on_success(
        self, store: RedisStore
    ) -> None:
        await submit(store, Chain(t.message(0)), callbacks=True)
        done = store.sync.complete(WF, 0, b"r", [], None, TOKEN)
        assert done.state is State.SUCCEEDED
        assert done.released == ("s",)
        meta, _ = await store.aio().meta(WF) or ({}, 0)
        assert meta[MetaField.SUCCEEDED] == "1"
        assert await store.aio().results(WF, [0]) == [b"r"]

    async def test_keys_have_no_ttl_while_running_and_expire_after_the_end(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        await submit(store, Chain(t.message(0), t.message(1)))
        store.sync.complete(WF, 0, None, [], None, TOKEN)
        assert redis_client.pttl(key("meta")) == -1
        assert redis_client.pttl(key("dag")) == -1
        store.sync.complete(WF, 1, None, [], None, TOKEN)
        for k in (key("meta"), key("dag"), key("cnt"), key("done")):
            assert 0 < redis_client.pttl(k) <= 60_000


class TestDirectEnqueue:
    async def test_released_messages_land_in_dramatiqs_queue_with_fresh_push_ids(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        first = t.message(0)
        qkeys = await submit(
            store,
            Chain(first, Group(t.message(1), WithDelay(t.message(2), delay=500))),
            direct=True,
        )
        ids = cast("list[bytes]", redis_client.lrange("dramatiq:default", 0, -1))
        assert len(ids) == 1
        root = dramatiq.Message.decode(
            cast("bytes", redis_client.hget("dramatiq:default.msgs", ids[0]))
        )
        # a fresh push id (the broker's id and the claim key); the user's message id kept
        assert root.options["redis_message_id"] == ids[0].decode() == f"{TOKEN}.0.1"
        assert root.message_id == first.message_id
        assert root.options["aiowf"] == [WF, 0, TOKEN, f"{TOKEN}.0.1"]
        assert root.args == (0,)
        store.sync.complete(WF, 0, None, qkeys, None, TOKEN)
        (delayed_id,) = cast("list[bytes]", redis_client.lrange("dramatiq:default.DQ", 0, -1))
        delayed = dramatiq.Message.decode(
            cast("bytes", redis_client.hget("dramatiq:default.DQ.msgs", delayed_id))
        )
        assert delayed.queue_name == "default.DQ"
        assert delayed.options["eta"] - delayed.message_timestamp == 500
        assert len(set(redis_client.lrange("dramatiq:default", 0, -1))) == 2


class TestClaim:
    async def test_claim_codes(self, store: RedisStore) -> None:
        await submit(store, Group(t.message(0), t.message(1), t.message(2)))
        assert store.sync.claim(WF, 0, "m0", [], TOKEN).code == ClaimCode.RUN
        assert (
            store.sync.claim(WF, 0, "m0", [], TOKEN).code == ClaimCode.RUN
        )  # redelivery of the same message
        assert store.sync.claim(WF, 0, "other", [], TOKEN).code == ClaimCode.DUPLICATE
        store.sync.complete(WF, 0, None, [], None, TOKEN)
        assert store.sync.claim(WF, 0, "m0", [], TOKEN).code == ClaimCode.DONE
        await store.aio().control("pause", WF, [])
        assert store.sync.claim(WF, 1, "m1", [], TOKEN).code == ClaimCode.HELD
        resumed = await store.aio().control("resume", WF, [])
        assert resumed.released == (1,)
        assert (await store.aio().control("resume", WF, [])).status == 0
        await store.aio().control("cancel", WF, [])
        assert store.sync.claim(WF, 2, "m2", [], TOKEN).code == ClaimCode.ENDED
        assert store.sync.claim("nope", 0, "m", [], TOKEN).code == ClaimCode.MISSING

    async def test_a_stray_copy_of_an_unreleased_node_is_skipped(self, store: RedisStore) -> None:
        await submit(store, Chain(t.message(0), t.message(1)))
        assert store.sync.claim(WF, 1, "early", [], TOKEN).code == ClaimCode.UNRELEASED
        store.sync.complete(WF, 0, None, [], None, TOKEN)
        assert store.sync.claim(WF, 1, "early", [], TOKEN).code == ClaimCode.RUN


class TestFailAndControl:
    async def test_two_failures_dispatch_on_failure_once_and_retry_releases_them(
        self, store: RedisStore
    ) -> None:
        await submit(store, Chain(Group(t.message(0), t.message(1)), t.message(2)), callbacks=True)
        f0 = store.sync.fail(WF, 0, ("t", "ValueError", "boom"), [], TOKEN)
        f1 = store.sync.fail(WF, 1, ("t", "KeyError", "k"), [], TOKEN)
        assert (f0.state, f0.released) == (State.FAILED, ("f",))
        assert f1.released == ()
        meta, _ = await store.aio().meta(WF) or ({}, 0)
        assert (
            meta[MetaField.FAILED_NODE],
            meta[MetaField.EXC_TYPE],
            meta[MetaField.EXC_MESSAGE],
            meta[MetaField.FAILED_COUNT],
        ) == (
            "0",
            "ValueError",
            "boom",
            "2",
        )
        first, second = (
            await store.aio().control("retry", WF, []),
            await store.aio().control("retry", WF, []),
        )
        assert first.status == 1
        assert sorted(first.released) == [0, 1]
        assert second.status == 0
        assert second.state is State.RUNNING

    async def test_cancel_after_success_is_a_no_op(self, store: RedisStore) -> None:
        await submit(store, t.message(0))
        store.sync.complete(WF, 0, None, [], None, TOKEN)
        done = await store.aio().control("cancel", WF, [])
        assert (done.status, done.state) == (0, State.SUCCEEDED)

    async def test_reconcile_hands_out_stale_ready_entries_once_per_period(
        self, store: RedisStore
    ) -> None:
        await submit(store, Group(t.message(0), t.message(1)))
        rec = store.sync.reconcile(WF, 0, 100, [])
        assert sorted(rec.released) == [0, 1]
        assert store.sync.reconcile(WF, 60_000, 100, []).released == ()
        store.sync.claim(WF, 0, "m", [], TOKEN)
        assert store.sync.reconcile(WF, 0, 100, []).released == (1,)


class TestMemoryTwin:
    async def test_memory_store_answers_like_the_scripts(self) -> None:
        mem = MemoryStore()
        up = build_upload(
            WF,
            compile(Chain(Group(t.message(0), t.message(1)), t.message(2))),
            direct=False,
            retention_ms=1,
            now_ms=0,
            token=TOKEN,
        )
        started = await mem.aio().submit(WF, up, [])
        assert started.released == (0, 1)
        assert mem.complete(WF, 0, None, [], None, TOKEN).released == ()
        assert mem.complete(WF, 0, None, [], None, TOKEN).status == 0
        assert mem.complete(WF, 1, None, [], None, TOKEN).released == (2,)
