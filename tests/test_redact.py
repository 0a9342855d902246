"""Passwords are never printed (issue 14): the pure helper, then the CLI for real.

The CLI runs against closed ports with URLs that carry ``secret``; whatever fails and however
it is reported (error line, log line, subprocess output), ``secret`` must not appear.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from aioworkflow import Chain, State, Workflow
from aioworkflow._redact import MASK, redact_text, redact_url, url_secrets
from aioworkflow.cli import main
from tests.conftest import free_port
from tests.test_cli import cli, gated, held_after_pause, rabbit

if TYPE_CHECKING:
    from tests.conftest import Env

__all__ = ["rabbit"]  # the fixture, imported for the broker test below

SECRET = "secret"


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound once to find it, then released)."""
    return free_port()


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("redis://user:secret@h:6379/0", f"redis://user:{MASK}@h:6379/0"),
            ("redis://:secret@h/0", f"redis://:{MASK}@h/0"),
            ("rediss://secret@h/0", f"rediss://{MASK}@h/0"),  # a lone token is masked too
            ("amqp://guest:secret@h:5672/vhost", f"amqp://guest:{MASK}@h:5672/vhost"),
            ("redis://u:se/cr@et@h/0", f"redis://u:{MASK}@h/0"),  # unescaped / and @
            ("redis://u:s%40cret@h/0", f"redis://u:{MASK}@h/0"),
            ("redis://h/0?password=secret&db=1", f"redis://h/0?password={MASK}&db=1"),
            ("unix:///tmp/r.sock?db=0&password=secret", f"unix:///tmp/r.sock?db=0&password={MASK}"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("not a url", "not a url"),
            ("", ""),
        ],
    )
    def test_masks_the_password_and_nothing_else(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected
        assert "secret" not in redact_url(url)
        assert redact_url(redact_url(url)) == redact_url(url)  # idempotent

    def test_secrets_of_a_url_include_the_decoded_form(self) -> None:
        assert url_secrets("redis://u:s%40cret@h/0") == ("s%40cret", "s@cret")
        assert url_secrets("redis://h/0?password=pw") == ("pw",)
        assert url_secrets("redis://h/0") == ()

    def test_redact_text_masks_urls_and_bare_secrets(self) -> None:
        text = "cannot connect to redis://u:hunter2@h/0 (auth hunter2 refused)"
        assert redact_text(text, url_secrets("redis://u:hunter2@h/0")) == (
            f"cannot connect to redis://u:{MASK}@h/0 (auth {MASK} refused)"
        )
        assert redact_text("quoted 'amqp://a:b@c/d'.") == f"quoted 'amqp://a:{MASK}@c/d'."


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, text


class TestCli:
    @pytest.mark.parametrize("command", ["status", "watch", "cancel", "pause", "resume", "retry"])
    def test_an_unreachable_redis_url_from_the_option(
        self, command: str, closed_port: int, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = f"redis://user:{SECRET}@127.0.0.1:{closed_port}/0"
        code, out, err = cli(capsys, command, "some-id", "--redis", url)
        assert code == 2
        assert err.startswith(
            f"aioworkflow: error: cannot reach Redis at redis://user:***@127.0.0.1:{closed_port}/0"
        )
        assert_no_secret(out, err)

    def test_an_unreachable_redis_url_from_the_environment(
        self, closed_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIOWORKFLOW_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:{closed_port}/0")
        code, out, err = cli(capsys, "status", "some-id")
        assert code == 2
        assert "cannot reach Redis at redis://:***@127.0.0.1" in err
        assert_no_secret(out, err)

    def test_the_demo_on_an_unreachable_redis(
        self, closed_port: int, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = f"redis://user:{SECRET}@127.0.0.1:{closed_port}/0"
        code, out, err = cli(capsys, "demo", "--redis", url)
        assert code == 2
        assert_no_secret(out, err)

    def test_a_bad_broker_url(self, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, err = cli(
            capsys, "retry", "x", "--redis", redis_url, "--broker", f"ftp://u:{SECRET}@h/"
        )
        assert code == 2
        assert err == (
            "aioworkflow: error: --broker: expected an amqp:// or redis:// URL, got 'ftp://u:***@h/'\n"
        )
        assert_no_secret(out, err)

    def test_a_malformed_redis_url(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, err = cli(capsys, "status", "x", "--redis", f"user:{SECRET}@localhost:6379")
        assert code == 2
        assert_no_secret(out, err)

    @pytest.mark.parametrize("where", ["option", "environment"])
    def test_a_subprocess_prints_no_secret(self, where: str, closed_port: int) -> None:
        url = f"redis://user:{SECRET}@127.0.0.1:{closed_port}/0"
        env = {k: v for k, v in os.environ.items() if k != "AIOWORKFLOW_REDIS_URL"}
        args = [sys.executable, "-m", "aioworkflow", "watch", "some-id"]
        if where == "option":
            args += ["--redis", url]
        else:
            env["AIOWORKFLOW_REDIS_URL"] = url
        proc = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert proc.returncode == 2
        assert "cannot reach Redis at redis://user:***@" in proc.stderr
        assert_no_secret(proc.stdout, proc.stderr)

    def test_an_unreachable_broker_while_resuming(
        self, rabbit: tuple[Env, str], redis_url: str, closed_port: int
    ) -> None:
        """A paused RabbitMQ workflow resumed through an unreachable ``--broker``: the failed
        send is logged (and left to the reconciler) without the broker's password."""
        env, queue = rabbit
        task, gate, started = gated(env, queue_name=queue)
        env.worker()
        handle = Workflow(Chain(task.message(1), task.message(2))).run_sync()
        assert started.wait(30)
        assert main(["pause", handle.id, "--redis", redis_url]) == 0
        held_after_pause(env, handle.id, gate)
        broker = f"amqp://guest:{SECRET}@127.0.0.1:{closed_port}/hC"
        args = ["resume", handle.id, "--redis", redis_url, "--broker", broker]
        proc = subprocess.run(
            [sys.executable, "-m", "aioworkflow", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "resumed: workflow is now RUNNING" in proc.stdout
        assert proc.stderr  # the failed send was reported...
        assert_no_secret(proc.stdout, proc.stderr)  # ...without the password
        assert handle.wait(timeout=30).state is State.SUCCEEDED  # the reconciler sent it
