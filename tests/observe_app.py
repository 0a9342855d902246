"""A dramatiq app for ``tests/test_observe_metrics.py``: ``dramatiq tests.observe_app``.

RedisBroker and RedisStore on ``AIOWF_OBSERVE_REDIS_URL``, with dramatiq's ``Prometheus``
middleware added *after* WorkflowMiddleware: its ``after_process_boot`` (which points
``prometheus_client`` at the multiprocess directory) runs after ours, and the workflow metrics
must still reach its endpoint.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO
from dramatiq.middleware.prometheus import Prometheus

from aioworkflow import RedisStore, WorkflowMiddleware

URL = os.environ.get("AIOWF_OBSERVE_REDIS_URL", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=URL)  # type: ignore[no-untyped-call]
broker.add_middleware(AsyncIO())
broker.add_middleware(WorkflowMiddleware(RedisStore(url=URL)))
broker.add_middleware(Prometheus())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="obs", max_retries=0)
def ok(label: str) -> str:
    """A node that succeeds."""
    return label


@dramatiq.actor(queue_name="obs", max_retries=0)
def boom() -> None:
    """A node that fails for good."""
    raise RuntimeError("kaput")
