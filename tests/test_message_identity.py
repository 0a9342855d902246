"""A workflow step keeps the ``message_id`` its user created, in every mode.

Every push of a node carries the user's id, so the claim tells a re-send (reconciler, retry,
resume) from a redelivery by the ref's per-push id instead: these tests check that a re-send
of a running node still runs once, that ``retry()`` re-runs a failed node under the same id,
and that ``max_age`` still counts from the node's enqueue, not from the message's creation.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import dramatiq
import orjson
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, State, Workflow, _codec, compile
from aioworkflow._dag import Dag
from aioworkflow._keys import ACTIVE, keys_of
from aioworkflow._upload import OPTION, Ref, message_fields, parse_ref, piped_ref, template
from aioworkflow.errors import DecodeError
from tests.test_runtime import declare_task, wait_for

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

    from tests.conftest import Env


class Seen(dramatiq.Middleware):
    """Every delivery a worker ran or skipped: (what, actor, message id, parsed ref)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str, Ref | str]] = []

    def _add(self, what: str, message: MessageProxy) -> None:
        ref = parse_ref(message.options.get(OPTION))
        with self.lock:
            self.log.append((what, message.actor_name, message.message_id, ref))

    def after_process_message(
        self, broker: dramatiq.Broker, message: MessageProxy, *, result: Any = None,
        exception: BaseException | None = None,
    ) -> None:  # fmt: skip
        self._add("ran", message)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._add("skipped", message)

    def of(self, actor: str) -> list[tuple[str, str, Ref | str]]:
        with self.lock:
            return [(what, mid, ref) for what, name, mid, ref in self.log if name == actor]


def _push(ref: Ref | str) -> str:
    assert isinstance(ref, Ref), ref
    return ref.push


def _make_stale(env: Env, redis_url: str, workflow_id: str, node: int) -> None:
    """Put ``node`` back in the ready set as released long ago and never claimed: what the
    reconciler re-sends (a worker died between the store and the broker)."""
    if env.name == "memory":
        env.store._wfs[workflow_id].ready[node] = 0  # no public seam for this
        return
    client = redis.Redis.from_url(redis_url)
    client.zadd(keys_of(workflow_id).ready, {str(node): 0})
    client.zadd(ACTIVE, {workflow_id: 0})
    client.close()


class TestMessageIdentity:
    async def test_a_node_resent_while_its_first_copy_runs_still_runs_once(
        self, env: Env, redis_url: str
    ) -> None:
        seen = Seen()
        env.broker.add_middleware(seen)
        gate = threading.Event()
        started: list[str] = []

        def slow(label: str) -> None:
            started.append(label)
            assert gate.wait(30)

        s = env.actor(slow, actor_name=f"slow_{env.name}")
        t = declare_task(env)
        first, middle = t.message("a"), s.message("b")
        env.worker(threads=4)
        handle = await Workflow(Chain(first, middle, t.message("c"))).run()
        await wait_for(lambda: started == ["b"], timeout=30)
        # the reconciler re-sends node 1 while its first copy runs
        _make_stale(env, redis_url, handle.id, 1)
        assert env.middleware.reconcile_once(env.broker) == 1
        await wait_for(lambda: [w for w, _, _ in seen.of(s.actor_name)] == ["skipped"], 30)
        gate.set()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        assert started == ["b"]
        log = seen.of(s.actor_name)
        assert [what for what, _, _ in log] == ["skipped", "ran"]
        # both copies carry the user's id; only their push ids tell them apart
        assert [mid for _, mid, _ in log] == [middle.message_id] * 2
        assert _push(log[0][2]) != _push(log[1][2])

    async def test_retry_reruns_a_failed_node_under_the_same_message_id(self, env: Env) -> None:
        seen = Seen()
        env.broker.add_middleware(seen)
        broken = {"yes": True}

        def fragile(label: str) -> None:
            if broken["yes"]:
                raise RuntimeError("not yet")

        fr = env.actor(fragile, actor_name=f"fragile_{env.name}", max_retries=0)
        t = declare_task(env)
        step = fr.message("b")
        done = t.message("done")
        env.worker()
        handle = await Workflow(Chain(t.message("a"), step), on_success=done).run()
        assert (await handle.wait(timeout=30)).state is State.FAILED
        broken["yes"] = False
        assert (await handle.retry()).changed
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await wait_for(lambda: len(seen.of(t.actor_name)) == 2, timeout=30)
        log = seen.of(fr.actor_name)
        assert [what for what, _, _ in log] == ["ran", "ran"]
        assert [mid for _, mid, _ in log] == [step.message_id] * 2
        assert _push(log[0][2]) != _push(log[1][2])
        # the on_success callback keeps its id too
        assert [mid for _, mid, _ in seen.of(t.actor_name)][-1] == done.message_id

    async def test_a_retried_piped_delivery_keeps_its_push_id_and_runs_again(
        self, env: Env
    ) -> None:
        seen = Seen()
        env.broker.add_middleware(seen)
        calls: list[tuple[Any, ...]] = []

        def flaky(*args: Any) -> None:
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("first attempt")

        fl = env.actor(
            flaky, actor_name=f"flaky_{env.name}", max_retries=1, min_backoff=1, max_backoff=10
        )
        t = declare_task(env)
        env.worker()
        handle = await Workflow(Chain(t.message("a"), fl.message("b"), pipe=True)).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        # dramatiq's retry is a redelivery: the same push id, piped once, allowed to run again
        assert calls == [("b", None), ("b", None)]
        log = seen.of(fl.actor_name)
        assert [what for what, _, _ in log] == ["ran", "ran"]
        refs = [ref for _, _, ref in log]
        assert all(isinstance(r, Ref) and r.piped for r in refs)
        assert _push(refs[0]) == _push(refs[1]) != ""

    async def test_the_enqueue_hooks_see_the_ids_the_deliveries_carry(self, env: Env) -> None:
        seen = Seen()
        enqueued: list[str] = []

        class Hook(dramatiq.Middleware):
            def before_enqueue(
                self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int
            ) -> None:
                enqueued.append(message.message_id)

        env.broker.add_middleware(seen)
        env.broker.add_middleware(Hook())
        t = declare_task(env)
        a, b, done = t.message("a"), t.message("b"), t.message("done")
        env.worker()
        handle = await Workflow(Chain(a, b), on_success=done).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await wait_for(lambda: len(seen.of(t.actor_name)) == 3, timeout=30)
        users = {a.message_id, b.message_id, done.message_id}
        assert set(enqueued) == users
        assert {mid for _, mid, _ in seen.of(t.actor_name)} == users

    async def test_max_age_counts_from_the_nodes_enqueue(self, env: Env) -> None:
        ran: list[str] = []
        young = env.actor(ran.append, actor_name=f"young_{env.name}", max_age=60_000)
        # created an hour ago: expired if its creation time counted, but it is enqueued now
        old = young.message("x").copy(message_timestamp=int(time.time() * 1000) - 3_600_000)
        env.worker()
        handle = await Workflow(Chain(old)).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        assert ran == ["x"]


def _noop(x: int) -> None:
    pass


class TestStoredIds:
    def test_the_dag_keeps_each_nodes_message_id_through_encode_and_decode(self) -> None:
        broker = StubBroker()
        t = dramatiq.actor(actor_name="t", broker=broker)(_noop)
        a, b = t.message(1), t.message(2)
        dag = compile(Chain(a, b))
        assert dag.ids == (a.message_id, b.message_id)
        assert [n.message_id for n in dag.nodes] == [a.message_id, b.message_id]
        again = Dag.decode(dag.encode())
        assert again == dag
        assert again.ids == dag.ids

    def test_ids_that_are_not_canonical_uuids_are_kept_as_they_are(self) -> None:
        broker = StubBroker()
        t = dramatiq.actor(actor_name="t", broker=broker)(_noop)
        upper = str(uuid.uuid4()).upper()
        for other in ("order-17", upper, "é" * 36, " " * 36):
            a, b = t.message(1), t.message(2).copy(message_id=other)
            dag = compile(Chain(a, b))
            assert Dag.decode(dag.encode()).ids == (a.message_id, other)

    def test_a_dag_stored_without_ids_decodes_and_a_bad_id_column_is_refused(self) -> None:
        broker = StubBroker()
        t = dramatiq.actor(actor_name="t", broker=broker)(_noop)
        dag = compile(Chain(t.message(1), t.message(2)))
        doc = _codec.unpack(dag.encode())
        del doc["i"]
        old = Dag.decode(_codec.pack(doc))
        assert old.ids == ()
        assert old.node(0).message_id == ""
        for bad in (["x"], [1, 2], "xy"):
            doc["i"] = bad
            with pytest.raises(DecodeError, match="message id"):
                Dag.decode(_codec.pack(doc))

    def test_a_template_keeps_the_users_id_and_gets_a_push_id_hole(self) -> None:
        fields = message_fields('w"f', 3, "act", "q", [1], {}, {"o": 1}, "tok", 'id"1')
        body = template(fields, delayed=False)
        filled = body.replace(b"\x00I", b"p.3.1").replace(b"\x00T", b"5")
        msg = orjson.loads(filled)
        assert msg["message_id"] == 'id"1'
        assert msg["options"]["redis_message_id"] == "p.3.1"
        assert msg["options"]["o"] == 1
        assert parse_ref(msg["options"][OPTION]) == Ref('w"f', 3, "tok", False, "p.3.1")
        # a legacy (tokenless) ref gets no push id, and without a user id the push id is it
        legacy = template(message_fields("wf", 0, "act", "q", [], {}, {}), delayed=False)
        msg = orjson.loads(legacy.replace(b"\x00I", b"wf.0.1").replace(b"\x00T", b"5"))
        assert msg["options"][OPTION] == ["wf", 0]
        assert msg["message_id"] == msg["options"]["redis_message_id"] == "wf.0.1"

    def test_refs_with_and_without_a_push_id(self) -> None:
        assert parse_ref(["wf", 1, "tok"]) == Ref("wf", 1, "tok", False, "")
        assert parse_ref(["wf", 1, "tok", "p"]) == Ref("wf", 1, "tok", False, "p")
        assert parse_ref(["wf", 1, "tok", "p", 1]) == Ref("wf", 1, "tok", True, "p")
        assert parse_ref(["wf", 1, "tok", 1]) == Ref("wf", 1, "tok", True, "")
        assert parse_ref(["wf", 1, "tok", ""]) == "empty push id"
        assert isinstance(parse_ref(["wf", 1, "tok", "p", "q"]), str)
        ref = parse_ref(["wf", 1, "tok", "p"])
        assert isinstance(ref, Ref)
        assert ref.claim_key("mid") == "p"
        assert piped_ref(ref) == ["wf", 1, "tok", "p", 1]
        old = parse_ref(["wf", 1, "tok"])
        assert isinstance(old, Ref)
        assert old.claim_key("mid") == "mid"
