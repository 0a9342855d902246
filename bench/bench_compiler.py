"""Compile + encode speed and size of large canvases. Printed figures, not a timed test.

    python bench/bench_compiler.py [--quick]

Targets (issue: workflow core): a 100,000-member Group and a 100,000-node random nesting each
compile + encode in under 1 s; at most 20 encoded bytes per node for the group, plus the
message id column (the user's uuid4 ids, 16 bytes each in base64: ~21.3 bytes a node), which
only ready mode stores (direct mode: ``encode(ids=False)``).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

from aioworkflow import Chain, Group, WithDelay, compile

broker = StubBroker()


@dramatiq.actor(broker=broker)
def work(i: int) -> None:
    """A task (never run here)."""


def random_nesting(n: int, seed: int = 1) -> Any:
    """About ``n`` leaves in random nested Chains/Groups (fan-out 1-8, some delays)."""
    rng = random.Random(seed)
    counter = iter(range(n))

    def build(budget: int) -> Any:
        if budget <= 1:
            return work.message(next(counter))
        k = min(budget, rng.randint(2, 8))
        shares = [budget // k + (1 if i < budget % k else 0) for i in range(k)]
        parts = [build(s) for s in shares]
        step: Any = Chain(*parts) if rng.random() < 0.5 else Group(*parts)
        return WithDelay(step, delay=rng.randint(1, 100)) if rng.random() < 0.05 else step

    return build(n)


def best_of(repeats: int, fn: Any) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def compile_and_encode(canvas: Any, repeats: int) -> tuple[float, float, float, Any, bytes]:
    """Best-of-``repeats`` seconds for compile+encode, compile alone and encode alone."""

    def both() -> tuple[Any, bytes]:
        dag = compile(canvas)
        return dag, dag.encode()

    total, (dag, blob) = best_of(repeats, both)
    t_compile, _ = best_of(repeats, lambda: compile(canvas))
    t_encode, _ = best_of(repeats, dag.encode)
    return total, t_compile, t_encode, dag, blob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one repeat instead of best of three")
    repeats = 1 if parser.parse_args().quick else 3
    n = 100_000

    group = Group(*[work.message(i) for i in range(n)])
    secs, t_c, t_e, dag, blob = compile_and_encode(group, repeats)
    per_node = len(blob) / n
    print(f"Group({n:,}): compile+encode {secs:.3f} s [{verdict(secs < 1)}: < 1 s] "
          f"(compile {t_c:.3f} s, encode {t_e:.3f} s), {len(blob):,} B = {per_node:.1f} B/node "
          f"[{verdict(per_node <= 20 + 22)}: <= 20 + 22 for the ids]")  # fmt: skip
    bare = len(dag.encode(ids=False)) / n
    print(f"  without the id column (direct mode): {bare:.1f} B/node [{verdict(bare <= 20)}: <= 20]; "
          f"the id column: {per_node - bare:.1f} B/node")  # fmt: skip

    nested = random_nesting(n)
    secs, t_c, t_e, dag, blob = compile_and_encode(nested, repeats)
    print(f"random nesting ({len(dag):,} nodes, {dag.n_joins:,} joins, {dag.edge_count:,} edges): "
          f"compile+encode {secs:.3f} s [{verdict(secs < 1)}: < 1 s] "
          f"(compile {t_c:.3f} s, encode {t_e:.3f} s), {len(blob) / len(dag):.1f} B/node")  # fmt: skip

    gg = Chain(Group(*[work.message(i) for i in range(1000)]),
               Group(*[work.message(i) for i in range(1000)]), work.message(-1))  # fmt: skip
    dag = compile(gg)
    print(f"Chain(Group(1000), Group(1000), t): {dag.edge_count:,} edges "
          f"[{verdict(dag.edge_count <= 2000 + 1000 + 10)}: O(N+M)] "
          f"(N*M would be 1,000,000), {dag.n_joins} join nodes, "
          f"{len(dag.encode()):,} B encoded")  # fmt: skip


if __name__ == "__main__":
    main()
