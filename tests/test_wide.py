"""Wide workflows against the real store: nothing limited by Lua's ``unpack`` (~8000 values).

Driven through the stores' drivers (as the stateful test does), so that a 100,000-wide group
costs script calls, not 100,000 dramatiq deliveries.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import pytest

from aioworkflow import Chain, Group, _protocol as p, compile
from aioworkflow._codec import pack
from aioworkflow._dag import spec_nodes
from tests.test_stateful import ENGINES, Tokened, _leaf, _run_steps, _submit_one, token_for

if TYPE_CHECKING:
    import redis

#: The width of the group before the piped step (``AIOWF_WIDE_N`` overrides it).
WIDE = int(os.environ.get("AIOWF_WIDE_N") or 100_000)


def _claim_and_complete_all(sync: Tokened, qkeys: list[str]) -> list[int]:
    """Claim and complete nodes 0..WIDE-1 of "w" with the same scripts as the sync driver, in
    pipelines of 1,000 (one script call per round trip would take half a minute)."""
    driver: Any = sync._driver  # its own client and scripts
    token = token_for("w")
    released: list[int] = []
    for lo in range(0, WIDE, 1000):
        pipe = driver._client.pipeline(transaction=False)
        for node in range(lo, min(WIDE, lo + 1000)):
            for call in (
                p.claim_call("w", node, f"m{node}", [], token),
                p.complete_call("w", node, pack(node), qkeys, None, 0, token),
            ):
                driver._scripts[call.script](keys=call.keys, args=call.args, client=pipe)
        replies = pipe.execute()
        for claim, done in zip(replies[::2], replies[1::2], strict=True):
            assert p.parse_claim(claim).run
            released += [int(k) for k in p.parse_complete(done).released]
    return released


@pytest.mark.parametrize("engine", ENGINES)
def test_a_piped_step_after_a_wide_group_gets_every_input(
    redis_client: redis.Redis, redis_url: str, engine: str
) -> None:
    """claim.lua fetched the piped results with one ``HMGET ... unpack(ARGV, 5)``, which fails
    past ~8000 values: a piped step after a 9,000-wide group never ran."""
    canvas = Chain(Group(*(_leaf.message(i) for i in range(WIDE))), _leaf.message(-1), pipe=True)
    dag = compile(canvas)
    sink = len(dag) - 1
    wanted = spec_nodes(dag.pipes[sink])
    assert len(wanted) == WIDE

    async def steps(sync: Tokened, aio: Any, engine: str, _: list[str]) -> Any:
        # Given a running Chain(Group(WIDE leaves), sink, pipe=True) whose branches all succeeded
        qkeys = await _submit_one(aio, engine, canvas)
        released: list[int] = []
        if engine == "memory":
            for node in range(WIDE):
                assert sync.claim("w", node, f"m{node}", []).run
                released += [int(k) for k in sync.complete("w", node, pack(node), qkeys).released]
        else:
            released = _claim_and_complete_all(sync, qkeys)
        # When the sink (released by the last branch) is claimed
        assert released == [sink]
        return sync.claim("w", sink, "sink", wanted)

    claim = asyncio.run(_run_steps(engine, redis_url, steps))
    # Then it runs with every branch's result, in definition order
    assert claim.run
    assert list(claim.results) == [pack(node) for node in wanted]
    assert wanted == list(range(WIDE))
