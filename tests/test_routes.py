"""The dramatiq adapter's routes: which one a stored workflow gets, and what it hands the store.

Real brokers and a real Redis: the route is chosen from the mode the workflow was stored with
and from the broker in hand, and the keys it passes are the RedisBroker's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator  # noqa: TC003 - fixtures' types
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy

from aioworkflow import Chain, WithDelay, Workflow
from aioworkflow._dramatiq import AckShortcut, DirectRoute, ReadyRoute, route_for
from tests.conftest import Env, make_env
from tests.test_runtime import declare_task


@pytest.fixture(params=["redis", "rabbitmq"])
async def broker_env(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Env]:
    env = make_env(request.param, redis_url)
    env.store.client.flushdb()
    if request.param == "rabbitmq":
        env.broker.flush_all()
    yield env
    if request.param == "rabbitmq":
        env.broker.flush_all()  # the roots sent to RabbitMQ, which no worker ran
    env.close()
    await env.store.aclose()
    env.store.close()


def delivery(queue: str, **options: Any) -> MessageProxy:
    """A delivery as a consumer hands it to the middleware."""
    return MessageProxy(dramatiq.Message(queue, "task", (), {}, options))


async def test_a_workflow_gets_the_route_of_the_mode_it_was_stored_with(broker_env: Env) -> None:
    # Given a workflow stored through a RedisBroker on the store's Redis, or through RabbitMQ
    t = declare_task(broker_env)
    handle = await Workflow(Chain(t.message(1), WithDelay(t.message(2), delay=60_000))).run()
    loaded = broker_env.store.sync.load(handle.id)
    assert loaded is not None
    # When its route is built
    route = route_for(broker_env.broker, handle.id, loaded)
    # Then on Redis the scripts get the broker's queue keys (the delayed node's too) and send
    # themselves; on RabbitMQ they get none and the route sends
    if broker_env.name == "redis":
        assert isinstance(route, DirectRoute)
        queue = t.queue_name
        assert route.queue_keys == [
            f"dramatiq:{queue}",
            f"dramatiq:{queue}.msgs",
            f"dramatiq:{queue}.bell",
            f"dramatiq:{queue}.DQ",
            f"dramatiq:{queue}.DQ.msgs",
            f"dramatiq:{queue}.DQ.bell",
        ]
    else:
        assert isinstance(route, ReadyRoute)
        assert route.queue_keys == []


async def test_the_ack_shortcut_exists_only_once_installed_on_the_stores_redis(
    broker_env: Env,
) -> None:
    # Given a direct-mode workflow's route built with a shortcut not installed yet
    t = declare_task(broker_env)
    handle = await Workflow(t.message(1)).run()
    loaded = broker_env.store.sync.load(handle.id)
    assert loaded is not None
    acks = AckShortcut()
    route = route_for(broker_env.broker, handle.id, loaded, acks)
    message = delivery(t.queue_name, redis_message_id="rid-1")
    assert route.ack_for(message) is None
    # When a worker boots (which installs it)
    installed = acks.install(broker_env.store, broker_env.broker)
    ack = route.ack_for(message)
    # Then only a RedisBroker on the store's Redis lets complete.lua ack, with its own keys
    if broker_env.name == "redis":
        broker_id = broker_env.broker.broker_id  # type: ignore[attr-defined]
        assert installed
        assert ack is not None
        assert ack.keys == (
            f"dramatiq:__acks__.{broker_id}.{t.queue_name}",
            f"dramatiq:{t.queue_name}.msgs",
            "dramatiq:__heartbeats__",
        )
        assert (ack.message_id, ack.broker_id) == ("rid-1", broker_id)
        assert route.ack_for(delivery(t.queue_name)) is None  # not a RedisBroker delivery
        assert not acks.install(broker_env.store, broker_env.broker)  # once per process
    else:
        assert not installed
        assert ack is None
