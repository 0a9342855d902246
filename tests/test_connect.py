"""RedisStore(client=...) with every kind of redis-py client, and RedisStore(url=...) forms.

For each kind (plain TCP, TCP with a password, an ACL user, a credential provider, a unix
socket, TLS with a self-signed certificate, a Sentinel master, a Redis Cluster with
``requirepass``/``masterauth``): a workflow runs end to end (worker on the sync client, the
client side on the async twin), the async side writes a marker key read back on the very
server the test started (and ``CLIENT INFO`` shows the address it is connected to), and the
worker's scripts took the expected path (the lean wire socket only for plain TCP, with or
without a static password; redis-py otherwise). Also: ``repr`` and errors never show a
password, clients the async side cannot reproduce are refused at construction, and
``replicas=N`` turns a missing replica acknowledgement into a transient error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import dramatiq
import pytest
import redis
import redis.cluster
from dramatiq.brokers.redis import RedisBroker

from aioworkflow import Chain, Group, RedisStore, State, Workflow, WorkflowMiddleware
from aioworkflow._store import _redis as _redis_module
from aioworkflow.errors import ConfigurationError, StoreConnectionError, StoreError
from tests._servers import (
    SERVICE,
    redis_has_tls,
    start_replica,
    start_sentinel_set,
    start_tls_redis,
    stop,
    wait_until,
)
from tests.conftest import rabbitmq_broker, start_redis

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import RedisServer

PASSWORD = "s3cret-Pa55word"
ACL_USER, ACL_PASSWORD = "alice", "al1ce-Pa55word"


@pytest.fixture
def started() -> Iterator[list[RedisServer]]:
    """redis-servers a test starts: killed and their directories removed at teardown."""
    out: list[RedisServer] = []
    yield out
    for s in out:
        stop(s)
        shutil.rmtree(s.workdir, ignore_errors=True)


async def run_workflow(store: RedisStore, broker: dramatiq.Broker) -> None:
    """A chain around a group, run by an in-process worker: it must SUCCEED."""
    broker.add_middleware(WorkflowMiddleware(store))
    dramatiq.set_broker(broker)
    queue = f"conn_{uuid.uuid4().hex[:8]}"

    def add(x: int, *piped: Any) -> int:
        return x + sum(p for p in piped if isinstance(p, int))

    task = dramatiq.actor(broker=broker, actor_name=queue, queue_name=queue)(add)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        canvas = Chain(task.message(1), Group(task.message(2), task.message(3)), task.message(4))
        handle = await Workflow(canvas).run(broker=broker, store=store)
        status = await handle.wait(timeout=30)
        assert status.state is State.SUCCEEDED, status
        assert status.succeeded == 4
    finally:
        worker.stop()
        broker.close()


async def async_side_reaches(store: RedisStore, admin: Any) -> str:
    """The async driver writes a marker key that ``admin`` (a client of the server the test
    started) reads back; returns the async connection's ``CLIENT INFO`` line."""
    key, value = f"marker:{uuid.uuid4().hex}", uuid.uuid4().hex.encode()
    client = store.aio()._client
    await client.set(key, value)
    assert admin.get(key) == value, "the async side wrote to another server"
    if store.cluster:  # the marker's node is the proof; CLIENT INFO has no key to route by
        return ""
    info: Any = await client.execute_command("CLIENT", "INFO")
    return info.decode() if isinstance(info, bytes) else str(info)


def wire_used(store: RedisStore) -> bool:
    """Whether the worker's hot scripts went through the lean socket path (it opened one)."""
    wire = store.sync._wire
    return wire is not None and bool(wire._open)


def _client_of(kind: str, server: RedisServer, extra: dict[str, Any]) -> Any:
    if kind == "tcp":
        return redis.Redis(port=server.port)
    if kind == "password":
        return redis.Redis(port=server.port, password=PASSWORD)
    if kind == "acl":
        return redis.Redis(port=server.port, username=ACL_USER, password=ACL_PASSWORD)
    if kind == "provider":
        provider = redis.UsernamePasswordCredentialProvider(ACL_USER, ACL_PASSWORD)
        return redis.Redis(port=server.port, credential_provider=provider)
    if kind == "unix":
        return redis.Redis(unix_socket_path=extra["socket"], password=PASSWORD)
    if kind == "tls":
        return redis.Redis(
            host="127.0.0.1", port=extra["tls_port"], ssl=True, ssl_ca_certs=extra["cert"],
            password=PASSWORD,
        )  # fmt: skip
    raise AssertionError(kind)


#: kind -> whether the worker's scripts may take the wire path
KINDS = {
    "tcp": True,
    "password": True,
    "acl": True,
    "provider": False,
    "unix": False,
    "tls": False,
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_workflow_runs_over_each_kind_of_client(
    kind: str, started: list[RedisServer]
) -> None:
    # Given a private server (a password for everyone but "tcp"; an ACL user for acl/provider)
    extra: dict[str, Any] = {}
    workdir = tempfile.mkdtemp(prefix="aiowf-conn-")
    if kind == "tls":
        if not redis_has_tls():  # pragma: no cover - depends on the Redis build
            pytest.fail("this redis-server has no TLS support (not linked with libssl)")
        server, extra["tls_port"], extra["cert"] = start_tls_redis(workdir)
    elif kind == "unix":
        extra["socket"] = os.path.join(workdir, "redis.sock")
        server = start_redis("--unixsocket", extra["socket"], "--unixsocketperm", "700",
                             workdir=workdir)  # fmt: skip
    else:
        server = start_redis(workdir=workdir)
    started.append(server)
    admin = redis.Redis(port=server.port)
    if kind != "tcp":
        admin.acl_setuser(ACL_USER, enabled=True, passwords=[f"+{ACL_PASSWORD}"],
                          keys=["*"], channels=["*"], commands=["+@all"])  # fmt: skip
        admin.config_set("requirepass", PASSWORD)
        admin.close()
        admin = redis.Redis(port=server.port, password=PASSWORD)
    client = _client_of(kind, server, extra)
    # When a store is built on that client
    store = RedisStore(client=client)
    try:
        # Then the async side reaches the same server, over the same transport
        info = await async_side_reaches(store, admin)
        if kind == "tls":
            assert f"laddr=127.0.0.1:{extra['tls_port']}" in info, info
        elif kind == "unix":
            assert f"laddr={extra['socket']}" in info, info
        else:
            assert f"laddr=127.0.0.1:{server.port}" in info, info
        if kind in ("acl", "provider"):
            assert f"user={ACL_USER}" in info, info
        # and a workflow runs end to end (ready mode: RabbitMQ), on the expected script path
        await run_workflow(store, rabbitmq_broker())
        assert wire_used(store) is KINDS[kind]
        # and nothing prints the password
        assert PASSWORD not in repr(store)
        assert ACL_PASSWORD not in repr(store)
    finally:
        await store.aclose()
        store.close()
        admin.close()


async def test_the_wire_path_authenticates_and_falls_back_when_auth_is_wrong(
    started: list[RedisServer],
) -> None:
    # Given a server with a password, and a client with the wrong one
    server = start_redis()
    started.append(server)
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", PASSWORD)
    store = RedisStore(client=redis.Redis(port=server.port, password="wrong-" + PASSWORD))
    try:
        # When the worker's path runs a script, it fails with a typed error, not a hang
        with pytest.raises(StoreError, match=r"AUTH|WRONGPASS|invalid") as caught:
            store.sync.claim("nope", 0, "m", [])
        # Then the message names the failure but never the password
        assert "wrong-" + PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(store)
    finally:
        store.close()
        admin.close()


async def test_sentinel_master_client_direct_mode(started: list[RedisServer]) -> None:
    # Given a primary, a replica and three sentinels
    sset = start_sentinel_set()
    try:
        master = sset.sentinel().master_for(SERVICE)
        store = RedisStore(client=master)
        admin = redis.Redis(port=sset.primary.port)
        try:
            # Then the async side is a Sentinel-managed client of the same primary
            info = await async_side_reaches(store, admin)
            assert f"laddr=127.0.0.1:{sset.primary.port}" in info, info
            assert "Sentinel" in type(store.aio()._client.connection_pool).__name__
            # and a workflow runs with dramatiq's RedisBroker on the same Sentinel (direct)
            sentinel = sset.sentinel()
            broker = RedisBroker(client=sentinel.master_for(SERVICE))  # type: ignore[no-untyped-call]
            assert store.shares_server(broker.client)
            await run_workflow(store, broker)
            assert not wire_used(store)  # the wire path cannot follow a failover
            assert "redis+sentinel://" in repr(store)
            for s in sentinel.sentinels:
                s.close()
        finally:
            await store.aclose()
            store.close()
            admin.close()
            for s in master.connection_pool.sentinel_manager.sentinels:
                s.close()
    finally:
        sset.close()


async def test_sentinel_url_form(started: list[RedisServer]) -> None:
    sset = start_sentinel_set()
    try:
        hosts = ",".join(f"{h}:{p}" for h, p in sset.addresses)
        store = RedisStore(url=f"redis+sentinel://{hosts}/{SERVICE}/0")
        admin = redis.Redis(port=sset.primary.port)
        try:
            await async_side_reaches(store, admin)
            await run_workflow(store, rabbitmq_broker())
        finally:
            await store.aclose()
            store.close()
            admin.close()
    finally:
        sset.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:1",  # no service
        "redis+sentinel://127.0.0.1/service",  # no port
        f"http://user:{PASSWORD}@127.0.0.1:6379/0",  # unknown scheme
        f"redis://user:{PASSWORD}@127.0.0.1:notaport/0",  # malformed port
    ],
)
def test_bad_urls_raise_a_redacted_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisStore(url=url)
    assert PASSWORD not in str(caught.value)


def test_repr_never_shows_a_password() -> None:
    for store in (
        RedisStore(url=f"redis://bob:{PASSWORD}@127.0.0.1:1/0"),
        RedisStore(url=f"rediss://:{PASSWORD}@127.0.0.1:1/0"),
        RedisStore(url=f"unix:///tmp/x.sock?password={PASSWORD}"),
        RedisStore(client=redis.Redis(port=1, password=PASSWORD)),
        RedisStore(
            url=f"redis+sentinel://bob:{PASSWORD}@127.0.0.1:1/svc?sentinel_password={PASSWORD}"
        ),
    ):
        try:
            assert PASSWORD not in repr(store), repr(store)
            assert "***" in repr(store)
            assert store.redact(f"error: AUTH {PASSWORD} failed") == "error: AUTH *** failed"
        finally:
            store.close()


def test_a_client_the_async_side_cannot_reproduce_is_refused() -> None:
    class Custom(redis.connection.Connection):
        pass

    pool = redis.ConnectionPool(connection_class=Custom, port=1)
    with pytest.raises(ConfigurationError, match="Custom"):
        RedisStore(client=redis.Redis(connection_pool=pool))
    with pytest.raises(ConfigurationError, match="redis_connect_func"):
        RedisStore(client=redis.Redis(port=1, redis_connect_func=lambda: None))
    with pytest.raises(ConfigurationError, match=r"redis\.Redis"):
        RedisStore(client=object())


# -- replicas=N -----------------------------------------------------------------------------
def test_replicas_validated() -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError):
            RedisStore(url="redis://127.0.0.1:1/0", replicas=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RedisStore(url="redis://127.0.0.1:1/0", replicas=1, replica_timeout=0)


@pytest.mark.parametrize("kind", ["wire", "redis-py"])
async def test_a_missing_replica_acknowledgement_is_a_transient_error(
    kind: str, started: list[RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # (run() retries transient errors for a minute; a second is enough to see it give up)
    monkeypatch.setattr(_redis_module, "SUBMIT_PATIENCE", 1.0)
    # Given a server without any replica and a store asking for one
    workdir = tempfile.mkdtemp(prefix="aiowf-conn-")
    sock = os.path.join(workdir, "redis.sock")
    server = start_redis("--unixsocket", sock, "--unixsocketperm", "700", workdir=workdir)
    started.append(server)
    client = redis.Redis(port=server.port) if kind == "wire" else redis.Redis(unix_socket_path=sock)
    store = RedisStore(client=client, replicas=1, replica_timeout=0.05)
    try:
        # When the worker's path runs a script
        with pytest.raises(StoreConnectionError, match="0 of 1 replica"):
            store.sync.claim("nope", 0, "m", [])
        assert (store.sync._wire is not None) is (kind == "wire")
        assert wire_used(store) is (kind == "wire")
        # and when a client submits: it is not acknowledged (raises after its retries)
        task = dramatiq.actor(broker=rabbitmq_broker(), actor_name=f"w_{uuid.uuid4().hex[:6]}")(
            lambda: None
        )
        with pytest.raises(StoreConnectionError, match="replica"):
            await Workflow(Chain(task.message())).run(broker=task.broker, store=store)
        task.broker.close()
    finally:
        await store.aclose()
        store.close()


@pytest.mark.parametrize("kind", ["wire", "redis-py"])
async def test_replicas_1_waits_for_the_replica_on_every_script(
    kind: str, started: list[RedisServer]
) -> None:
    # Given a primary with one replica, and a store with replicas=1
    workdir = tempfile.mkdtemp(prefix="aiowf-conn-")
    sock = os.path.join(workdir, "redis.sock")
    primary = start_redis("--unixsocket", sock, "--unixsocketperm", "700", workdir=workdir)
    started.append(primary)
    started.append(start_replica(primary.port))
    client = (
        redis.Redis(port=primary.port) if kind == "wire" else redis.Redis(unix_socket_path=sock)
    )
    store = RedisStore(client=client, replicas=1, replica_timeout=2)
    admin = redis.Redis(port=primary.port)
    admin.config_resetstat()
    try:
        # When a workflow runs end to end
        await run_workflow(store, rabbitmq_broker())
        # Then every script was followed by a WAIT (4 claims + 4 completions + submit + start)
        stats: Any = admin.info("commandstats")
        evals = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        waits = int(stats.get("cmdstat_wait", {}).get("calls", 0))
        assert evals >= 10, stats
        assert waits >= evals, stats
        assert wire_used(store) is (kind == "wire")
    finally:
        await store.aclose()
        store.close()
        admin.close()


def test_replicas_on_cluster_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="Cluster"):
        RedisStore(url="redis://127.0.0.1:1/0", cluster=True, replicas=1)


# -- Redis Cluster with a password ----------------------------------------------------------
@pytest.mark.cluster
async def test_cluster_with_requirepass_and_masterauth(started: list[RedisServer]) -> None:
    from tests.test_cluster import SHARDS, _cluster_ready, _distinct_ports

    cli = shutil.which("redis-cli")
    assert cli is not None, "redis-cli is needed (apt-get install redis-server)"
    ports = _distinct_ports(2 * SHARDS)
    for port, bus in zip(ports[:SHARDS], ports[SHARDS:], strict=True):
        started.append(
            start_redis(
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                *("--cluster-port", str(bus), "--cluster-node-timeout", "5000"),
                port=port,
            )
        )
    addrs = [f"127.0.0.1:{s.port}" for s in started]
    create = [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"]
    await anyio.to_thread.run_sync(
        lambda: subprocess.run(create, capture_output=True, timeout=60, check=True)
    )
    wait_until(lambda: _cluster_ready([s.port for s in started]), 30, "cluster_state:ok")
    for s in started:  # now every node wants the password, also from its peers
        with contextlib.closing(redis.Redis(port=s.port)) as c:
            c.config_set("masterauth", PASSWORD)
            c.config_set("requirepass", PASSWORD)
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=started[0].port, password=PASSWORD)
    store = RedisStore(client=client)
    try:
        await async_side_reaches(store, client)
        await run_workflow(store, rabbitmq_broker())
        assert PASSWORD not in repr(store)
        assert not wire_used(store)
    finally:
        await store.aclose()
        store.close()


@pytest.mark.parametrize("kind", ["wire", "redis-py", "async"])
async def test_connection_errors_never_show_the_password(kind: str) -> None:
    # Given a store whose URL carries a password, on a port nobody listens on
    if kind == "redis-py":  # a unix socket: the worker's scripts go through redis-py
        store = RedisStore(url=f"unix:///nonexistent/aiowf.sock?password={PASSWORD}")
    else:
        store = RedisStore(url=f"redis://bob:{PASSWORD}@127.0.0.1:1/0")
    try:
        # When a script runs on the worker's path, or the async side reads
        with pytest.raises(StoreConnectionError) as caught:
            if kind == "async":
                await store.aio().meta("x")
            else:
                store.sync.claim("x", 0, "m", [])
        # Then the error says what failed, without the password
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(caught.value)
        assert (store.sync._wire is not None) is (kind != "redis-py")
    finally:
        await store.aclose()
        store.close()
