"""LZ4JSONEncoder vs dramatiq's JSONEncoder: encode+decode speed and size. Printed figures.

    python bench/bench_encoder.py [--quick]

Target (issue: workflow core): not slower than JSONEncoder on a ~200 B and a ~20 KB message.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import dramatiq
from dramatiq.encoder import Encoder, JSONEncoder

from aioworkflow import LZ4JSONEncoder


def sample(size: int) -> dict[str, Any]:
    """A realistic message: mixed args, a kwargs dict, dramatiq options; about ``size`` bytes."""
    rows = [
        {"id": i, "name": f"item-{i}", "tags": ["a", "b"], "score": i * 0.5} for i in range(2000)
    ]
    args: list[Any] = [42, "report"]
    msg: dramatiq.Message[Any] = dramatiq.Message(queue_name="default", actor_name="process", args=tuple(args),
                           kwargs={}, options={"max_retries": 3})  # fmt: skip
    base = len(JSONEncoder().encode(msg.asdict()))
    kwargs: dict[str, Any] = {"rows": []}
    while base + len(JSONEncoder().encode({"rows": kwargs["rows"]})) < size:
        kwargs["rows"].append(rows[len(kwargs["rows"]) % len(rows)])
    return dramatiq.Message(queue_name="default", actor_name="process", args=tuple(args),
                            kwargs=kwargs, options={"max_retries": 3}).asdict()  # fmt: skip


def per_op(encoder: Encoder, data: dict[str, Any], repeats: int, loops: int) -> float:
    """Median seconds per encode+decode."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            encoder.decode(encoder.encode(data))
        times.append((time.perf_counter() - t0) / loops)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    repeats = 3 if quick else 7
    json_enc, lz4_enc = JSONEncoder(), LZ4JSONEncoder()
    for size, loops, null in ((200, 20_000, False), (20_000, 500, False), (20_000, 500, True)):
        data = sample(size)
        if null:  # a null makes the encoder look for NaN/Infinity, which orjson writes as null
            data["kwargs"]["extra"] = None
        loops = loops // 5 if quick else loops
        plain = json_enc.encode(data)
        packed = lz4_enc.encode(data)
        t_json = per_op(json_enc, data, repeats, loops)
        t_lz4 = per_op(lz4_enc, data, repeats, loops)
        print(f"{len(plain):>6,} B message{' with a null' if null else ''}: JSONEncoder {t_json * 1e6:8.1f} us, "
              f"LZ4JSONEncoder {t_lz4 * 1e6:8.1f} us per encode+decode "
              f"-> speed {t_json / t_lz4:.2f}x (target >= 1), "
              f"size {len(packed):,} B = {len(packed) / len(plain):.2f} of JSON")  # fmt: skip


if __name__ == "__main__":
    main()
