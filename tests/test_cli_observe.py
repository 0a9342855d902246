"""The command line's view of observability: status with running nodes, list, watch on a pty."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from aioworkflow import Chain, Group, Workflow, report_progress
from aioworkflow.cli import main
from tests.conftest import make_env

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Env


@pytest.fixture
def env(redis_url: str) -> Iterator[Env]:
    """RedisBroker + RedisStore on a flushed database."""
    redis.Redis.from_url(redis_url).flushdb()
    e = make_env("redis", redis_url)
    yield e
    e.close()
    e.store.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def reporting(env: Env) -> tuple[Any, threading.Event, threading.Event]:
    """An actor that reports 3/10 and blocks until ``gate``; ``reported`` once it did."""
    gate, reported = threading.Event(), threading.Event()

    def crunch(label: Any) -> None:
        report_progress(3, 10, "crunching")
        reported.set()
        assert gate.wait(30)
        report_progress(10, 10)

    return env.actor(crunch, actor_name="crunch_cli", max_retries=0), gate, reported


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class TestStatusAndList:
    def test_status_shows_name_labels_and_running_nodes(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        task, gate, reported = reporting(env)
        env.worker()
        handle = Workflow(
            Group(task.message(1)), name="nightly", labels={"tenant": "acme"}
        ).run_sync()
        try:
            assert reported.wait(20)

            def shown() -> bool:
                running = handle.status().running_nodes
                return bool(running) and running[0].progress is not None

            wait_for(shown, "the progress report")
            code, out = cli(capsys, "status", handle.id, "--redis", redis_url)
            assert code == 0
            assert "name      nightly\n" in out
            assert "labels    tenant=acme\n" in out
            (line,) = [x for x in out.splitlines() if x.startswith("running   node 0 crunch_cli")]
            assert "[######..............] 3/10 crunching" in line
        finally:
            gate.set()
        handle.wait(timeout=30)

    def test_list_filters_by_state_name_label_and_limit(
        self, env: Env, redis_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        done = [Workflow(Chain(), name="a", labels={"t": str(i % 2)}).run_sync() for i in range(6)]
        for h in done:
            h.wait(timeout=30)
        code, out = cli(capsys, "list", "--redis", redis_url, "--limit", "100")
        assert code == 0
        assert {line.split()[0] for line in out.splitlines()} == {h.id for h in done}
        code, out = cli(capsys, "list", "--redis", redis_url, "--label", "t=1", "--name", "a")
        ids = [line.split()[0] for line in out.splitlines()]
        assert sorted(ids) == sorted(h.id for i, h in enumerate(done) if i % 2 == 1)
        assert all(" SUCCEEDED " in line and " a  t=1" in line for line in out.splitlines())
        code, out = cli(capsys, "list", "--redis", redis_url, "--state", "failed")
        assert (code, out) == (0, "")
        code, out = cli(capsys, "list", "--redis", redis_url, "--limit", "2", "--since", "1h")
        assert len(out.splitlines()) == 2
        code, _ = cli(capsys, "list", "--redis", redis_url, "--since", "soon")
        assert code == 2


class TestWatchOnAPty:
    def test_watch_draws_a_progress_bar_per_running_node(self, env: Env, redis_url: str) -> None:
        task, gate, reported = reporting(env)
        env.worker()
        handle = Workflow(Group(task.message(1), task.message(2))).run_sync()
        assert reported.wait(20)
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioworkflow", "watch", handle.id, "--redis", redis_url],
            stdout=slave,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
        os.close(slave)
        seen = b""
        try:
            # two node lines with 3/10 bars under the overall bar, then let the tasks finish
            deadline = time.monotonic() + 30
            while seen.count(b"] 3/10 crunching") < 2 or b"node 1 " not in seen:
                assert time.monotonic() < deadline, seen.decode(errors="replace")
                if select.select([master], [], [], 0.1)[0]:
                    seen += os.read(master, 65536)
            gate.set()
            while proc.poll() is None or select.select([master], [], [], 0.1)[0]:
                assert time.monotonic() < deadline + 30, seen.decode(errors="replace")
                if select.select([master], [], [], 0.1)[0]:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:  # the child closed its end
                        break
        finally:
            gate.set()
            proc.wait(timeout=30)
            os.close(master)
        text = seen.decode(errors="replace")
        assert proc.returncode == 0, text
        assert "0/2 succeeded, 0 failed, 2 running  RUNNING" in text
        assert "  node 0 crunch_cli" in text
        assert "  node 1 crunch_cli" in text
        assert "[######..............] 3/10 crunching" in text
        assert "\x1b[2A\x1b[J" in text  # a three-line frame was redrawn in place
        assert text.rstrip("\r\n").endswith("2/2 succeeded, 0 failed, 0 running  SUCCEEDED\x1b[K")
