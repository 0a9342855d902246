"""The lean EVALSHA path the worker uses for claim/complete/fail (``_store/_wire.py``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, RedisStore, _protocol as p, compile
from aioworkflow._machine import ClaimCode
from aioworkflow._protocol import ScriptCall
from aioworkflow._store._scripts import SOURCES, ScriptName
from aioworkflow._store._wire import WireScripts
from aioworkflow._upload import build_upload
from aioworkflow.errors import ScriptError, StoreConnectionError
from tests.conftest import start_redis

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import RedisServer

_broker = StubBroker()
#: The message token of the workflows these tests store (deliveries carry it).
TOKEN = "0123456789abcdef"


@dramatiq.actor(broker=_broker)
def t(label: Any) -> None:
    """A task for canvases (never run here)."""


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private Redis with a password, so AUTH and SELECT are exercised."""
    srv = start_redis()
    admin = redis.Redis(port=srv.port)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    yield srv
    assert srv.proc is not None
    srv.proc.terminate()
    srv.proc.wait(10)


async def _submit(store: RedisStore, wf: str) -> None:
    up = build_upload(
        wf,
        compile(Chain(t.message(1), t.message(2))),
        direct=False,
        retention_ms=60_000,
        now_ms=0,
        token=TOKEN,
    )
    await store.aio().submit(wf, up, [])


class TestWirePath:
    def test_plain_tcp_clients_get_the_wire_path_others_do_not(self, server: RedisServer) -> None:
        plain = redis.Redis(port=server.port, password="s3cret")
        unix = redis.Redis(unix_socket_path="/nonexistent.sock")
        assert WireScripts.for_client(plain, SOURCES) is not None
        assert WireScripts.for_client(unix, SOURCES) is None
        assert WireScripts.for_client(object(), SOURCES) is None
        plain.close()

    async def test_claim_and_complete_go_over_the_wire_with_auth_and_db(
        self, server: RedisServer
    ) -> None:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        store = RedisStore(url=url)
        try:
            assert store.sync._wire is not None
            await _submit(store, "w1")
            store.client.script_flush()  # the wire path loads scripts it finds missing
            claim = store.sync.claim("w1", 0, "m1", [], TOKEN)
            assert claim.run
            done = store.sync.complete("w1", 0, None, [], None, TOKEN)
            assert done.released == (1,)
            # the state lives in db 3, where redis-py's own calls see it too
            assert store.client.getbit("aiowf:{w1}:done", 0) == 1
            assert redis.Redis(port=server.port, password="s3cret", db=0).dbsize() == 0
            again = store.sync.claim("w1", 0, "m2", [], TOKEN)
            assert not again.run
            assert again.code == ClaimCode.DONE
        finally:
            await store.aclose()
            store.close()

    async def test_a_killed_connection_is_a_typed_error_then_reconnects(
        self, server: RedisServer
    ) -> None:
        store = RedisStore(url=f"redis://:s3cret@127.0.0.1:{server.port}/0")
        try:
            await _submit(store, "w2")
            assert store.sync.claim("w2", 0, "m1", [], TOKEN).run
            store.client.client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(StoreConnectionError):
                store.sync.complete("w2", 0, None, [], None, TOKEN)
            # the next call opens a fresh socket; the completion was not applied twice
            assert store.sync.complete("w2", 0, None, [], None, TOKEN).released == (1,)
            assert store.sync.complete("w2", 0, None, [], None, TOKEN).released == ()
        finally:
            await store.aclose()
            store.close()

    def test_a_script_error_is_a_script_error(self, server: RedisServer) -> None:
        client = redis.Redis(port=server.port, password="s3cret")
        wire = WireScripts.for_client(client, {ScriptName.CLAIM: "return redis.error_reply('x')"})
        assert wire is not None
        with pytest.raises(ScriptError, match="x"):
            wire.run(ScriptCall(ScriptName.CLAIM, ("k",), ()))
        wire.close()
        client.close()

    def test_unreachable_redis_is_a_connection_error(self) -> None:
        client = redis.Redis(port=1, socket_connect_timeout=1)
        wire = WireScripts.for_client(client, SOURCES)
        assert wire is not None
        with pytest.raises(StoreConnectionError):
            wire.run(p.claim_call("wf", 0, "m", []))

    def test_each_thread_has_its_own_socket_and_close_closes_them(
        self, server: RedisServer
    ) -> None:
        client = redis.Redis(port=server.port, password="s3cret")
        wire = WireScripts.for_client(client, {ScriptName.CLAIM: "return redis.call('PING')"})
        assert wire is not None
        replies: list[Any] = []
        called, checked = threading.Barrier(5), threading.Barrier(5)

        def call() -> None:
            replies.append(wire.run(ScriptCall(ScriptName.CLAIM, ("k",), ())))
            called.wait(10)
            checked.wait(10)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for th in threads:
            th.start()
        called.wait(10)
        assert replies == [b"PONG"] * 4
        assert len(wire._open) == 4  # one socket per live thread
        checked.wait(10)
        for th in threads:
            th.join()
        # a new thread's first call closes the sockets of threads that have ended
        wire.run(ScriptCall(ScriptName.CLAIM, ("k",), ()))
        assert len(wire._open) == 1
        wire.close()
        assert wire._open == []
        client.close()
