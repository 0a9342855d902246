"""Refuse an evicting Redis: ``maxmemory-policy`` must be ``noeviction``.

With an evicting policy (``allkeys-*``, ``volatile-*``) Redis silently deletes keys when it
runs out of memory: a workflow's counters, claims or DAG vanish mid-run and it hangs for good
with no error anywhere. With ``noeviction`` Redis answers ``-OOM`` instead, which the worker
and the client retry (``StoreBusy``). The policy is read once per store and process (CONFIG
GET, or ``INFO memory`` where CONFIG is disabled or renamed), never on the task path.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from aioworkflow.errors import ConfigurationError

__all__ = ["EvictionCheck"]

logger = logging.getLogger("aioworkflow")

#: Prefixes of the policies under which Redis deletes keys to make room.
_EVICTING = ("allkeys-", "volatile-")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_policy(client: Any) -> str | None:
    """``maxmemory-policy`` of one standalone server (None if it cannot be read)."""
    try:
        found: dict[Any, Any] = client.config_get("maxmemory-policy")
        for key, value in found.items():
            if _text(key) == "maxmemory-policy":
                return _text(value)
    except redis.ResponseError:  # CONFIG disabled (rename-command) or not permitted (ACL)
        pass
    try:
        info: dict[Any, Any] = client.info("memory")
    except redis.ResponseError:
        return None
    value = info.get("maxmemory_policy")
    return None if value is None else _text(value)


class EvictionCheck:
    """The once-per-store check; ``allow``: warn instead of refusing an evicting policy."""

    def __init__(self, allow: bool) -> None:
        self.allow = allow
        self.done = False
        self._lock = threading.Lock()

    def check(self, client: Any, cluster: bool) -> None:
        """Read the policy of every primary; raise ``ConfigurationError`` if one evicts.

        Raises:
            ConfigurationError: a primary evicts keys and ``allow_eviction`` is off.
            redis.RedisError: the servers could not be reached (checked again next time).
        """
        with self._lock:  # one round trip per store, however many threads ask at once
            if not self.done:
                self._check(client, cluster)

    def _check(self, client: Any, cluster: bool) -> None:
        if cluster:
            servers = [(n.name, n.redis_connection) for n in client.get_primaries()]
        else:
            kwargs = client.connection_pool.connection_kwargs
            servers = [(f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}", client)]
        for name, server in servers:
            self._judge(name, read_policy(server))
        self.done = True

    def _judge(self, name: str, policy: str | None) -> None:
        if policy is None:
            logger.warning(
                "Could not read maxmemory-policy of Redis %s (CONFIG and INFO refused): make "
                "sure it is noeviction, or workflows may lose keys and hang.",
                name,
            )
            return
        if not policy.startswith(_EVICTING):
            return
        text = (
            f"Redis {name} has maxmemory-policy {policy}: it deletes keys when memory runs out, "
            "and workflows whose keys are evicted hang for good. Set "
            "'maxmemory-policy noeviction' (redis.conf or CONFIG SET), or pass "
            "RedisStore(..., allow_eviction=True) to accept the risk."
        )
        if not self.allow:
            raise ConfigurationError(text)
        logger.warning("%s (allowed by allow_eviction=True)", text)
