"""No partial effects: a script whose precondition fails writes nothing (real Redis).

For each worker script (claim, complete, fail) every precondition is made to fail in turn: no
workflow, a wrong or missing token, node indices of every bad kind, a wrong state, and each
key of a live workflow missing (as after an eviction). A snapshot of every key in the database
(TYPE, DUMP or content, PTTL: the workflow's keys and dramatiq's queue keys; XADD counts as a write) is
taken before and compared after. The one documented exception is a missing key: the workflow
then ends FAILED (``Op.LOSE``: exc type ``StateLost``, no actor, ``on_failure`` once) and nothing
else is written. The MemoryStore twin rejects the same deliveries the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, MemoryStore, RedisStore, State, Workflow, compile
from aioworkflow._dramatiq import queue_keys
from aioworkflow._keys import PARTS, keys_of
from aioworkflow._machine import STATE_LOST, ClaimCode, MetaField, Outcome, RejectReason
from aioworkflow._protocol import ScriptCall, ScriptName
from aioworkflow._upload import Callback, Ref, build_upload, parse_ref
from aioworkflow.errors import ScriptError
from tests.test_control import drain
from tests.test_hostile_input import gate
from tests.test_runtime import declare_task, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis

    from tests.conftest import Env

WF = "npe"
_broker = StubBroker()


@dramatiq.actor(broker=_broker)
def t(label: Any) -> None:
    """A task for canvases (never run here)."""


Snapshot = dict[bytes, tuple[bytes, Any, int]]


def content(client: redis.Redis, key: bytes, kind: bytes) -> Any:
    """A key's value in a canonical form. DUMP itself is not: a read of a hash may take an
    incremental rehash step, which changes the order DUMP serializes its fields in."""
    if kind == b"hash":
        return sorted(client.hgetall(key).items())
    if kind == b"set":
        return sorted(client.smembers(key))
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    return client.dump(key)  # strings, lists, streams: deterministic


def snapshot(client: redis.Redis) -> Snapshot:
    """TYPE, content and PTTL of every key in the database."""
    out: Snapshot = {}
    for key in client.scan_iter(count=1000):
        kind: bytes = client.type(key)  # type: ignore[assignment]
        out[key] = (kind, content(client, key, kind), client.pttl(key))
    return out


def assert_unchanged(before: Snapshot, after: Snapshot) -> None:
    assert set(after) == set(before), "keys appeared or vanished"
    for key, (kind, dump, ttl) in before.items():
        kind2, dump2, ttl2 = after[key]
        assert (kind2, dump2) == (kind, dump), f"{key!r} was written"
        # a TTL only ever counts down: any PEXPIRE/PERSIST would show
        assert (ttl2 < 0) == (ttl < 0), f"the TTL of {key!r} was set or removed"
        assert ttl2 <= ttl, f"the TTL of {key!r} was extended"


@pytest.fixture
async def store(redis_client: redis.Redis, redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(url=redis_url, retention=60)
    yield s
    await s.aclose()
    s.close()


async def running(store: RedisStore, *, direct: bool = True) -> tuple[str, list[str]]:
    """A started three-node chain with callbacks; node 0 released. Returns (token, queue keys)."""
    cb = Callback("cb", "default", (), {}, {})
    up = build_upload(
        WF,
        compile(Chain(t.message(0), t.message(1), t.message(2))),
        direct=direct,
        on_success=cb,
        on_failure=cb,
        retention_ms=60_000,
        now_ms=0,
    )
    qkeys = queue_keys("dramatiq", up.slots) if direct else []
    await store.aio().submit(WF, up, qkeys)
    return up.token, qkeys


def run(store: RedisStore, script: ScriptName, args: tuple[Any, ...], qkeys: list[str]) -> Any:
    keys = keys_of(WF) if script is ScriptName.CLAIM else (*keys_of(WF), *qkeys)
    return store.sync._run(ScriptCall(script, tuple(keys), args))  # pyright: ignore[reportPrivateUsage]


def calls(node: Any, token: str) -> dict[ScriptName, tuple[Any, ...]]:
    return {
        ScriptName.CLAIM: (WF, node, "m1", token),
        ScriptName.COMPLETE: (WF, node, b"", "0", token),
        ScriptName.FAIL: (WF, node, "t", "E", "boom", token),
    }


SCRIPTS = [ScriptName.CLAIM, ScriptName.COMPLETE, ScriptName.FAIL]
BAD_NODES = ["3", "4", "1000000", "100000000", "-1", "1.0", "1e6", "01", "", "x", " 1", "s1"]


class TestRejectedWritesNothing:
    @pytest.mark.parametrize("script", SCRIPTS)
    async def test_no_workflow(
        self, store: RedisStore, redis_client: redis.Redis, script: Any
    ) -> None:
        before = snapshot(redis_client)
        reply = run(store, script, calls("0", "")[script], [])
        assert reply[0] == (ClaimCode.MISSING if script is ScriptName.CLAIM else Outcome.MISSING)
        assert_unchanged(before, snapshot(redis_client))

    @pytest.mark.parametrize("script", SCRIPTS)
    @pytest.mark.parametrize("token", ["", "0" * 16, "wrong"], ids=["none", "zeros", "wrong"])
    async def test_wrong_token(
        self, store: RedisStore, redis_client: redis.Redis, script: Any, token: str
    ) -> None:
        _, qkeys = await running(store)
        before = snapshot(redis_client)
        reply = run(store, script, calls("0", token)[script], qkeys)
        rejected = ClaimCode.REJECTED if script is ScriptName.CLAIM else Outcome.REJECTED
        assert reply[0] == rejected
        assert RejectReason.TOKEN.encode() in reply
        assert_unchanged(before, snapshot(redis_client))

    @pytest.mark.parametrize("script", SCRIPTS)
    @pytest.mark.parametrize("node", BAD_NODES)
    async def test_bad_node_index(
        self, store: RedisStore, redis_client: redis.Redis, script: Any, node: str
    ) -> None:
        token, qkeys = await running(store)
        before = snapshot(redis_client)
        reply = run(store, script, calls(node, token)[script], qkeys)
        rejected = ClaimCode.REJECTED if script is ScriptName.CLAIM else Outcome.REJECTED
        assert reply[0] == rejected
        assert_unchanged(before, snapshot(redis_client))

    async def test_a_bad_pipe_node_of_a_claim(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        token, _ = await running(store)
        before = snapshot(redis_client)
        # ARGV 5 is the attempt (issue 18); the piped nodes follow
        reply = run(store, ScriptName.CLAIM, (WF, "0", "m1", token, "1", "7"), [])
        assert reply[0] == ClaimCode.REJECTED
        assert_unchanged(before, snapshot(redis_client))

    async def test_a_bad_store_flag_of_a_completion(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        token, qkeys = await running(store)
        before = snapshot(redis_client)
        reply = run(store, ScriptName.COMPLETE, (WF, "0", b"", "2", token), qkeys)
        assert reply[0] == Outcome.REJECTED
        assert_unchanged(before, snapshot(redis_client))

    @pytest.mark.parametrize("script", SCRIPTS)
    async def test_wrong_state_cancelled(
        self, store: RedisStore, redis_client: redis.Redis, script: Any
    ) -> None:
        # a node that was never released of a cancelled workflow: nothing to do
        token, qkeys = await running(store)
        await store.aio().control("cancel", WF, qkeys)
        before = snapshot(redis_client)
        reply = run(store, script, calls("2", token)[script], qkeys)
        if script is ScriptName.CLAIM:
            assert reply[0] == ClaimCode.ENDED
            assert_unchanged(before, snapshot(redis_client))


class TestLostState:
    @pytest.mark.parametrize("script", SCRIPTS)
    @pytest.mark.parametrize("part", ["cnt", "off", "succ", "dag", "done", "tpl"])
    async def test_a_missing_key_fails_the_workflow_and_writes_nothing_else(
        self, store: RedisStore, redis_client: redis.Redis, script: Any, part: str
    ) -> None:
        token, qkeys = await running(store)
        # node 0 succeeded (so done exists), node 1 released and running
        assert store.sync.claim(WF, 0, "m0", [], token).run
        assert store.sync.complete(WF, 0, None, qkeys, None, token).status is Outcome.APPLIED
        assert store.sync.claim(WF, 1, "m1", [], token).run
        key = keys_of(WF)[PARTS.index(part)]
        redis_client.delete(key)
        before = snapshot(redis_client)
        args = {
            ScriptName.CLAIM: (WF, "1", "m1", token),
            ScriptName.COMPLETE: (WF, "1", b"", "0", token),
            ScriptName.FAIL: (WF, "1", "t", "E", "boom", token),
        }[script]
        reply = run(store, script, args, qkeys)
        after = snapshot(redis_client)
        if part == "tpl" and script is ScriptName.CLAIM:
            # a claim pushes nothing: it does not need the templates
            assert reply[0] == ClaimCode.RUN
            return
        if script is ScriptName.CLAIM:
            # a claim has no queue keys to send on_failure with: it writes nothing, and the
            # worker runs fail.lua for the node, which applies the transition
            assert reply[0] == ClaimCode.LOST, reply
            assert_unchanged(before, after)
            script, args = ScriptName.FAIL, (WF, "1", "", "", "", token)
            reply = run(store, script, args, qkeys)
            after = snapshot(redis_client)
        assert reply[0] == Outcome.LOST, reply
        raw: dict[bytes, bytes] = redis_client.hgetall(keys_of(WF).meta)  # type: ignore[assignment]
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        assert meta[MetaField.STATE] == State.FAILED
        assert meta[MetaField.EXC_TYPE] == STATE_LOST
        assert meta[MetaField.FAILED_ACTOR] == ""
        assert key in meta[MetaField.EXC_MESSAGE]
        assert meta[MetaField.SUCCEEDED] == "1"
        # only the documented transition was written: meta, the two event streams, and the
        # on_failure push (direct mode: the queue keys) when its template is still there;
        # every key got its retention TTL
        allowed = {keys_of(WF).meta, keys_of(WF).ev, keys_of(WF).st, *qkeys}
        for k, (kind, dump, _ttl) in before.items():
            name = k.decode()
            if name not in allowed:
                assert after[k][:2] == (kind, dump), f"{name} was written"
        pushed = after[qkeys[0].encode()][1] != before[qkeys[0].encode()][1]
        assert pushed == (part != "tpl")
        if part == "tpl":  # an empty tpl hash is normal once every node has been pushed
            return
        # a second call finds it FAILED and lost: it writes nothing more
        again = snapshot(redis_client)
        reply = run(store, script, args, qkeys)
        assert reply[0] == Outcome.LOST
        assert_unchanged(again, snapshot(redis_client))

    async def test_the_lost_workflow_never_succeeds(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        token, qkeys = await running(store)
        redis_client.delete(keys_of(WF).off)
        assert store.sync.claim(WF, 0, "m0", [], token).code is ClaimCode.LOST
        for node in (0, 1, 2):
            done = store.sync.complete(WF, node, None, qkeys, None, token)
            assert done.state is State.FAILED
        status = await store.aio().meta(WF)
        assert status is not None
        assert status[0][MetaField.STATE] == State.FAILED


class TestMemoryTwin:
    async def test_memory_rejects_the_same_deliveries(self) -> None:
        mem = MemoryStore()
        up = build_upload(
            WF,
            compile(Chain(t.message(0), t.message(1))),
            direct=False,
            retention_ms=60_000,
            now_ms=0,
        )
        await mem.aio().submit(WF, up, [])
        for node in (2, -1, True, 1.0, "1"):
            assert mem.claim(WF, node, "m", [], up.token).code is ClaimCode.REJECTED  # type: ignore[arg-type]
            assert mem.complete(WF, node, None, [], None, up.token).status is Outcome.REJECTED  # type: ignore[arg-type]
            assert mem.fail(WF, node, ("t", "E", "x"), [], up.token).status is Outcome.REJECTED  # type: ignore[arg-type]
        assert mem.claim(WF, 0, "m", [], "").code is ClaimCode.REJECTED
        assert mem.complete(WF, 0, None, [], None, "x").status is Outcome.REJECTED
        assert mem.fail(WF, 0, ("t", "E", "x"), [], "x").status is Outcome.REJECTED
        status = await mem.aio().meta(WF)
        assert status is not None
        assert (status[0][MetaField.SUCCEEDED], status[0][MetaField.FAILED_COUNT]) == ("0", "0")
        assert mem.claim(WF, 0, "m", [], up.token).run


class TestControlScripts:
    @pytest.mark.parametrize("op", ["resume", "retry"])
    async def test_a_missing_template_of_a_node_to_release_changes_nothing_but_the_state(
        self, store: RedisStore, redis_client: redis.Redis, op: str
    ) -> None:
        token, qkeys = await running(store)
        if op == "resume":
            await store.aio().control("pause", WF, qkeys)
            assert store.sync.claim(WF, 0, "m0", [], token).code is ClaimCode.HELD
        else:
            assert store.sync.claim(WF, 0, "m0", [], token).run
            store.sync.fail(WF, 0, ("t", "E", "boom"), qkeys, token)
        redis_client.hdel(keys_of(WF).tpl, "0")
        before = snapshot(redis_client)
        done = await store.aio().control(op, WF, qkeys)
        assert done.status is Outcome.LOST
        assert done.state is State.FAILED
        assert keys_of(WF).tpl in done.reason
        after = snapshot(redis_client)
        if op == "retry":  # FAILED already: nothing at all is written
            assert_unchanged(before, after)
        else:  # PAUSED -> FAILED (StateLost), the held node stays held
            held = keys_of(WF).held.encode()
            assert after[held][:2] == before[held][:2]
            assert redis_client.hget(keys_of(WF).meta, MetaField.EXC_TYPE) == STATE_LOST.encode()

    @pytest.mark.parametrize(
        "args",
        [
            ("bogus", 0, 0),
            ("first", -1, 0),
            ("first", "x", 0),
            ("first", 0, 5),
            ("first", 0, "1.0"),
        ],
    )
    async def test_start_validates_its_arguments_before_writing(
        self, store: RedisStore, redis_client: redis.Redis, args: tuple[Any, ...]
    ) -> None:
        await running(store)
        before = snapshot(redis_client)
        with pytest.raises(ScriptError, match=r"start\.lua"):
            run(store, ScriptName.START, (WF, *args), [])
        assert_unchanged(before, snapshot(redis_client))


class TestEvictedEndToEnd:
    async def test_a_workflow_whose_keys_were_evicted_fails_with_state_lost(self, env: Env) -> None:
        if isinstance(env.store, MemoryStore):
            pytest.skip("a MemoryStore holds a workflow in one object: nothing can be evicted")
        # Given a running two-node chain whose first node is in flight
        g, running_, go, _ = gate(env)
        t2 = declare_task(env)
        failed_cb = declare_task(env, "failed")
        succeeded_cb = declare_task(env, "succeeded")
        env.worker()
        handle = await Workflow(
            Chain(g.message("first"), t2.message("last")),
            on_success=succeeded_cb.message("ok"),
            on_failure=failed_cb.message("ko"),
        ).run()
        await wait_for(running_.is_set)
        # When every key but meta is evicted (as maxmemory-policy allkeys-lru did)
        keys = keys_of(handle.id)
        env.store.client.delete(*(k for k in keys if k != keys.meta))
        go.set()
        # Then the workflow ends FAILED with StateLost, on_failure once, never SUCCEEDED
        final = await handle.wait(timeout=30)
        assert final.state is State.FAILED
        assert (final.exc_type, final.failed_actor) == (STATE_LOST, "")
        assert final.exc_message is not None
        assert "missing" in final.exc_message
        await drain(env)
        labels = sorted(map(str, env.rec.labels()))
        assert "last" not in labels
        assert "ok" not in labels
        # on_failure once; in direct mode its template was evicted too, so it cannot be sent
        assert labels.count("ko") == (0 if env.name == "redis" else 1), labels


class TestSubmit:
    @pytest.mark.parametrize("args", [("tok", "x"), ("tok", 0), ("tok", "1.5"), ("", 1000)])
    async def test_submit_validates_its_arguments_before_writing(
        self, store: RedisStore, redis_client: redis.Redis, args: tuple[Any, ...]
    ) -> None:
        before = snapshot(redis_client)
        with pytest.raises(ScriptError, match=r"submit\.lua"):
            run(store, ScriptName.SUBMIT, (WF, *args), [])
        assert_unchanged(before, snapshot(redis_client))


class TestPreviousVersion:
    async def test_a_workflow_stored_without_a_token_takes_messages_without_one(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        # Given a workflow as the previous version stored it: no token in its meta
        token, qkeys = await running(store, direct=False)
        redis_client.hdel(keys_of(WF).meta, MetaField.MSG_TOKEN)
        # Then a message with a token is not one of its messages, one without is
        assert store.sync.claim(WF, 0, "m0", [], token).code is ClaimCode.REJECTED
        assert store.sync.claim(WF, 0, "m0", []).run
        done = store.sync.complete(WF, 0, None, qkeys)
        assert (done.status, done.released) == (Outcome.APPLIED, (1,))

    def test_refs_of_both_versions_parse(self) -> None:
        assert parse_ref(["w", 3]) == Ref("w", 3, "", piped=False)
        assert parse_ref(["w", 3, 1]) == Ref("w", 3, "", piped=True)
        assert parse_ref(["w", 3, "ab"]) == Ref("w", 3, "ab", piped=False)
        assert parse_ref(["w", "f", "ab", 1]) == Ref("w", "f", "ab", piped=True)
        for bad in (["w", True], ["w", 1.0], ["w", "1"], ["w", -1], ["w"], "w", ["w", 1, ""]):
            assert isinstance(parse_ref(bad), str), bad


class TestReconcile:
    async def test_a_stale_entry_without_its_template_fails_the_workflow_only(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        # Given a direct-mode workflow with a stale ready entry whose template is gone
        _, qkeys = await running(store)
        redis_client.zadd(keys_of(WF).ready, {"0": 0})
        redis_client.hdel(keys_of(WF).tpl, "0")
        before = snapshot(redis_client)
        # When the reconciler sweeps it
        rec = store.sync.reconcile(WF, 1, 100, qkeys)
        # Then the workflow failed (StateLost) and nothing else was written
        assert (rec.status, rec.state) == (Outcome.LOST, State.FAILED)
        after = snapshot(redis_client)
        allowed = {keys_of(WF).meta, keys_of(WF).ev, keys_of(WF).st, *qkeys}
        for k, (kind, value, _ttl) in before.items():
            if k.decode() not in allowed:
                assert after[k][:2] == (kind, value), k

    async def test_bad_arguments_write_nothing(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        _, qkeys = await running(store)
        before = snapshot(redis_client)
        with pytest.raises(ScriptError, match=r"reconcile\.lua"):
            run(store, ScriptName.RECONCILE, (WF, "x", 10), qkeys)
        assert_unchanged(before, snapshot(redis_client))
