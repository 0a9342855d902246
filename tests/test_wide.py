"""Wide workflows against the real store: nothing limited by Lua's ``unpack`` (~8000 values).

Driven through the stores' drivers (as the stateful test does), so that a 100,000-wide group
costs script calls, not 100,000 dramatiq deliveries.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import pytest

from aioworkflow import Chain, Group, compile
from aioworkflow._codec import pack
from aioworkflow._dag import spec_nodes
from tests.test_stateful import ENGINES, Tokened, _leaf, _run_steps, _submit_one

if TYPE_CHECKING:
    import redis

#: The width of the group before the piped step (``AIOWF_WIDE_N`` overrides it).
WIDE = int(os.environ.get("AIOWF_WIDE_N") or 100_000)


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
        for node in range(WIDE):
            assert sync.claim("w", node, f"m{node}", []).run
            released += [int(k) for k in sync.complete("w", node, pack(node), qkeys).released]
        # When the sink (released by the last branch) is claimed
        assert released == [sink]
        return sync.claim("w", sink, "sink", wanted)

    claim = asyncio.run(_run_steps(engine, redis_url, steps))
    # Then it runs with every branch's result, in definition order
    assert claim.run
    assert list(claim.results) == [pack(node) for node in wanted]
    assert wanted == list(range(WIDE))
