"""From one redis-py client to its async twin: same server(s), credentials and TLS settings.

``RedisStore(client=...)`` takes whatever sync client the application already has (plain TCP,
unix socket, TLS, an ACL user or a credential provider, a Sentinel master, a ``RedisCluster``)
and needs a ``redis.asyncio`` client per event loop that reaches *the same* Redis. The
translation lives here, once: :func:`async_factory` inspects the sync client at construction
and returns a factory, or raises :class:`ConfigurationError` naming what cannot be carried
over. It never guesses a default address: a setting it does not understand fails loudly
rather than sending workflows to another server.

URLs, and how a client is printed without its credentials: ``_urls.py``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel

from aioworkflow.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["aclose", "async_factory", "close", "cluster_nodes", "is_sentinel"]

# redis-py's Sentinel classes are untyped
_AsyncSentinel: Any = redis.asyncio.sentinel.Sentinel

#: sync connection class -> async connection class with the same transport
_CLASSES: dict[type[Any], type[Any]] = {
    redis.connection.Connection: redis.asyncio.connection.Connection,
    redis.connection.SSLConnection: redis.asyncio.connection.SSLConnection,
    redis.connection.UnixDomainSocketConnection: redis.asyncio.connection.UnixDomainSocketConnection,
}
#: Settings that decide which server is reached, as whom, and how securely: carried over.
_KEPT = frozenset(
    (
        "host", "port", "path", "db", "username", "password", "credential_provider",
        "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
        "client_name", "protocol", "encoding", "encoding_errors", "decode_responses",
        "health_check_interval", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
        "ssl_include_verify_flags", "ssl_exclude_verify_flags", "ssl_ca_certs", "ssl_ca_data",
        "ssl_ca_path", "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", "ssl_password",
    )
)  # fmt: skip
#: Settings redis.asyncio has no equivalent of: refused when set, rather than dropped.
_REFUSED = ("redis_connect_func", "ssl_validate_ocsp", "ssl_validate_ocsp_stapled",
            "ssl_ocsp_context", "ssl_ocsp_expected_cert")  # fmt: skip


def _accepted(cls: type[Any]) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters)
    return names - {"self", "kwargs", "args"}


def _translate(kwargs: dict[str, Any], what: str, accepted: set[str]) -> dict[str, Any]:
    """The connection settings of a sync client that its async twin takes, or a
    ConfigurationError for a setting that would be silently lost."""
    for name in _REFUSED:
        if kwargs.get(name):
            raise ConfigurationError(
                f"RedisStore(client=...): {what} sets {name}, which redis.asyncio cannot "
                "reproduce; pass a client without it (or url=)"
            )
    lost = [k for k, v in kwargs.items() if k in _KEPT and k not in accepted and v]
    if lost:
        raise ConfigurationError(
            f"RedisStore(client=...): {what} sets {', '.join(sorted(lost))}, which the "
            "redis.asyncio client cannot take; pass a client without it (or url=)"
        )
    return {k: v for k, v in kwargs.items() if k in _KEPT and k in accepted}


def _standalone(client: Any, max_connections: int, lib: dict[str, Any]) -> Callable[[], Any]:
    pool = client.connection_pool
    target = _CLASSES.get(pool.connection_class)
    if target is None:
        raise ConfigurationError(
            f"RedisStore(client=...): connection class {pool.connection_class.__name__} has no "
            "redis.asyncio equivalent aioworkflow knows; use a plain, TLS or unix-socket client"
        )
    kwargs = _translate(dict(pool.connection_kwargs), "the client", _accepted(target))

    def build() -> Any:
        # A blocking pool: many concurrent run()/wait() calls queue for a connection instead
        # of failing with "Too many connections".
        apool = redis.asyncio.BlockingConnectionPool(
            connection_class=target, max_connections=max_connections, timeout=None,
            **kwargs, **lib,
        )  # fmt: skip
        return redis.asyncio.Redis.from_pool(apool)

    return build


def _sentinel(client: Any, lib: dict[str, Any]) -> Callable[[], Any]:
    pool = client.connection_pool
    manager = pool.sentinel_manager
    accepted = _accepted(redis.asyncio.connection.Connection)
    addresses: list[tuple[str, int]] = []
    sentinel_kwargs: dict[str, Any] = {}
    for s in manager.sentinels:
        skw = dict(s.connection_pool.connection_kwargs)
        addresses.append((skw["host"], int(skw["port"])))
        sentinel_kwargs = _translate(skw, "a sentinel client", accepted)
    for k in ("host", "port", "path"):
        sentinel_kwargs.pop(k, None)
    master_kwargs = {**dict(manager.connection_kwargs), **dict(pool.connection_kwargs)}
    master_kwargs = _translate(master_kwargs, "the Sentinel master client", accepted)
    for k in ("host", "port", "path"):
        master_kwargs.pop(k, None)
    ssl = bool(master_kwargs.get("ssl")) or (
        pool.connection_class is not None
        and issubclass(pool.connection_class, redis.connection.SSLConnection)
    )
    if ssl:
        raise ConfigurationError(
            "RedisStore(client=...): TLS through Sentinel is not supported yet; "
            "use a TCP Sentinel deployment or a rediss:// client of the master"
        )
    service = pool.service_name
    force_ip = getattr(manager, "_force_master_ip", None)
    minimum = manager.min_other_sentinels

    def build() -> Any:
        sentinel = _AsyncSentinel(
            addresses, min_other_sentinels=minimum, sentinel_kwargs=sentinel_kwargs,
            force_master_ip=force_ip, **master_kwargs, **lib,
        )  # fmt: skip
        return sentinel.master_for(service)

    return build


def _cluster(client: Any, max_connections: int, lib: dict[str, Any]) -> Callable[[], Any]:
    manager = client.nodes_manager
    kwargs = dict(manager.connection_kwargs)
    klass = kwargs.pop("connection_class", redis.connection.Connection)
    kwargs.pop("redis_connect_func", None)  # RedisCluster's own (READONLY on replicas)
    if klass not in (redis.connection.Connection, redis.connection.SSLConnection):
        raise ConfigurationError(
            f"RedisStore(client=...): cluster connection class {klass.__name__} has no "
            "redis.asyncio equivalent aioworkflow knows"
        )
    kept = _translate(kwargs, "the cluster client", _accepted(redis.asyncio.cluster.RedisCluster))
    for k in ("host", "port", "path"):
        kept.pop(k, None)
    if klass is redis.connection.SSLConnection:
        kept["ssl"] = True
    nodes = [(n.host, int(n.port)) for n in cluster_nodes(client)]
    if not nodes:
        raise ConfigurationError("RedisStore(client=...): the cluster client knows no node")

    def build() -> Any:
        startup = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in nodes]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=startup, max_connections=max_connections, **kept, **lib
        )

    return build


def cluster_nodes(client: Any) -> list[Any]:
    nodes: list[Any] = client.get_nodes()
    return nodes


def is_sentinel(client: Any) -> bool:
    """Whether ``client`` is a Sentinel master client (``Sentinel(...).master_for(name)``)."""
    pool = getattr(client, "connection_pool", None)
    return isinstance(pool, redis.sentinel.SentinelConnectionPool)


def async_factory(client: Any, max_connections: int, lib: dict[str, Any]) -> Callable[[], Any]:
    """A factory of redis.asyncio clients reaching the same server(s) as ``client``, with
    the same credentials and TLS settings (``lib``: what the client tells Redis about itself).

    Raises:
        ConfigurationError: the client cannot be reproduced on redis.asyncio.
    """
    if isinstance(client, redis.cluster.RedisCluster):
        return _cluster(client, max_connections, lib)
    if not isinstance(client, redis.Redis):
        raise ConfigurationError(
            f"RedisStore(client=...) takes a redis.Redis or redis.cluster.RedisCluster, "
            f"not {type(client).__name__}"
        )
    if is_sentinel(client):
        return _sentinel(client, lib)
    return _standalone(client, max_connections, lib)


def _sentinel_clients(client: Any) -> list[Any]:
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", ()))


async def aclose(client: Any) -> None:
    """Close an async client made by :func:`async_factory`, with its Sentinel connections."""
    await client.aclose()
    for s in _sentinel_clients(client):
        await s.aclose()


def close(client: Any, *, owned: bool) -> None:
    """Close a sync client; also its Sentinel connections when this store made it (url=)."""
    client.close()
    if owned:
        for s in _sentinel_clients(client):
            s.close()
