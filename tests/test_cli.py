"""The ``aioworkflow`` command line, through ``main([...])`` and one real subprocess."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, Group, State, WithDelay, Workflow, cli as cli_module, compile
from aioworkflow._client import WorkflowHandle
from aioworkflow.cli import _watch, main
from tests.conftest import RABBITMQ_URL, make_env

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Env

_canvas_broker = StubBroker()


@dramatiq.actor(broker=_canvas_broker)
def step(label: Any, **kwargs: Any) -> None:
    """A task for the graph command's canvases (never run)."""


#: A module-level canvas for ``aioworkflow graph tests.test_cli:CANVAS``: two groups of three,
#: so one join node between them.
CANVAS = Chain(Group(*map(step.message, "abc")), Group(*map(step.message, "def")))
#: The same shape as a Workflow, and a function returning a canvas with kwargs and a delay.
WORKFLOW = Workflow(CANVAS)


def make_canvas() -> Chain:
    """A canvas factory for ``graph tests.test_cli:make_canvas``."""
    return Chain(
        step.message_with_options(args=("x",), kwargs={"n": 2}),
        WithDelay(step.message("y"), delay=1500),
    )


#: dramatiq-workflow's README example: task -> the tasks that must finish before it starts.
README_ORDER = {1: [], 2: [1], 3: [1], 4: [1], 5: [2], 6: [4], 7: [4], 8: [3, 5, 6, 7]}


@pytest.fixture
def env(redis_url: str) -> Iterator[Env]:
    redis_lib.Redis.from_url(redis_url).flushdb()
    e = make_env("redis", redis_url)
    yield e
    e.close()
    e.store.close()


@pytest.fixture
def rabbit(redis_url: str) -> Iterator[tuple[Env, str]]:
    """RabbitmqBroker + RedisStore (ready mode), on a queue of its own on the shared RabbitMQ."""
    redis_lib.Redis.from_url(redis_url).flushdb()
    e = make_env("rabbitmq", redis_url, reconcile_interval=0.05, reconcile_age=0.2)
    queue = f"cli_test_{uuid.uuid4().hex[:12]}"
    yield e, queue
    for worker in e.workers:
        worker.stop()
    e.workers.clear()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):  # leave the shared RabbitMQ clean
        e.broker.channel.queue_delete(name)  # type: ignore[attr-defined]
    e.close()
    e.store.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def gated(env: Env, **options: Any) -> tuple[Any, threading.Event, threading.Event]:
    """An actor whose runs block until ``gate`` is set; ``started`` is set when one starts."""
    gate, started = threading.Event(), threading.Event()

    def gated_task(label: Any) -> None:
        started.set()
        assert gate.wait(30)

    return env.actor(gated_task, actor_name="gated_task_cli", **options), gate, started


def held_after_pause(env: Env, workflow_id: str, gate: threading.Event) -> None:
    """Let the running first node finish (the workflow is paused) and wait for its event."""

    async def first_node_done() -> None:
        handle = WorkflowHandle(workflow_id, broker=env.broker, store=env.store)
        try:
            async for event in handle.events():
                if event.kind == "node_succeeded" and event.node == 0:
                    return
            raise AssertionError("the workflow ended without node 0 succeeding")
        finally:
            await env.store.aclose()  # its async pool belongs to this event loop

    gate.set()
    asyncio.run(asyncio.wait_for(first_node_done(), 30))


def finish_order(out: str) -> list[int]:
    match = re.search(r"^finish order: ([\d ]+)$", out, re.MULTILINE)
    assert match is not None, out
    return [int(x) for x in match.group(1).split()]


def assert_readme_order(out: str) -> None:
    order = finish_order(out)
    assert sorted(order) == list(range(1, 9))
    for task, preds in README_ORDER.items():
        assert all(order.index(p) < order.index(task) for p in preds), (task, order)
        started = out.index(f"task {task} started")
        assert all(out.index(f"task {p} finished") < started for p in preds), (task, out)


class TestDemo:
    def test_demo_runs_the_readme_example_in_dependency_order(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "demo")
        assert code == 0
        assert_readme_order(out)
        counters = re.findall(r"\[(\d)/8\]", out)
        assert counters == [str(i) for i in range(1, 9)]
        assert out.rstrip().endswith("state: SUCCEEDED  (8/8 tasks succeeded)")

    def test_demo_on_redis(self, capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
        code, out, _ = cli(capsys, "demo", "--redis", redis_url)
        assert code == 0
        assert_readme_order(out)
        assert "state: SUCCEEDED  (8/8 tasks succeeded)" in out

    def test_demo_on_unreachable_redis_is_a_one_line_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "demo", "--redis", "redis://127.0.0.1:1/0")
        assert code == 2
        assert err.startswith("aioworkflow: error: cannot reach Redis at redis://127.0.0.1:1/0")
        assert err.count("\n") == 1

    def test_python_dash_m_aioworkflow_demo(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "aioworkflow", "demo"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert_readme_order(proc.stdout)
        assert "[8/8]" in proc.stdout
        assert "state: SUCCEEDED" in proc.stdout
        assert proc.stderr == ""


class TestStatusAndWatch:
    def test_status_of_a_running_then_finished_workflow(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate, started = gated(env)
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        assert started.wait(30)
        code, out, _ = cli(capsys, "status", handle.id, "--redis", redis_url)
        assert code == 0
        assert f"workflow  {handle.id}\n" in out
        assert "state     RUNNING\n" in out
        assert "tasks     0/2 succeeded, 0 failed, 1 running\n" in out
        assert re.search(r"^started   \d{4}-\d\d-\d\dT", out, re.MULTILINE)
        assert "finished  -\n" in out
        assert "failure" not in out
        gate.set()
        handle.wait(timeout=30)
        code, out, _ = cli(capsys, "status", handle.id, "--redis", redis_url)
        assert code == 0
        assert "state     SUCCEEDED\n" in out
        assert "tasks     2/2 succeeded, 0 failed, 0 running\n" in out
        assert re.search(r"^finished  \d{4}-\d\d-\d\dT", out, re.MULTILINE)

    def test_status_url_from_the_environment(
        self,
        env: Env,
        redis_url: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        task, gate, _started = gated(env)
        gate.set()
        env.worker()
        handle = Workflow(task.message(1)).run_sync()
        handle.wait(timeout=30)
        monkeypatch.setenv("AIOWORKFLOW_REDIS_URL", redis_url)
        code, out, _ = cli(capsys, "status", handle.id)
        assert (code, "state     SUCCEEDED\n" in out) == (0, True)

    def test_watch_exits_zero_on_success(
        self,
        env: Env,
        redis_url: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        task, gate, _started = gated(env)
        env.worker()
        handle = Workflow(Group(*[task.message(i) for i in range(20)])).run_sync()
        draw = cli_module.progress_bar

        def draw_then_go(status: Any, width: int = 30) -> str:
            line = draw(status, width)
            gate.set()  # the tasks finish once watch has drawn its first line
            return line

        monkeypatch.setattr(cli_module, "progress_bar", draw_then_go)
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert code == 0
        lines = out.strip().splitlines()
        assert "0/20 succeeded" in lines[0]
        assert lines[-1] == "[" + "#" * 30 + "] 20/20 succeeded, 0 failed, 0 running  SUCCEEDED"
        assert "\r" not in out  # not a TTY: plain lines

    def test_watch_of_a_finished_workflow_returns_at_once(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate, _started = gated(env)
        gate.set()
        env.worker()
        handle = Workflow(task.message(1)).run_sync()
        handle.wait(timeout=30)
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert (code, out.count("\n")) == (0, 1)
        assert out.endswith("1/1 succeeded, 0 failed, 0 running  SUCCEEDED\n")

    def test_watch_on_a_tty_redraws_one_line_and_refreshes_without_events(self, env: Env) -> None:
        """Node starts log no event: the running count shows up through the slow refresh,
        and only then are the tasks let go (else this test times out)."""
        task, gate, _started = gated(env)
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

            def write(self, text: str) -> int:
                if not env.workers:
                    env.worker()  # the first line is drawn: now the first node may start
                if "1 running" in text:
                    gate.set()
                return super().write(text)

        out = Tty()

        async def watch() -> int:
            h = WorkflowHandle(handle.id, broker=env.broker, store=env.store)
            try:
                return await asyncio.wait_for(_watch(h, out, refresh=0.05), 30)
            finally:
                await env.store.aclose()  # its async pool belongs to this event loop

        assert asyncio.run(watch()) == 0
        text = out.getvalue()
        frames = text.split("\r")[1:]
        assert text.startswith("\r[")
        assert text.endswith("SUCCEEDED\x1b[K\n")
        # one line redrawn in place; since issue 18 a running node adds a line under it
        assert text.count("\n") == 1 + text.count("\n  node ")
        assert "0/2 succeeded, 0 failed, 0 running  RUNNING" in frames[0]
        assert any("0/2 succeeded, 0 failed, 1 running" in f for f in frames)
        assert "2/2 succeeded" in frames[-1]

    def test_watch_and_status_of_a_failed_workflow(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def broken(label: Any) -> None:
            raise RuntimeError(f"broken {label}")

        bad = env.actor(broken, actor_name="broken_cli", max_retries=0)
        env.worker()
        handle = Workflow(Chain(bad.message("x"), bad.message("y"))).run_sync()
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert code == 1
        assert "0/2 succeeded, 1 failed, 0 running  FAILED\n" in out
        assert "failure   node 0 (broken_cli): RuntimeError: broken x\n" in out
        code, out, _ = cli(capsys, "status", handle.id, "--redis", redis_url)
        assert code == 0
        assert "state     FAILED\n" in out
        assert "failure   node 0 (broken_cli): RuntimeError: broken x\n" in out


class TestControl:
    def test_pause_resume_and_no_ops(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate, started = gated(env)
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        r = ("--redis", redis_url)
        assert cli(capsys, "resume", handle.id, *r)[:2] == (
            3,
            "no-op: workflow is RUNNING, only a PAUSED workflow can be resumed\n",
        )
        assert started.wait(30)
        assert cli(capsys, "pause", handle.id, *r)[:2] == (0, "paused: workflow is now PAUSED\n")
        assert cli(capsys, "pause", handle.id, *r)[:2] == (3, "no-op: workflow already paused\n")
        held_after_pause(env, handle.id, gate)  # node 0 finishes while paused: node 1 is held
        code, out, _ = cli(capsys, "resume", handle.id, *r)
        assert (code, out) == (0, "resumed: workflow is now RUNNING, 1 node(s) released\n")
        assert handle.wait(timeout=30).state is State.SUCCEEDED
        for command in ("cancel", "retry", "resume"):
            assert cli(capsys, command, handle.id, *r)[:2] == (
                3,
                "no-op: workflow already succeeded\n",
            ), command
        assert cli(capsys, "pause", handle.id, *r)[:2] == (3, "no-op: workflow already succeeded\n")

    def test_cancel_then_watch_exits_non_zero(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate, _started = gated(env)
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        code, out, _ = cli(capsys, "cancel", handle.id, "--redis", redis_url)
        gate.set()
        assert (code, out) == (0, "cancelled: workflow is now CANCELLED\n")
        assert cli(capsys, "cancel", handle.id, "--redis", redis_url)[:2] == (
            3,
            "no-op: workflow already cancelled\n",
        )
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert code == 1
        assert out.endswith("CANCELLED\n")

    def test_retry_of_a_failed_workflow(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fixed = threading.Event()

        def flaky(label: Any) -> None:
            if not fixed.is_set():
                raise RuntimeError("not yet")

        f = env.actor(flaky, actor_name="flaky_cli", max_retries=0)
        env.worker()
        handle = Workflow(Chain(f.message(1), f.message(2))).run_sync()
        assert handle.wait(timeout=30).state is State.FAILED
        assert cli(capsys, "pause", handle.id, "--redis", redis_url)[:2] == (
            3,
            "no-op: workflow is FAILED, only a RUNNING workflow can be paused\n",
        )
        fixed.set()
        code, out, _ = cli(capsys, "retry", handle.id, "--redis", redis_url)
        assert (code, out) == (0, "retrying: workflow is now RUNNING, 1 node(s) released\n")
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert code == 0
        assert out.endswith("2/2 succeeded, 0 failed, 0 running  SUCCEEDED\n")

    @pytest.mark.parametrize("send_now", [False, True])
    def test_resume_of_a_ready_mode_workflow(
        self,
        rabbit: tuple[Env, str],
        redis_url: str,
        capsys: pytest.CaptureFixture[str],
        send_now: bool,
    ) -> None:
        """RabbitMQ workflow: held nodes go to the ready set (the reconciler sends them) or,
        with ``--broker``, straight to RabbitMQ. Never a traceback."""
        env, queue = rabbit
        task, gate, started = gated(env, queue_name=queue)
        if send_now:
            env.middleware.reconcile_interval = 0  # nobody else would send the node
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        assert started.wait(30)
        assert cli(capsys, "pause", handle.id, "--redis", redis_url)[0] == 0
        held_after_pause(env, handle.id, gate)
        extra = ["--broker", RABBITMQ_URL] if send_now else []
        code, out, err = cli(capsys, "resume", handle.id, "--redis", redis_url, *extra)
        assert code == 0
        assert out.startswith("resumed: workflow is now RUNNING, 1 node(s) released\n")
        assert ("note: 1 released node(s) wait in the ready set" in out) is not send_now
        assert "Traceback" not in err
        assert handle.wait(timeout=30).state is State.SUCCEEDED

    def test_bad_broker_url(self, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, err = cli(capsys, "retry", "x", "--redis", redis_url, "--broker", "ftp://h")
        assert (code, out) == (2, "")
        assert (
            err
            == "aioworkflow: error: --broker: expected an amqp:// or redis:// URL, got 'ftp://h'\n"
        )


class TestErrors:
    @pytest.mark.parametrize("command", ["status", "watch", "cancel", "pause", "resume", "retry"])
    def test_unknown_id_is_a_one_line_error(
        self, command: str, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        redis_lib.Redis.from_url(redis_url).flushdb()
        code, out, err = cli(capsys, command, "no-such-id", "--redis", redis_url)
        assert code == 2
        assert out == ""
        assert err == "aioworkflow: error: no workflow 'no-such-id' (never created, or expired)\n"

    @pytest.mark.parametrize("command", ["status", "watch", "cancel", "retry"])
    def test_unreachable_redis_is_a_one_line_error(
        self, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = cli(capsys, command, "x", "--redis", "redis://127.0.0.1:1/0")
        assert (code, out) == (2, "")
        assert err.startswith("aioworkflow: error: cannot reach Redis at redis://127.0.0.1:1/0: ")
        assert err.count("\n") == 1

    def test_malformed_redis_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = cli(capsys, "status", "x", "--redis", "localhost:6379")
        assert code == 2
        assert err.startswith("aioworkflow: error: --redis: ")
        assert err.count("\n") == 1


class TestGraph:
    def test_text(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:CANVAS", "--format", "text")
        assert code == 0
        dag = compile(CANVAS)
        join = next(v for v in range(dag.size) if dag.is_join(v))
        lines = out.splitlines()
        assert lines[0] == f"6 tasks, 1 joins, {dag.edge_count} edges"
        assert len(lines) == 1 + dag.size
        for v in range(dag.size):
            if dag.is_join(v):
                continue
            assert any(line.startswith(f"{v}: step({dag.node(v).args[0]!r})") for line in lines)
        firsts = [v for v in range(6) if dag.node(v).args[0] in "abc"]
        seconds = ", ".join(str(v) for v in range(6) if dag.node(v).args[0] in "def")
        for v in firsts:
            assert f"{v}: step({dag.node(v).args[0]!r}) -> {join}" in lines
        assert f"join {join} -> {seconds}" in lines

    def test_mermaid(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:CANVAS", "--format", "mermaid")
        assert code == 0
        dag = compile(CANVAS)
        join = next(v for v in range(dag.size) if dag.is_join(v))
        assert out.startswith("flowchart TD\n")
        assert f"    n{join}(( ))\n" in out
        assert out.count('["step(') == 6
        edges = re.findall(r"^    n(\d+) --> n(\d+)$", out, re.MULTILINE)
        assert sorted((int(a), int(b)) for a, b in edges) == sorted(
            (v, w) for v in range(dag.size) for w in dag.successors(v)
        )

    def test_dot(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:WORKFLOW", "--format", "dot")
        assert code == 0
        dag = compile(CANVAS)
        join = next(v for v in range(dag.size) if dag.is_join(v))
        assert out.startswith("digraph workflow {\n")
        assert out.endswith("}\n")
        assert f'    n{join} [shape=point, label=""];' in out
        assert out.count("[shape=box") == 6
        edges = re.findall(r"^    n(\d+) -> n(\d+);$", out, re.MULTILINE)
        assert len(edges) == dag.edge_count

    def test_a_function_target_with_kwargs_and_delay(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:make_canvas")
        assert code == 0
        assert out.splitlines()[1:] == ["0: step('x', n=2) -> 1", "1: step('y') +1500ms"]

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            ("tests.test_cli", "expected MODULE:ATTR, got 'tests.test_cli'"),
            ("tests.test_cli:NOPE", "tests.test_cli:NOPE: no attribute 'NOPE'"),
            ("no_such_mod:x", "cannot import 'no_such_mod': ModuleNotFoundError: "),
            ("tests.test_cli:README_ORDER", "tests.test_cli:README_ORDER is not a canvas"),
        ],
    )
    def test_bad_targets_are_one_line_errors(
        self, target: str, message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = cli(capsys, "graph", target)
        assert (code, out) == (2, "")
        assert err.startswith(f"aioworkflow: error: {message}")
        assert err.count("\n") == 1
