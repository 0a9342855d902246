"""Replica-acknowledged writes (``RedisStore(replicas=N)``): a script, then ``WAIT N timeout``.

Redis replicates asynchronously: a primary that dies right after a script replied may take
that write with it, and the replica promoted in its place never saw it. ``WAIT N timeout``,
sent on the *same connection* right after the script, returns how many replicas have
acknowledged every write up to that point (the replication offset is global, so the writes
a submission made on other pooled connections before its final script are covered too). A
reply below N is a transient failure: the caller does not count the operation as done (a
submission is retried with its idempotency token, a worker does not ack the delivery), so
it is repeated — every script being idempotent — until a replica holds it.

redis-py: EVALSHA and WAIT go in one non-transactional pipeline (one round trip); a NOSCRIPT
reply loads the script and tries once more. The wire path sends both packets back to back
(``_wire.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions

from aioworkflow.errors import ConfigurationError, StoreConnectionError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Wait"]


@dataclass(frozen=True, slots=True)
class Wait:
    """``WAIT replicas timeout_ms`` after every script."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, replicas: int, timeout: float) -> Wait | None:
        """The WAIT a store's options ask for, or None (``replicas=0``: no WAIT).

        Raises:
            ConfigurationError: a negative count or a non-positive timeout.
        """
        if type(replicas) is not int or replicas < 0:  # (bool is not a count)
            raise ConfigurationError(f"replicas must be an int >= 0, not {replicas!r}")
        if not timeout > 0:
            raise ConfigurationError(f"replica_timeout must be > 0 seconds, not {timeout!r}")
        return cls(replicas, max(1, int(timeout * 1000))) if replicas else None

    @property
    def args(self) -> tuple[str, int, int]:
        """The command, as redis-py's ``execute_command`` takes it."""
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, acked: Any) -> None:
        """Raise a transient error when fewer than ``replicas`` acknowledged.

        Raises:
            StoreConnectionError: the write is not (yet) on enough replicas.
        """
        if int(acked) < self.replicas:
            raise StoreConnectionError(
                f"WAIT: {int(acked)} of {self.replicas} replica(s) acknowledged the write "
                f"within {self.timeout_ms} ms; it is not counted as done"
            )


def run_sync(client: Any, script: Any, keys: Sequence[Any], args: Sequence[Any], wait: Wait) -> Any:
    """EVALSHA ``script`` then WAIT on one connection (redis-py pipeline)."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.execute_command(*wait.args)
        try:
            reply, acked = pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            client.script_load(script.script)
            continue
        wait.check(acked)
        return reply
    raise AssertionError("unreachable")  # pragma: no cover


async def run_async(
    client: Any, script: Any, keys: Sequence[Any], args: Sequence[Any], wait: Wait
) -> Any:
    """EVALSHA ``script`` then WAIT on one connection (redis.asyncio pipeline)."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.execute_command(*wait.args)
        try:
            reply, acked = await pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            await client.script_load(script.script)
            continue
        wait.check(acked)
        return reply
    raise AssertionError("unreachable")  # pragma: no cover
