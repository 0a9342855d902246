"""Redis URLs for ``RedisStore(url=...)``, and a client described without its credentials.

``redis://``, ``rediss://`` (TLS) and ``unix://`` are read by redis-py; the Sentinel form is
this project's choice::

    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]

The user and password are the master's (the data node's); sentinels that require a password
of their own take ``?sentinel_password=...`` (and ``sentinel_username=``). Every message here
shows a URL redacted (``aioworkflow._redact``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.cluster
import redis.connection
import redis.sentinel

from aioworkflow._redact import redact_text, redact_url, url_secrets
from aioworkflow.errors import ConfigurationError

from ._connect import cluster_nodes, is_sentinel

__all__ = ["SENTINEL_SCHEME", "BadURL", "client_from_url", "describe", "secrets_of"]

SENTINEL_SCHEME = "redis+sentinel"

# redis-py's Sentinel class is untyped
_SyncSentinel: Any = redis.sentinel.Sentinel


class BadURL(ConfigurationError, ValueError):
    """A malformed or unsupported Redis URL (also a ValueError, as redis-py's own are)."""


def _sentinel_from_url(url: str) -> Any:
    parts = urlsplit(url)
    netloc = parts.netloc
    user = password = None
    if "@" in netloc:
        cred, _, netloc = netloc.rpartition("@")
        u, colon, pw = cred.partition(":")
        user, password = (unquote(u) or None), (unquote(pw) if colon else None)
    addresses: list[tuple[str, int]] = []
    for hostport in netloc.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise BadURL(
                f"bad sentinel address {hostport!r} in {redact_url(url)}: expected "
                "redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]"
            )
        addresses.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadURL(
            f"{redact_url(url)} needs a service name: "
            "redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel_kwargs = {
        k: query[f"sentinel_{k}"] for k in ("username", "password") if f"sentinel_{k}" in query
    }
    sentinel = _SyncSentinel(
        addresses,
        sentinel_kwargs=sentinel_kwargs or None,
        username=user,
        password=password,
        db=int(path[1]) if len(path) == 2 else 0,
    )
    return sentinel.master_for(unquote(path[0]))


def client_from_url(url: str, *, cluster: bool) -> Any:
    """A sync redis-py client for ``url`` (``redis://``, ``rediss://``, ``unix://`` or
    ``redis+sentinel://``; a cluster for the first two with ``cluster=True``).

    Raises:
        ConfigurationError: a malformed URL or an unknown scheme (the message is redacted).
    """
    scheme = url.partition("://")[0].lower()
    try:
        if scheme == SENTINEL_SCHEME:
            if cluster:
                raise BadURL("a redis+sentinel:// URL cannot be a Redis Cluster")
            return _sentinel_from_url(url)
        if cluster:
            if scheme not in ("redis", "rediss"):
                raise BadURL(f"a Redis Cluster URL is redis:// or rediss://, not {scheme}://")
            return redis.cluster.RedisCluster.from_url(url)
        if scheme not in ("redis", "rediss", "unix"):
            # the URL itself is not quoted: without "scheme://" nothing marks its password
            raise BadURL(
                "unsupported Redis URL: use redis://, rediss://, unix:// or redis+sentinel:// "
                "(the URL is not shown: it may hold a password)"
            )
        standalone: Any = redis.Redis  # from_url's kwargs are untyped
        return standalone.from_url(url)
    except BadURL:
        raise
    except (ValueError, TypeError) as exc:
        message = redact_text(str(exc), url_secrets(url))
        raise BadURL(f"bad Redis URL {redact_url(url)}: {message}") from None


def _kwargs_of(client: Any) -> dict[str, Any]:
    if isinstance(client, redis.cluster.RedisCluster):
        manager: Any = client.nodes_manager
        return dict(manager.connection_kwargs)
    pool = getattr(client, "connection_pool", None)
    kwargs = dict(getattr(pool, "connection_kwargs", {}) or {})
    sentinels = getattr(pool, "sentinel_manager", None)
    if sentinels is not None:
        kwargs = {**dict(sentinels.connection_kwargs), **kwargs}
    return kwargs


def secrets_of(client: Any, url: str | None = None) -> tuple[str, ...]:
    """The passwords ``client`` (and ``url``) carry, for :func:`redact_text`."""
    found = list(url_secrets(url)) if url else []
    kwargs = _kwargs_of(client)
    for key in ("password", "ssl_password"):
        value = kwargs.get(key)
        if isinstance(value, str) and value:
            found.append(value)
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    for s in getattr(manager, "sentinels", ()):
        value = s.connection_pool.connection_kwargs.get("password")
        if isinstance(value, str) and value:
            found.append(value)
    return tuple(dict.fromkeys(found))


def describe(client: Any) -> str:
    """Where ``client`` connects, without its credentials: ``redis://user:***@host:port/db``,
    ``unix:///path``, ``redis+sentinel://.../service``, ``redis-cluster://host:port,...``."""
    kwargs = _kwargs_of(client)
    user = kwargs.get("username")
    secret = kwargs.get("password") is not None or kwargs.get("credential_provider") is not None
    auth = f"{user or ''}:***@" if secret else (f"{user}@" if user else "")
    db = kwargs.get("db") or 0
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = ",".join(f"{n.host}:{n.port}" for n in cluster_nodes(client))
        tls = kwargs.get("connection_class") is redis.connection.SSLConnection
        return f"{'rediss' if tls else 'redis'}-cluster://{auth}{nodes}"
    pool = getattr(client, "connection_pool", None)
    if is_sentinel(client):
        manager = pool.sentinel_manager  # type: ignore[union-attr]
        hosts = ",".join(
            f"{s.connection_pool.connection_kwargs.get('host')}:"
            f"{s.connection_pool.connection_kwargs.get('port')}"
            for s in manager.sentinels
        )
        return f"{SENTINEL_SCHEME}://{auth}{hosts}/{pool.service_name}/{db}"  # type: ignore[union-attr]
    klass = getattr(pool, "connection_class", None)
    if klass is not None and issubclass(klass, redis.connection.UnixDomainSocketConnection):
        return f"unix://{auth}{kwargs.get('path')}?db={db}"
    tls = klass is not None and issubclass(klass, redis.connection.SSLConnection)
    return f"{'rediss' if tls else 'redis'}://{auth}{kwargs.get('host')}:{kwargs.get('port')}/{db}"
