"""Every way dramatiq gives up on a message fails its node; nothing earlier does.

The cases the failure rules name besides plain exhausted retries (``test_control.py``):
``throws``, a time limit on the last attempt, an age limit, an unknown actor; plus a second
concurrent ``retry()`` and the middleware's position in the broker's list. Each runs in every
environment of the ``env`` fixture (memory, redis, rabbitmq).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import dramatiq
import pytest
from dramatiq.middleware import Retries
from dramatiq.worker import WorkerThread

from aioworkflow import Chain, Group, State, WithDelay, Workflow, WorkflowMiddleware
from tests.test_control import drain
from tests.test_runtime import check_order, declare_task, wait_for

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

    from tests.conftest import Env


class Expected(Exception):
    """Raised by an actor that declares ``throws=Expected``."""


async def failed_after(env: Env, canvas: Any) -> Any:
    """Run ``canvas`` with an ``on_failure`` callback; return its final status once FAILED."""
    t = declare_task(env, "cb")
    handle = await Workflow(canvas, on_failure=t.message("failed")).run()
    status = await handle.wait(timeout=30)
    assert status.state is State.FAILED, status
    await wait_for(lambda: "failed" in env.rec.labels())
    await drain(env)
    assert env.rec.labels().count("failed") == 1
    return status


class TestDramatiqGivesUp:
    async def test_throws_fails_at_the_first_attempt(self, env: Env) -> None:
        attempts: list[int] = []

        def refuse(label: Any) -> None:
            attempts.append(1)
            raise Expected(label)

        a = env.actor(refuse, actor_name=f"refuse_{env.name}", throws=Expected, max_retries=5)
        t = declare_task(env)
        env.worker()
        status = await failed_after(env, Chain(a.message("x"), t.message("after")))
        assert attempts == [1]
        assert (status.failed_node, status.exc_type, status.exc_message) == (0, "Expected", "x")
        assert "after" not in env.rec.labels()

    async def test_a_time_limit_on_the_last_attempt_fails_the_node(self, env: Env) -> None:
        attempts: list[int] = []

        def slow(label: Any) -> None:
            attempts.append(1)
            for _ in range(500):  # TimeLimit interrupts between bytecodes, not inside a sleep
                time.sleep(0.01)

        s = env.actor(
            slow, actor_name=f"slow_{env.name}", time_limit=100, max_retries=1, min_backoff=10,
            max_backoff=20,
        )  # fmt: skip
        t = declare_task(env)
        env.broker.emit_after("process_boot")  # starts TimeLimit's timer (the CLI does this)
        env.worker()
        status = await failed_after(env, Chain(s.message("x"), t.message("after")))
        assert attempts == [1, 1]  # the first timeout was retried, the second one is final
        assert status.exc_type == "TimeLimitExceeded"
        assert "after" not in env.rec.labels()

    async def test_an_expired_message_fails_its_node(self, env: Env) -> None:
        ran: list[Any] = []
        old = env.actor(lambda label: ran.append(label), actor_name=f"old_{env.name}", max_age=1)
        t = declare_task(env)
        env.worker()
        # the node's message is stamped at release and only becomes due 200 ms later, so it
        # is older than its max_age of 1 ms when a worker gets it
        canvas = Chain(t.message("first"), WithDelay(old.message("x"), delay=200))
        status = await failed_after(env, canvas)
        assert ran == []
        assert status.failed_node == 1
        assert status.exc_type  # dramatiq reports no exception for an age-limit skip
        assert status.failed_actor == f"old_{env.name}"

    async def test_an_unknown_actor_fails_its_node(self, env: Env) -> None:
        t = declare_task(env)
        ghost: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=t.queue_name, actor_name="no_such_actor", args=(), kwargs={}, options={}
        )
        env.worker()
        status = await failed_after(env, Chain(t.message("first"), ghost, t.message("after")))
        assert status.failed_node == 1
        assert status.failed_actor == "no_such_actor"
        assert status.exc_type == "ActorNotFound"
        assert env.rec.labels() == ["first", "failed"]


class TestRetry:
    async def test_concurrent_retries_run_each_failed_node_once(self, env: Env) -> None:
        broken = threading.Event()
        broken.set()
        runs: list[Any] = []  # successful runs
        t = declare_task(env)

        def fragile(label: Any) -> None:
            if broken.is_set():
                raise RuntimeError("not yet")
            runs.append(label)

        fr = env.actor(fragile, actor_name=f"fragile2_{env.name}", max_retries=0)
        env.worker()
        canvas = Chain(Group(fr.message("b1"), fr.message("b2"), t.message("c")), t.message("d"))
        handle = await Workflow(canvas).run()
        assert (await handle.wait(timeout=30)).state is State.FAILED
        failures = 0
        with anyio.fail_after(30):  # the workflow fails with b1 or b2: wait for both
            async for event in handle.events():
                failures += event.kind == "node_failed"
                if failures == 2:
                    break
        broken.clear()
        answers = await asyncio.gather(*(handle.retry() for _ in range(5)))
        assert sum(a.changed for a in answers) == 1
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        await drain(env)
        assert sorted(runs) == ["b1", "b2"]  # released once by the one retry that applied
        assert env.rec.labels().count("d") == 1


@pytest.mark.parametrize("place", ["first", "last"])
async def test_the_middleware_works_before_or_after_retries(env: Env, place: str) -> None:
    # Given the workflow middleware first in the broker's list (before Retries) or last
    mw = env.middleware
    env.broker.middleware.remove(mw)
    env.broker.middleware.insert(0 if place == "first" else len(env.broker.middleware), mw)
    positions = [type(m) for m in env.broker.middleware]
    assert (positions.index(WorkflowMiddleware) < positions.index(Retries)) == (place == "first")
    attempts: list[Any] = []
    t = declare_task(env)

    def twice_then_ok(label: Any) -> None:
        attempts.append(label)
        if attempts.count(label) <= 2:
            raise RuntimeError("transient")
        t.fn(label)

    f = env.actor(
        twice_then_ok, actor_name=f"twice_{env.name}", max_retries=3, min_backoff=10,
        max_backoff=20,
    )  # fmt: skip
    env.worker()
    # When a node fails twice, then succeeds, inside a chain
    canvas = Chain(t.message("a"), Group(f.message("b"), t.message("c")), t.message("d"))
    handle = await Workflow(canvas).run()
    # Then the retried attempts are not failures, and everything runs once in order
    assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
    assert attempts == ["b", "b", "b"]
    check_order(env, canvas, ["a", "b", "c", "d"])


class ThreadProbe(dramatiq.Middleware):
    """Records which thread runs each post-processing hook, per delivery."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: dict[tuple[str, str], threading.Thread] = {}

    def _record(self, hook: str, message: MessageProxy) -> None:
        with self.lock:
            self.threads[hook, message.message_id] = threading.current_thread()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._record("after", message)

    def before_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._record("final", message)

    def before_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._record("final", message)


async def test_dramatiq_post_processes_a_delivery_on_the_thread_that_ran_it(env: Env) -> None:
    """WorkflowMiddleware hands a deferred completion or a failure from its after-hook to
    before_ack/before_nack in a thread-local, and the ack shortcut's mark to the consumer's
    ack: both rely on dramatiq running them on the worker thread that processed the message."""
    # Given a probe of the hooks' threads, and a workflow whose last node fails for good
    probe = ThreadProbe()
    env.broker.add_middleware(probe)
    t = declare_task(env)

    def refuse(label: Any) -> None:
        raise Expected(label)

    a = env.actor(refuse, actor_name=f"refuse_{env.name}", throws=Expected)
    env.worker()
    # When it runs: five successes (acked) and one failure (nacked)
    canvas = Chain(t.message("a"), Group(*[t.message(i) for i in range(4)]), a.message("x"))
    status = await failed_after(env, canvas)
    assert status.failed_node == 5
    # Then each delivery's before_ack/before_nack ran on the worker thread that processed it
    with probe.lock:
        ran = {mid: th for (hook, mid), th in probe.threads.items() if hook == "after"}
        final = {mid: th for (hook, mid), th in probe.threads.items() if hook == "final"}
    assert len(ran) >= 7, ran  # six nodes and the on_failure callback
    assert final.keys() >= ran.keys()
    for mid, thread in ran.items():
        assert isinstance(thread, WorkerThread), thread
        assert final[mid] is thread, f"{mid}: processed on {thread}, acked on {final[mid]}"
