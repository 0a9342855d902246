"""Observability: node_started events, report_progress, running nodes, names and labels."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from aioworkflow import (
    Chain,
    Group,
    Progress,
    RunningNode,
    State,
    Workflow,
    report_progress,
)
from aioworkflow.errors import ConfigurationError

if TYPE_CHECKING:
    from aioworkflow import Event, WorkflowHandle
    from tests.conftest import Env


async def until(predicate: Any) -> None:
    deadline = time.monotonic() + 20
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def all_events(handle: WorkflowHandle) -> list[Event]:
    return [e async for e in handle.events(follow=False)]


class TestNodeStarted:
    async def test_every_node_logs_started_then_succeeded_with_its_attempt(self, env: Env) -> None:
        tries: dict[int, int] = {}
        lock = threading.Lock()

        def flaky(label: int) -> None:
            with lock:
                tries[label] = tries.get(label, 0) + 1
                first = tries[label] == 1
            if label == 1 and first:
                raise RuntimeError("first attempt fails")

        actor = env.actor(
            flaky, actor_name=f"flaky_{env.name}", max_retries=2, min_backoff=10, max_backoff=20
        )
        env.worker()
        canvas = Chain(actor.message(0), Group(actor.message(1), actor.message(2)))
        handle = await Workflow(canvas).run()
        assert (await handle.wait(timeout=30)).state is State.SUCCEEDED
        events = await all_events(handle)
        for node in (0, 1, 2):
            mine = [e for e in events if e.node == node and e.kind != "node_released"]
            kinds = [e.kind for e in mine]
            attempts = [e.attempt for e in mine if e.kind == "node_started"]
            if node == 1:  # failed once, retried by dramatiq: started twice, succeeded once
                assert kinds == ["node_started", "node_started", "node_succeeded"]
                assert attempts == [1, 2]
            else:
                assert kinds == ["node_started", "node_succeeded"]
                assert attempts == [1]
        position = {(e.kind, e.node): i for i, e in enumerate(events)}
        assert position[("node_succeeded", 0)] < position[("node_started", 2)]


class TestProgressAndRunningNodes:
    async def test_a_running_node_shows_with_its_actor_attempt_and_progress(self, env: Env) -> None:
        gate = threading.Event()

        def slow(label: int) -> None:
            report_progress(3, 10, "three of ten")
            assert gate.wait(30)

        actor = env.actor(slow, actor_name=f"slow_{env.name}", max_retries=0)
        env.worker()
        before = time.time() * 1000
        handle = await Workflow(Group(actor.message(0)), name="nightly", labels={"t": "a"}).run()

        async def progressed() -> bool:
            st = await handle.status()
            return bool(st.running_nodes) and st.running_nodes[0].progress is not None

        await until(progressed)
        status = await handle.status()
        (running,) = status.running_nodes
        assert isinstance(running, RunningNode)
        assert running.node == 0
        assert running.actor == f"slow_{env.name}"
        assert running.attempt == 1
        assert running.started is not None
        assert before - 1000 <= running.started <= time.time() * 1000 + 1000
        assert running.progress == Progress(done=3, total=10, note="three of ten")
        assert status.running == 1
        assert (status.name, dict(status.labels)) == ("nightly", {"t": "a"})
        gate.set()
        final = await handle.wait(timeout=30)
        assert final.running_nodes == ()
        assert (final.name, dict(final.labels)) == ("nightly", {"t": "a"})
        assert (await handle.status()).running_nodes == ()

    async def test_progress_from_an_async_actor_reaches_the_store(self, env: Env) -> None:
        async def fetch(label: int) -> None:
            report_progress(1, 2)
            await asyncio.sleep(0)
            report_progress(2, 2, "done")

        actor = env.actor(fetch, actor_name=f"fetch_{env.name}")
        env.worker()
        handle = await Workflow(Chain(actor.message(0))).run()
        await handle.wait(timeout=30)
        events = await all_events(handle)
        reports = [e.progress for e in events if e.kind == "node_progress"]
        assert reports, "no node_progress event"
        assert reports[-1] == Progress(done=2, total=2, note="done")  # the final value lands
        kinds = [e.kind for e in events if e.node == 0 and e.kind != "node_released"]
        assert kinds[0] == "node_started"
        assert kinds[-1] == "node_succeeded"  # progress comes before completion

    async def test_100000_reports_make_a_handful_of_writes(self, env: Env) -> None:
        def busy(label: int) -> None:
            for i in range(100_000):
                report_progress(i + 1, 100_000)

        actor = env.actor(busy, actor_name=f"busy_{env.name}")
        env.worker()
        t0 = time.monotonic()
        handle = await Workflow(Chain(actor.message(0))).run()
        await handle.wait(timeout=60)
        elapsed = time.monotonic() - t0
        reports = [e.progress for e in await all_events(handle) if e.kind == "node_progress"]
        # at most one write per 0.25 s, plus the first and the final flush
        assert 1 <= len(reports) <= elapsed / 0.25 + 2, (len(reports), elapsed)
        assert reports[-1] == Progress(done=100_000, total=100_000)

    def test_outside_a_workflow_node_it_does_nothing(self) -> None:
        report_progress(1, 2, "ignored")  # no error, no store

    @pytest.mark.parametrize(
        ("args", "match"),
        [
            ((float("nan"),), "finite"),
            (("1",), "number"),
            ((1, float("inf")), "finite"),
            ((True,), "number"),
            ((1, None, 5), "string"),
        ],
    )
    def test_bad_reports_raise_configuration_error(self, args: tuple[Any, ...], match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            report_progress(*args)


class TestNamesAndLabels:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"name": ""},
            {"name": "x" * 201},
            {"name": 5},
            {"labels": {"k": 1}},
            {"labels": {1: "v"}},
            {"labels": {"": "v"}},
            {"labels": {"a=b": "v"}},
            {"labels": {"k" * 65: "v"}},
            {"labels": {"k": "v" * 201}},
            {"labels": {f"k{i}": "v" for i in range(33)}},
            {"labels": ["k", "v"]},
        ],
    )
    def test_bad_names_and_labels_are_configuration_errors(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ConfigurationError):
            Workflow(Chain(), **kwargs)

    async def test_name_and_labels_are_kept_in_status(self, env: Env) -> None:
        handle = await Workflow(Chain(), name="empty", labels={"b": "2", "a": "1"}).run()
        status = await handle.wait(timeout=30)
        assert status.name == "empty"
        assert dict(status.labels) == {"a": "1", "b": "2"}
        plain = await (await Workflow(Chain()).run()).wait(timeout=30)
        assert (plain.name, dict(plain.labels)) == (None, {})
