"""An evicting Redis is refused: at worker boot and at the client's first call.

With ``maxmemory-policy allkeys-lru`` (or any ``allkeys-*``/``volatile-*``), Redis deletes
keys when full and workflows hang for good; ``noeviction`` makes it answer ``-OOM``, which
is retried. ``RedisStore(allow_eviction=True)`` accepts the risk with one warning.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from aioworkflow import RedisStore, Workflow, WorkflowMiddleware
from aioworkflow.errors import ConfigurationError
from tests.conftest import start_redis

if TYPE_CHECKING:
    from tests.conftest import RedisServer


def _setup(url: str, **store: bool) -> tuple[dramatiq.Broker, RedisStore, dramatiq.Actor]:  # type: ignore[type-arg]
    broker = StubBroker()
    rs = RedisStore(url=url, **store)
    broker.add_middleware(WorkflowMiddleware(rs, reconcile_interval=0))
    actor = dramatiq.actor(broker=broker, actor_name=f"ev_{uuid.uuid4().hex[:8]}")(lambda: None)
    return broker, rs, actor


def _boot(broker: dramatiq.Broker) -> None:
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    try:
        worker.start()
    finally:
        worker.stop()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]


@pytest.mark.parametrize("extra", [(), ("--rename-command", "CONFIG", "")], ids=["config", "info"])
async def test_an_evicting_redis_is_refused_unless_allowed(
    servers: list[RedisServer], caplog: pytest.LogCaptureFixture, extra: tuple[str, ...]
) -> None:
    # Given a Redis that evicts (read with CONFIG GET, or from INFO where CONFIG is renamed)
    server = start_redis("--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru", *extra)
    servers.append(server)
    caplog.set_level(logging.WARNING, "aioworkflow")
    # When a worker boots, or a workflow is run, Then both refuse, naming policy and fix
    broker, store, actor = _setup(server.url)
    with pytest.raises(ConfigurationError, match=r"allkeys-lru.*maxmemory-policy noeviction"):
        _boot(broker)
    with pytest.raises(ConfigurationError, match="allkeys-lru"):
        await Workflow(actor.message()).run(broker=broker, store=store)
    await store.aclose()
    store.close()
    # When eviction is allowed, Then both work, with one warning per store
    broker, store, actor = _setup(server.url, allow_eviction=True)
    _boot(broker)
    handle = await Workflow(actor.message()).run(broker=broker, store=store)
    await handle.status()
    assert len(_warnings(caplog)) == 1, _warnings(caplog)
    await store.aclose()
    store.close()


async def test_noeviction_passes_silently(
    servers: list[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis("--maxmemory", "20mb", "--maxmemory-policy", "noeviction")
    servers.append(server)
    caplog.set_level(logging.WARNING, "aioworkflow")
    broker, store, actor = _setup(server.url)
    _boot(broker)
    handle = await Workflow(actor.message()).run(broker=broker, store=store)
    await handle.status()
    assert _warnings(caplog) == []
    await store.aclose()
    store.close()
