"""Every Redis error reply is classified once, at the store boundary, on both paths.

Transient replies (OOM, BUSY, READONLY, LOADING, MASTERDOWN, NOREPLICAS, TRYAGAIN,
CLUSTERDOWN, MISCONF, NOSCRIPT) become ``StoreUnavailable`` subclasses, which workers and
clients retry; anything else (a script's own error, WRONGTYPE) is a ``ScriptError``. The
redis-py path (``map_exceptions``) and the worker's wire path (``WireScripts``) must agree.
Replies are provoked on real servers where a single server can give them; the rest (cluster
codes, LOADING, MISCONF) go through the real reply parsers of both paths.
"""

from __future__ import annotations

import io
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis._parsers.base import BaseParser

from aioworkflow._protocol import ScriptCall, ScriptName
from aioworkflow._store._redis import map_exceptions
from aioworkflow._store._wire import WireScripts, _read, reply_error  # pyright: ignore[reportPrivateUsage]
from aioworkflow.errors import (
    ScriptError,
    StoreBusy,
    StoreConnectionError,
    StoreError,
    StoreUnavailable,
)
from tests.conftest import start_redis

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import RedisServer

EXPECTED: dict[str, type[StoreError]] = {
    "OOM": StoreBusy,
    "BUSY": StoreBusy,
    "READONLY": StoreBusy,
    "LOADING": StoreConnectionError,
    "MASTERDOWN": StoreBusy,
    "NOREPLICAS": StoreBusy,
    "TRYAGAIN": StoreBusy,
    "CLUSTERDOWN": StoreBusy,
    "MISCONF": StoreBusy,
    "NOSCRIPT": StoreBusy,
    "ERR": ScriptError,
    "WRONGTYPE": ScriptError,
}

#: A script that writes (so that OOM, READONLY, NOREPLICAS stop it at its first write).
_WRITE = "return redis.call('SET', KEYS[1], ARGV[1])"


def _redis_py(call: Any) -> StoreError:
    with pytest.raises(StoreError) as caught, map_exceptions(ScriptName.CLAIM):
        call()
    return caught.value


def _wire(server: RedisServer, src: str, key: str = "k") -> StoreError:
    params = {"host": "127.0.0.1", "port": server.port, "db": 0, "username": None,
              "password": None, "timeout": 5.0, "connect_timeout": 5.0}  # fmt: skip
    wire = WireScripts(params, {ScriptName.CLAIM: src})
    try:
        with pytest.raises(StoreError) as caught:
            wire.run(ScriptCall(ScriptName.CLAIM, (key,), ("v",)))
    finally:
        wire.close()
    return caught.value


def _check(err: StoreError, code: str) -> None:
    assert type(err) is EXPECTED[code], (code, err)
    assert isinstance(err, StoreUnavailable) is (EXPECTED[code] is not ScriptError)
    if isinstance(err, StoreBusy):
        assert err.code == code
    assert code in str(err) or code == "ERR"


@pytest.mark.parametrize("code", list(EXPECTED))
def test_every_error_code_is_classified_by_both_parsers(code: str) -> None:
    line = f"{code} the server says no"
    # redis-py: the exception its own parser makes of the reply (a class of its own for some)
    parsed = BaseParser.parse_error(line)  # type: ignore[no-untyped-call]
    _check(_redis_py(lambda: (_ for _ in ()).throw(parsed)), code)
    # the wire path: the raw "-CODE message" line
    reply = _read(io.BytesIO(f"-{line}\r\n".encode()))
    _check(reply_error(reply.code, str(reply)), code)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = start_redis()
    yield s
    s.stop()


def test_real_oom_noreplicas_wrongtype_and_script_errors(server: RedisServer) -> None:
    c = redis.Redis(port=server.port)
    c.set("text", "x" * 1000)
    script = c.register_script(_WRITE)
    # OOM: maxmemory below what is in use, noeviction
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("maxmemory", 1)
    _check(_redis_py(lambda: c.set("k", "v")), "OOM")
    _check(_redis_py(lambda: script(keys=["k"], args=["v"])), "OOM")
    _check(_wire(server, _WRITE), "OOM")
    c.config_set("maxmemory", 0)
    # NOREPLICAS: min-replicas-to-write unmet
    c.config_set("min-replicas-to-write", 1)
    _check(_redis_py(lambda: c.set("k", "v")), "NOREPLICAS")
    _check(_wire(server, _WRITE), "NOREPLICAS")
    c.config_set("min-replicas-to-write", 0)
    # genuine bugs: a foreign key type, a script's own error
    _check(_redis_py(lambda: c.lpush("text", "v")), "WRONGTYPE")
    _check(_wire(server, "return redis.call('LPUSH', KEYS[1], ARGV[1])", "text"), "WRONGTYPE")
    boom = "return redis.error_reply('boom')"
    assert type(_redis_py(lambda: c.register_script(boom)(keys=["k"]))) is ScriptError
    assert type(_wire(server, boom)) is ScriptError
    # NOSCRIPT reaching the caller (redis-py's EVALSHA of an unknown script)
    _check(_redis_py(lambda: c.evalsha("0" * 40, 0)), "NOSCRIPT")
    # the wire path loads a flushed script once and succeeds
    c.script_flush()
    _check_wire_reloads(server)
    c.close()


def _check_wire_reloads(server: RedisServer) -> None:
    params = {"host": "127.0.0.1", "port": server.port, "db": 0, "username": None,
              "password": None, "timeout": 5.0, "connect_timeout": 5.0}  # fmt: skip
    wire = WireScripts(params, {ScriptName.CLAIM: _WRITE})
    assert wire.run(ScriptCall(ScriptName.CLAIM, ("k",), ("v",))) == b"OK"
    wire.close()


def test_real_readonly_and_masterdown(server: RedisServer) -> None:
    # a replica of a primary that is gone: writes get READONLY, and with
    # replica-serve-stale-data off, everything gets MASTERDOWN
    c = redis.Redis(port=server.port)
    c.replicaof("127.0.0.1", 1)  # nothing listens on port 1
    _check(_redis_py(lambda: c.set("k", "v")), "READONLY")
    _check(_wire(server, _WRITE), "READONLY")
    c.config_set("replica-serve-stale-data", "no")
    _check(_redis_py(lambda: c.get("k")), "MASTERDOWN")
    _check(_wire(server, "return redis.call('GET', KEYS[1])"), "MASTERDOWN")
    c.replicaof("NO", "ONE")
    c.close()


_SPIN = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
repeat t = redis.call('TIME')
until tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) >= stop
return 1
"""


def busy_window(port: int, ms: int) -> threading.Thread:
    """Another client's script keeps the server BUSY for ``ms``; returns once it is."""
    admin = redis.Redis(port=port)
    admin.config_set("busy-reply-threshold", 50)
    spinner = redis.Redis(port=port, socket_timeout=30)
    thread = threading.Thread(target=lambda: spinner.eval(_SPIN, 0, ms), daemon=True)
    thread.start()
    while True:  # until others get BUSY
        try:
            admin.ping()
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSY"):
                break
            raise
        time.sleep(0.005)
    admin.close()
    return thread


def test_real_busy(server: RedisServer) -> None:
    c = redis.Redis(port=server.port)
    thread = busy_window(server.port, 1500)
    _check(_redis_py(lambda: c.set("k", "v")), "BUSY")
    _check(_wire(server, _WRITE), "BUSY")
    thread.join()
    c.close()


# -- wait() rides out a sick store from its very first call -----------------------------------
async def test_wait_first_call_meets_busy_and_killed_connections(
    servers: list[RedisServer],
) -> None:
    import anyio.to_thread

    from aioworkflow import State, Workflow, WorkflowHandle
    from tests.conftest import make_env

    server = start_redis()
    servers.append(server)
    env = make_env("redis", server.url)
    ok = env.actor(lambda: None, actor_name="wait_ok", max_retries=0)

    def boom() -> None:
        raise RuntimeError("boom")

    bad = env.actor(boom, actor_name="wait_bad", max_retries=0)
    try:
        env.worker(threads=2)
        done = await Workflow(ok.message()).run()
        failed = await Workflow(bad.message()).run()
        assert (await done.wait(10)).state is State.SUCCEEDED
        assert (await failed.wait(10)).state is State.FAILED
        for handle, state in ((done, State.SUCCEEDED), (failed, State.FAILED)):
            # a BUSY window (another client's script) open when wait() starts
            fresh = WorkflowHandle(handle.id, broker=env.broker, store=env.store)
            thread = await anyio.to_thread.run_sync(busy_window, server.port, 600)
            assert (await fresh.wait(10)).state is state
            await anyio.to_thread.run_sync(thread.join)
            # a storm of CLIENT KILLs (every client connection but the killer's)
            stop = threading.Event()
            killer = threading.Thread(target=_kill_storm, args=(server.port, stop), daemon=True)
            killer.start()
            try:
                fresh = WorkflowHandle(handle.id, broker=env.broker, store=env.store)
                assert (await fresh.wait(10)).state is state
            finally:
                stop.set()
                killer.join()
    finally:
        env.close()
        await env.store.aclose()
        env.store.close()


def _kill_storm(port: int, stop: threading.Event) -> None:
    admin = redis.Redis(port=port)
    deadline = time.monotonic() + 0.5
    while not stop.is_set() and time.monotonic() < deadline:
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # type: ignore[no-untyped-call]
        time.sleep(0.002)
    admin.close()
