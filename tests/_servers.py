"""Private servers for the connection tests: TLS, unix socket, ACL, Sentinel, Cluster+auth.

Each starter returns handles whose processes the calling fixture stops; nothing here talks to
a server the test did not start.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel

from tests.conftest import RedisServer, free_port, start_redis

SERVICE = "aiowf-primary"


def stop(server: RedisServer) -> None:
    """Kill ``server`` if still running (teardown; whatever happened)."""
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(10)


def wait_until(condition: Any, seconds: float, what: str) -> None:
    """Poll ``condition`` (sync) until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- TLS ------------------------------------------------------------------------------------
def redis_has_tls() -> bool:
    """Whether this redis-server was built with TLS (``--tls-port`` accepted)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return False
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True, check=False).stdout
    return "libssl" in ldd


def make_cert(workdir: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost made with openssl: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not on PATH: install it (apt-get install openssl)")
    cert, key = str(Path(workdir) / "cert.pem"), str(Path(workdir) / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def start_tls_redis(workdir: str) -> tuple[RedisServer, int, str]:
    """A redis-server with a plain port (for the fixture's PING) and a TLS port:
    (server, tls port, CA/cert file)."""
    cert, key = make_cert(workdir)
    tls_port = free_port()
    server = start_redis(
        *("--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key),
        *("--tls-ca-cert-file", cert, "--tls-auth-clients", "no"),
        workdir=workdir,
    )
    return server, tls_port, cert


# -- Sentinel -------------------------------------------------------------------------------
@dataclass
class SentinelSet:
    """A primary, a replica and three sentinels monitoring them as :data:`SERVICE`."""

    workdir: str
    primary: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer] = field(default_factory=list)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def sentinel(self, **kwargs: Any) -> Any:
        """A redis-py Sentinel of this set."""
        factory: Any = redis.sentinel.Sentinel
        return factory(self.addresses, socket_timeout=1.0, **kwargs)

    def master_port(self) -> int:
        """The primary's port as the sentinels see it now."""
        with contextlib.closing(redis.Redis(port=self.sentinels[0].port, socket_timeout=1)) as s:
            addr: Any = s.sentinel_get_master_addr_by_name(SERVICE)
        return int(addr[1])

    def data_servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def close(self) -> None:
        for s in [*self.sentinels, self.primary, self.replica]:
            stop(s)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _linked(port: int) -> bool:
    with contextlib.closing(redis.Redis(port=port, socket_timeout=1)) as c:
        info: Any = c.info("replication")
    return bool(info.get("master_link_status") == "up")


def start_replica(primary_port: int, *extra: str, port: int | None = None) -> RedisServer:
    """A redis-server replicating ``primary_port``, once its link is up."""
    server = start_redis("--replicaof", "127.0.0.1", str(primary_port), *extra, port=port)
    wait_until(lambda: _linked(server.port), 20, f"replica {server.port} to sync")
    return server


def start_sentinel_set(
    *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000, extra: tuple[str, ...] = ()
) -> SentinelSet:
    """Start a primary, one replica and three sentinels (``redis-server --sentinel`` with a
    generated config) on free loopback ports; returns once every sentinel knows the replica
    and the two other sentinels."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server)")
    workdir = tempfile.mkdtemp(prefix="aiowf-sentinel-")
    primary = start_redis(*extra)
    replica = start_replica(primary.port, *extra)
    sset = SentinelSet(workdir, primary, replica)
    try:
        for i in range(3):
            port = free_port()
            conf = Path(workdir) / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            proc = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            sset.sentinels.append(RedisServer(port, proc, workdir))

        def known() -> bool:
            for s in sset.sentinels:
                with contextlib.closing(redis.Redis(port=s.port, socket_timeout=1)) as c:
                    run: Any = c.execute_command
                    replicas: Any = run("SENTINEL", "REPLICAS", SERVICE)
                    others: Any = run("SENTINEL", "SENTINELS", SERVICE)
                    if len(replicas) < 1 or len(others) < 2:
                        return False
            return True

        wait_until(known, 30, "the sentinels to know the replica and each other")
    except BaseException:
        sset.close()
        raise
    return sset


def sigkill(server: RedisServer) -> None:
    """SIGKILL ``server`` (no shutdown, no final sync) and reap it."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
