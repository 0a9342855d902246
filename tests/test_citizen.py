"""aioworkflow as a good citizen of dramatiq: other middleware, encoders, sync misuse, waits."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from typing import Any

import anyio
import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from aioworkflow import (
    Chain,
    ConfigurationError,
    GraphError,
    Group,
    MemoryStore,
    State,
    WithDelay,
    Workflow,
    WorkflowMiddleware,
)
from aioworkflow._compiler import compile as compile_canvas
from tests.conftest import Env, poll_until


def noop_actor(broker: dramatiq.Broker, name: str) -> Any:
    """An actor that does nothing, declared on ``broker``."""

    def noop(*args: Any, **kwargs: Any) -> None:
        pass

    return dramatiq.actor(actor_name=name, broker=broker)(noop)


class Tenant(dramatiq.Middleware):
    """An application middleware stamping a tenant id on every message it sees enqueued."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        message.options["tenant"] = f"t-{message.args[0]}"
        with self.lock:
            self.before.append(str(message.args[0]))

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        with self.lock:
            self.after.append(str(message.args[0]))


class TestOtherMiddleware:
    async def test_every_node_and_callback_goes_through_the_enqueue_hooks(self, env: Env) -> None:
        # Given an app middleware that stamps an option in before_enqueue
        tenant = Tenant()
        env.broker.add_middleware(tenant)
        env.broker.add_middleware(CurrentMessage())
        seen: dict[str, Any] = {}
        lock = threading.Lock()

        def task(label: Any, *rest: Any) -> None:
            msg = CurrentMessage.get_current_message()
            assert msg is not None
            with lock:
                seen[str(label)] = msg.options.get("tenant")

        t = env.actor(task, actor_name=f"stamped_{env.name}")
        labels = [str(i) for i in range(10)]
        canvas = Chain(t.message("0"), Group(*[t.message(x) for x in labels[1:9]]), t.message("9"))
        env.worker()
        # When a workflow with a success callback runs
        handle = await Workflow(canvas, on_success=t.message("done")).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await poll_until(lambda: "done" in seen, 10, "the success callback ran")
        # Then all 11 messages went through both hooks, and the stamp reached each actor
        assert sorted(tenant.before) == sorted([*labels, "done"])
        assert sorted(tenant.after) == sorted([*labels, "done"])
        assert seen == {x: f"t-{x}" for x in [*labels, "done"]}


class TestEncodableArguments:
    @pytest.mark.parametrize(
        "value", [datetime.datetime(2026, 1, 1), datetime.date(2026, 1, 1), uuid.uuid4(), {1, 2}]
    )
    def test_what_dramatiqs_json_encoder_refuses_is_refused_not_changed(self, value: Any) -> None:
        broker = StubBroker()
        t = noop_actor(broker, "enc_task")
        with pytest.raises(GraphError, match="cannot be encoded as JSON"):
            compile_canvas(Chain(t.message(1), t.message(value)))
        with pytest.raises(GraphError, match="cannot be encoded as JSON"):
            compile_canvas(t.message(key=[{"at": value}]))

    def test_what_it_accepts_keeps_the_value_it_would_send(self) -> None:
        import enum

        class Level(enum.IntEnum):
            HIGH = 3

        broker = StubBroker()
        t = noop_actor(broker, "enc_ok")
        dag = compile_canvas(t.message(Level.HIGH, "x", 2.5))
        assert dag.node(0).args == (3, "x", 2.5)

    async def test_run_raises_before_storing_anything(self) -> None:
        broker = StubBroker()
        store = MemoryStore()
        broker.add_middleware(WorkflowMiddleware(store))
        t = noop_actor(broker, "enc_run")
        with pytest.raises(GraphError):
            await Workflow(t.message(uuid.uuid4()), id="enc").run(broker=broker)
        assert store.sync.load("enc") is None


class TestSyncMisuse:
    def test_run_from_sync_code_raises_at_once_naming_run_sync(self) -> None:
        broker = StubBroker()
        broker.add_middleware(WorkflowMiddleware(MemoryStore()))
        t = noop_actor(broker, "sync_misuse")
        with pytest.raises(ConfigurationError, match=r"run_sync\(\)"):
            not_awaited = Workflow(t.message(1)).run(broker=broker)
            not_awaited.close()  # not reached: run() raised

    async def test_run_in_a_loop_still_returns_an_awaitable(self) -> None:
        broker = StubBroker()
        broker.add_middleware(WorkflowMiddleware(MemoryStore()))
        t = noop_actor(broker, "sync_ok")
        handle = await Workflow(t.message(1)).run(broker=broker)
        assert (await handle.status()).state is State.RUNNING

    def test_run_sync_works_from_sync_code(self) -> None:
        broker = StubBroker()
        broker.add_middleware(WorkflowMiddleware(MemoryStore()))
        t = noop_actor(broker, "sync_sync")
        assert Workflow(t.message(1)).run_sync(broker=broker).status().state is State.RUNNING

    @pytest.mark.parametrize(
        "wrong",
        [
            StubBackend(),  # type: ignore[no-untyped-call]
            RedisBackend(url="redis://127.0.0.1:1"),  # dramatiq-workflow's signature
            None,
            "redis://localhost",
            object(),
        ],
    )
    def test_the_middleware_refuses_anything_but_a_store(self, wrong: Any) -> None:
        with pytest.raises(ConfigurationError, match="needs a workflow store"):
            WorkflowMiddleware(wrong)

    def test_a_rate_limiter_backend_gets_a_hint_to_the_compat_layer(self) -> None:
        with pytest.raises(ConfigurationError, match=r"compat\.dramatiq_workflow"):
            WorkflowMiddleware(StubBackend())  # type: ignore[no-untyped-call, arg-type]


class TestWaitSteps:
    def test_a_delayed_empty_step_delays_what_follows(self) -> None:
        broker = StubBroker()
        t = noop_actor(broker, "wait_task")
        dag = compile_canvas(Chain(t.message(1), WithDelay(Chain(), delay=250), t.message(2)))
        assert len(dag) == 2
        assert dag.node(1).delay == 250
        assert dag.node(0).delay == 0
        assert dag.task_successors(0) == (1,)

    def test_waits_add_up_and_pass_through_groups_and_leading_position(self) -> None:
        broker = StubBroker()
        t = noop_actor(broker, "wait_task2")
        canvas = Chain(
            WithDelay(Chain(), delay=100),
            WithDelay(WithDelay(Group(), delay=5), delay=7),
            Group(t.message(1), WithDelay(t.message(2), delay=1)),
        )
        dag = compile_canvas(canvas)
        assert sorted(dag.node(i).delay for i in range(len(dag))) == [112, 113]
        assert len(dag.roots) == 2

    async def test_a_wait_step_holds_the_next_node_back_at_run_time(self, env: Env) -> None:
        starts: dict[str, float] = {}

        def task(label: str) -> None:
            starts[label] = time.monotonic()

        t = env.actor(task, actor_name=f"waiting_{env.name}")
        env.worker()
        handle = await Workflow(
            Chain(t.message("a"), WithDelay(Chain(), delay=600), t.message("b"))
        ).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        assert starts["b"] - starts["a"] >= 0.55


class TestEncoders:
    async def test_a_foreign_encoder_falls_back_to_ready_mode_saying_why_once(
        self, redis_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        import logging

        import redis as redis_lib
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.encoder import PickleEncoder

        from aioworkflow import RedisStore
        from aioworkflow._dramatiq import _route

        redis_lib.Redis.from_url(redis_url).flushdb()
        broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
        store = RedisStore(url=redis_url)
        broker.add_middleware(WorkflowMiddleware(store))
        t = noop_actor(broker, "pickled")
        previous = dramatiq.get_encoder()
        dramatiq.set_encoder(PickleEncoder())
        _route._explained.clear()  # pyright: ignore[reportPrivateUsage]
        try:
            with caplog.at_level(logging.WARNING, logger="aioworkflow"):
                worker = dramatiq.Worker(broker, worker_threads=2)
                worker.start()
                try:
                    handle = await Workflow(Chain(t.message(1), t.message(2))).run(broker=broker)
                    await Workflow(t.message(3)).run(broker=broker)
                    assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
                finally:
                    worker.stop()
        finally:
            dramatiq.set_encoder(previous)
            broker.close()
            await store.aclose()
            store.close()
        lines = [r.getMessage() for r in caplog.records if "ready mode" in r.getMessage()]
        assert len(lines) == 1
        assert "PickleEncoder" in lines[0]

    def test_lz4_json_encoder_reads_dramatiq_workflows_lz4_format(self) -> None:
        import lz4.frame
        from dramatiq.encoder import JSONEncoder

        from aioworkflow import LZ4JSONEncoder

        broker = StubBroker()
        t = noop_actor(broker, "lz4_old")
        message = t.message("x" * 5000, n=1)
        # dramatiq-workflow's README encoder: a bare lz4 frame of dramatiq's JSON
        legacy = lz4.frame.compress(JSONEncoder().encode(message.asdict()))
        decoded = LZ4JSONEncoder().decode(legacy)
        assert decoded["args"] == ["x" * 5000]
        assert decoded["message_id"] == message.message_id
        with pytest.raises(dramatiq.errors.DecodeError):
            LZ4JSONEncoder(max_size=1000).decode(legacy)


class TestWireSwitch:
    def test_aioworkflow_no_wire_turns_the_wire_path_off(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import redis as redis_lib

        from aioworkflow._store._scripts import SOURCES
        from aioworkflow._store._wire import WireScripts

        client = redis_lib.Redis(host="127.0.0.1", port=1)
        on = WireScripts.for_client(client, SOURCES)
        assert on is not None
        on.close()
        monkeypatch.setenv("AIOWORKFLOW_NO_WIRE", "1")
        assert WireScripts.for_client(client, SOURCES) is None
        client.close()


class TestMessageIdentity:
    async def test_results_middleware_finds_a_workflow_steps_result(
        self, env: Env, redis_url: str
    ) -> None:
        from dramatiq.results import Results
        from dramatiq.results.backends import RedisBackend as ResultsBackend

        backend = ResultsBackend(url=redis_url)
        env.broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]

        def double(x: int) -> int:
            return 2 * x

        t = env.actor(double, actor_name=f"double_{env.name}", store_results=True)
        first, second = t.message(1), t.message(2)
        env.worker()
        handle = await Workflow(Chain(first, second)).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        got = await anyio.to_thread.run_sync(lambda: second.get_result(block=True, timeout=2000))
        assert got == 4
