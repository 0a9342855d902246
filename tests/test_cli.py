"""The ``aioworkflow`` command line, through ``main([...])`` and one real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, Group, State, Workflow, compile
from aioworkflow.cli import main
from tests.conftest import make_env

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Env

_canvas_broker = StubBroker()


@dramatiq.actor(broker=_canvas_broker)
def step(label: Any) -> None:
    """A task for the graph command's canvas (never run)."""


#: A module-level canvas for ``aioworkflow graph tests.test_cli:CANVAS``.
CANVAS = Chain(Group(*map(step.message, "abc")), Group(*map(step.message, "def")))

README_ORDER = {1: [], 2: [1], 3: [1], 4: [1], 5: [2], 6: [4], 7: [4], 8: [3, 5, 6, 7]}


@pytest.fixture
def env(redis_url: str) -> Iterator[Env]:
    redis_lib.Redis.from_url(redis_url).flushdb()
    e = make_env("redis", redis_url)
    yield e
    e.close()
    e.store.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class TestDemo:
    def test_demo_runs_the_readme_example_in_dependency_order(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, _ = cli(capsys, "demo")
        assert code == 0
        match = re.search(r"finish order: ([\d ]+)", out)
        assert match is not None
        order = [int(x) for x in match.group(1).split()]
        assert sorted(order) == list(range(1, 9))
        for task, preds in README_ORDER.items():
            assert all(order.index(p) < order.index(task) for p in preds), (task, order)
            started = out.index(f"task {task} started")
            assert all(out.index(f"task {p} finished") < started for p in preds)
        assert "[8/8]" in out
        assert "state: SUCCEEDED" in out

    def test_demo_on_redis(self, capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
        code, out, _ = cli(capsys, "demo", "--redis", redis_url)
        assert code == 0
        assert "state: SUCCEEDED  (8/8 tasks succeeded)" in out

    def test_python_dash_m_aioworkflow_demo(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "aioworkflow", "demo"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "finish order:" in proc.stdout
        assert "state: SUCCEEDED" in proc.stdout


class TestRemoteCommands:
    def gated(self, env: Env) -> tuple[Any, threading.Event]:
        gate = threading.Event()

        def gated_task(label: Any) -> None:
            assert gate.wait(30)

        return env.actor(gated_task, actor_name="gated_task_cli"), gate

    def test_status_of_a_running_then_finished_workflow(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate = self.gated(env)
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        code, out, _ = cli(capsys, "status", handle.id, "--redis", redis_url)
        assert code == 0
        assert "state     RUNNING" in out
        assert "0/2 succeeded" in out
        gate.set()
        handle.wait(timeout=30)
        code, out, _ = cli(capsys, "status", handle.id, "--redis", redis_url)
        assert "state     SUCCEEDED" in out
        assert "2/2 succeeded" in out

    def test_watch_exits_zero_on_success(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate = self.gated(env)
        env.worker()
        handle = Workflow(Group(*[task.message(i) for i in range(20)])).run_sync()
        threading.Timer(0.3, gate.set).start()
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert code == 0
        lines = out.strip().splitlines()
        assert "0/20 succeeded" in lines[0]
        assert lines[-1].startswith("[" + "#" * 30 + "] 20/20 succeeded")
        assert lines[-1].endswith("SUCCEEDED")

    def test_watch_exits_non_zero_on_failure_and_names_the_node(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def broken(label: Any) -> None:
            raise RuntimeError(f"broken {label}")

        bad = env.actor(broken, actor_name="broken_cli", max_retries=0)
        env.worker()
        handle = Workflow(Chain(bad.message("x"), bad.message("y"))).run_sync()
        code, out, _ = cli(capsys, "watch", handle.id, "--redis", redis_url)
        assert code == 1
        assert "FAILED" in out
        assert "node 0 (broken_cli): RuntimeError: broken x" in out

    def test_control_commands_and_their_no_ops(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate = self.gated(env)
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        assert cli(capsys, "pause", handle.id, "--redis", redis_url)[1] == (
            "pause: done, workflow is now PAUSED\n"
        )
        assert cli(capsys, "pause", handle.id, "--redis", redis_url)[1] == (
            "pause: no change, workflow is PAUSED\n"
        )
        gate.set()  # node 1 finishes while paused: node 2 is held, not started
        code, out, _ = cli(capsys, "resume", handle.id, "--redis", redis_url)
        assert code == 0
        assert out.startswith("resume: done, workflow is now RUNNING")
        assert handle.wait(timeout=30).state is State.SUCCEEDED
        code, out, _ = cli(capsys, "cancel", handle.id, "--redis", redis_url)
        assert (code, out) == (0, "cancel: no change, workflow is SUCCEEDED\n")
        assert cli(capsys, "retry", handle.id, "--redis", redis_url)[1] == (
            "retry: no change, workflow is SUCCEEDED\n"
        )

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
        fixed.set()
        code, out, _ = cli(capsys, "retry", handle.id, "--redis", redis_url)
        assert (code, out) == (0, "retry: done, workflow is now RUNNING, 1 node(s) released\n")
        assert handle.wait(timeout=30).state is State.SUCCEEDED

    @pytest.mark.parametrize("command", ["status", "watch", "cancel", "pause", "resume", "retry"])
    def test_unknown_id_is_a_one_line_error(
        self, command: str, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out, err = cli(capsys, command, "no-such-id", "--redis", redis_url)
        assert code == 2
        assert out == ""
        assert err == "aioworkflow: error: no workflow 'no-such-id' (never created, or expired)\n"

    def test_unreachable_redis_is_a_one_line_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "status", "x", "--redis", "redis://127.0.0.1:1/0")
        assert code == 2
        assert err.startswith("aioworkflow: error: cannot reach Redis at redis://127.0.0.1:1/0")
        assert err.count("\n") == 1


class TestGraph:
    def test_text(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:CANVAS", "--format", "text")
        assert code == 0
        dag = compile(CANVAS)
        assert out.splitlines()[0] == "6 tasks, 1 joins, 6 edges"
        assert (dag.n_joins, dag.edge_count) == (1, 6)
        assert "0: step('a') -> 6" in out
        assert "join 6 -> 3, 4, 5" in out

    def test_mermaid(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:CANVAS", "--format", "mermaid")
        assert code == 0
        assert out.startswith("flowchart TD\n")
        assert "    n0[\"step('a')\"]" in out
        assert "    n6(( ))" in out
        assert out.count("-->") == compile(CANVAS).edge_count

    def test_dot(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = cli(capsys, "graph", "tests.test_cli:CANVAS", "--format", "dot")
        assert code == 0
        assert out.startswith("digraph workflow {")
        assert "n6 [shape=point" in out
        assert out.count("->") == compile(CANVAS).edge_count

    @pytest.mark.parametrize("target", ["tests.test_cli", "tests.test_cli:NOPE", "no_such_mod:x"])
    def test_bad_targets_are_one_line_errors(
        self, target: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = cli(capsys, "graph", target)
        assert code == 2
        assert err.startswith("aioworkflow: error: ")
        assert err.count("\n") == 1
