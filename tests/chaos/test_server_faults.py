"""Error replies production Redis gives while it is up: OOM, BUSY, READONLY.

Each test runs the nine-task workflows of ``test_redis_faults`` (audited: one release and one
success per node, none early, ``on_success`` once) through windows in which the store's Redis
answers every write with an error reply, in direct mode (a RedisBroker on the same Redis) and
in ready mode (RabbitMQ), without restarting any worker:

* **OOM**: ``maxmemory`` is set below the memory in use (policy ``noeviction``), so every
  command that may grow memory, and every script at its first such write, gets ``-OOM``.
* **BUSY**: another client runs a read-only script for about a second with
  ``busy-reply-threshold`` at 50 ms, so every other command gets ``-BUSY``.
* **READONLY**: the primary is demoted to a replica of a second server that holds the same
  data (writes paused, the replica caught up, then the roles swapped, as a failover does), so
  writes get ``-READONLY``; afterwards the roles are swapped back.

A worker that meets such a reply must retry, and never acknowledge a delivery whose
completion was not recorded; ``run()`` must retry too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING, Self

import pytest
import redis

from tests.chaos._report import report, scaled
from tests.chaos.test_redis_faults import audit, log_tally_async, rig, settle_all
from tests.conftest import start_redis

if TYPE_CHECKING:
    from aioworkflow import WorkflowHandle
    from tests.conftest import RedisServer

pytestmark = pytest.mark.chaos


class Fault:
    """Opens and closes fault windows on a private redis-server from a thread."""

    name = ""

    def __init__(self, server: RedisServer, servers: list[RedisServer]) -> None:
        self.port = server.port
        self.admin = redis.Redis(port=server.port, decode_responses=True)
        self.windows = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"fault-{self.name}", daemon=True)

    def open(self) -> None:
        """Start answering with the error (returns at once, or when the window is over)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop answering with the error."""

    def _run(self) -> None:
        while not self.stop.wait(random.uniform(0.3, 0.8)):
            self.open()
            self.windows += 1
            self.stop.wait(random.uniform(0.5, 1.5))
            self.close()

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        with contextlib.suppress(redis.RedisError):
            self.close()
        self.admin.close()


class OutOfMemory(Fault):
    """``maxmemory`` below the memory in use, policy ``noeviction``: writes get ``-OOM``."""

    name = "oom"

    def open(self) -> None:
        used = int(self.admin.info("memory")["used_memory"])
        self.admin.config_set("maxmemory-policy", "noeviction")
        self.admin.config_set("maxmemory", max(1 << 20, used // 2))

    def close(self) -> None:
        self.admin.config_set("maxmemory", 0)


#: A read-only script that keeps Redis busy for ARGV[1] ms (TIME is allowed in scripts).
_SPIN = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
repeat
    t = redis.call('TIME')
until tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) >= stop
return 1
"""


class Busy(Fault):
    """Another client's long script: everybody else gets ``-BUSY`` while it runs."""

    name = "busy"

    def __init__(self, server: RedisServer, servers: list[RedisServer]) -> None:
        super().__init__(server, servers)
        self.admin.config_set("busy-reply-threshold", 50)
        self.spinner = redis.Redis(port=server.port, socket_timeout=30)

    def open(self) -> None:
        self.spinner.eval(_SPIN, 0, random.randint(600, 1200))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.spinner.close()


class ReadOnly(Fault):
    """The primary demoted to a replica of a twin that holds the same data, then promoted."""

    name = "readonly"

    def __init__(self, server: RedisServer, servers: list[RedisServer]) -> None:
        super().__init__(server, servers)
        twin = start_redis()
        servers.append(twin)
        self.twin = redis.Redis(port=twin.port, decode_responses=True)
        self.twin.replicaof("127.0.0.1", server.port)
        self._caught_up(self.admin, self.twin)
        self.demoted = False

    @staticmethod
    def _caught_up(primary: redis.Redis, replica: redis.Redis) -> None:
        deadline = time.monotonic() + 20
        while True:
            info = replica.info("replication")
            offset = primary.info("replication")["master_repl_offset"]
            if info.get("master_link_status") == "up" and info["slave_repl_offset"] >= offset:
                return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.01)

    def _swap(self, old: redis.Redis, new: redis.Redis, new_port: int) -> None:
        """Make ``new`` (a replica of ``old``) the primary and ``old`` its replica, losing
        no write: writes are paused on ``old`` until ``new`` has all of them."""
        old.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # type: ignore[no-untyped-call]
        try:
            self._caught_up(old, new)
            new.replicaof("NO", "ONE")
            old.replicaof("127.0.0.1", new_port)
        finally:
            old.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
        self._caught_up(new, old)

    def open(self) -> None:
        twin_port = int(self.twin.connection_pool.connection_kwargs["port"])
        self._swap(self.admin, self.twin, twin_port)
        self.demoted = True

    def close(self) -> None:
        if self.demoted:
            self._swap(self.twin, self.admin, self.port)
            self.demoted = False

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.twin.close()


FAULTS: dict[str, type[Fault]] = {f.name: f for f in (OutOfMemory, Busy, ReadOnly)}


@pytest.mark.timeout(scaled(120, 1800))
@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_workflows_ride_out_error_replies(
    fault: str, kind: str, servers: list[RedisServer]
) -> None:
    # Given a worker on a private Redis (direct mode with a RedisBroker on it, or RabbitMQ)
    server = start_redis()
    servers.append(server)
    n = scaled(30, 400)
    seconds = scaled(6, 120)
    started = time.monotonic()
    async with (
        rig(kind, server.url, 0.02, reconcile_interval=0.2, reconcile_age=1.0) as r,
        log_tally_async() as logs,
    ):
        # When workflows are submitted and run while fault windows open and close
        with FAULTS[fault](server, servers) as injector:
            handles: list[WorkflowHandle] = []
            pace = seconds / n
            for _ in range(n):
                handle = await r.submit()
                if handle is not None:
                    handles.append(handle)
                await asyncio.sleep(pace)
        # Then, once the windows are over, every workflow succeeds with its books straight
        statuses = await settle_all(r, handles, scaled(60, 600))
        books = await audit(r, handles, statuses)
        report(
            f"{fault}[{kind}]",
            **books.figures(),
            submitted=n,
            submits_failed=n - len(handles),
            submit_errors=dict(r.submit_errors),
            windows=injector.windows,
            **logs.figures(),
            elapsed_s=time.monotonic() - started,
        )
    books.check()
    assert logs.figures()["swallowed"] == 0, "dramatiq swallowed an error of the middleware"
    assert injector.windows >= 2, "the fault windows did not open"
    assert len(handles) == n, f"run() gave up on submissions: {dict(r.submit_errors)}"
