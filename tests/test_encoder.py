"""LZ4JSONEncoder: plain and compressed formats, old messages, and total decoding of garbage.

The fuzz tests also cover the blob codec and ``Dag.decode``: only typed errors come out.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import JSONEncoder
from dramatiq.errors import DecodeError as DramatiqDecodeError
from hypothesis import HealthCheck, given, settings, strategies as st

from aioworkflow import Chain, Dag, Group, LZ4JSONEncoder, compile
from aioworkflow._codec import MAGIC, VERSION, pack, unpack
from aioworkflow._encoder import QUARANTINE_ACTOR
from aioworkflow.errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterator


def message(args: tuple[Any, ...] = (1,)) -> dict[str, Any]:
    return dramatiq.Message(
        queue_name="default", actor_name="work", args=args, kwargs={}, options={"x": 1}
    ).asdict()


class TestLZ4JSONEncoder:
    def test_reads_what_dramatiqs_json_encoder_wrote_including_nan(self) -> None:
        data = message((1, "x", math.inf))
        decoded = LZ4JSONEncoder().decode(JSONEncoder().encode(data))
        assert decoded["args"] == [1, "x", math.inf]
        nan = LZ4JSONEncoder().decode(JSONEncoder().encode(message((math.nan,))))
        assert math.isnan(nan["args"][0])

    @pytest.mark.parametrize("threshold", [0, 1 << 20])  # compressed, plain
    def test_nan_and_infinities_survive_a_round_trip(self, threshold: int) -> None:
        # orjson would write them as null; dramatiq's JSONEncoder keeps them, so must we
        enc = LZ4JSONEncoder(threshold=threshold)
        data = message((math.nan, math.inf, -math.inf, None, "n" * 300))
        encoded = enc.encode(data)
        assert (encoded[:2] == MAGIC) is (threshold == 0)
        args = enc.decode(encoded)["args"]
        assert math.isnan(args[0])
        assert args[1:4] == [math.inf, -math.inf, None]
        assert JSONEncoder().decode(JSONEncoder().encode(data))["args"][1:] == args[1:]

    def test_small_messages_stay_plain_json_large_ones_are_compressed(self) -> None:
        enc = LZ4JSONEncoder(threshold=1024)
        small_data = message((1,))
        small = enc.encode(small_data)
        assert json.loads(small) == json.loads(JSONEncoder().encode(small_data))
        big_data = message(("word " * 4000,))
        big = enc.encode(big_data)
        assert big[:2] == MAGIC
        assert len(big) < len(JSONEncoder().encode(big_data)) / 10
        assert enc.decode(big) == json.loads(JSONEncoder().encode(big_data))

    def test_compression_never_makes_a_message_bigger(self) -> None:
        import random

        rng = random.Random(7)
        data = message(("".join(rng.choice("0123456789abcdef") for _ in range(64)),))
        plain = JSONEncoder().encode(data)
        out = LZ4JSONEncoder(threshold=10).encode(data)
        assert out[:1] == b"{"  # a short random string does not compress: sent as plain JSON
        assert len(out) <= len(plain)

    def test_a_mixed_stream_of_old_and_new_messages(self) -> None:
        old, new = JSONEncoder(), LZ4JSONEncoder(threshold=64)
        items = [message((i, "p" * (i * 40))) for i in range(20)]
        stream = [(old if i % 2 else new).encode(m) for i, m in enumerate(items)]
        assert any(b[:2] == MAGIC for b in stream)
        assert any(b[:1] == b"{" for b in stream)
        assert [new.decode(b) for b in stream] == [json.loads(old.encode(m)) for m in items]

    @pytest.mark.parametrize(
        "garbage",
        [b"", b"\x00\xff", b"{not json", b"[1,2]", b'{"queue_name": "q"}', b"\xa7w\x01\x01zz",
         "text".encode("utf-16"), MAGIC + bytes((9, 0)) + b"{}"],
    )  # fmt: skip
    def test_garbage_is_dramatiqs_decode_error(self, garbage: bytes) -> None:
        with pytest.raises(DramatiqDecodeError):
            LZ4JSONEncoder().decode(garbage)

    def test_quarantine_turns_garbage_into_a_placeholder_message(self) -> None:
        fields = LZ4JSONEncoder(quarantine=True).decode(b"\x00garbage")
        msg: dramatiq.Message[Any] = dramatiq.Message(**{**fields, "args": tuple(fields["args"])})
        assert msg.actor_name == QUARANTINE_ACTOR
        assert msg.options["payload_head"] == b"\x00garbage".hex()

    def test_unencodable_ints_fall_back_to_the_stdlib(self) -> None:
        data = message((2**80,))
        assert LZ4JSONEncoder().decode(LZ4JSONEncoder().encode(data))["args"] == [2**80]


class TestFuzz:
    """Random and mutated bytes: only the typed errors ever come out."""

    _valid: ClassVar[list[bytes]] = []

    @classmethod
    def valid_inputs(cls) -> list[bytes]:
        if not cls._valid:  # built once: hypothesis needs the same inputs on every run
            dag = compile(Chain(Group(*[_task.message(i) for i in range(50)]), _task.message(0)))
            big = LZ4JSONEncoder(threshold=10).encode(message(("p" * 500,)))
            cls._valid += [dag.encode(), pack({"a": list(range(300))}), big]
            cls._valid.append(JSONEncoder().encode(message()))
        return cls._valid

    @staticmethod
    def check(data: bytes) -> None:
        _decodes(Dag.decode, data)  # any exception but DecodeError propagates and fails
        _decodes(unpack, data)
        with contextlib.suppress(DramatiqDecodeError):  # nothing else may come out
            LZ4JSONEncoder().decode(data)
        fields = LZ4JSONEncoder(quarantine=True).decode(data)
        assert isinstance(fields, dict)

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        self.check(data)
        self.check(MAGIC + bytes((VERSION, 1)) + data)

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutated_valid_inputs(self, data: st.DataObject) -> None:
        blob = bytearray(data.draw(st.sampled_from(self.valid_inputs())))
        for _ in range(data.draw(st.integers(1, 4))):
            op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
            pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
            if op == "flip" and blob:
                blob[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif op == "cut":
                del blob[pos:]
            else:
                blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        self.check(bytes(blob))


_broker = StubBroker()


@dramatiq.actor(broker=_broker)
def _task(label: Any) -> None:
    """A task for canvases (never run here)."""


def _decodes(fn: Any, data: bytes) -> bool:
    """Whether ``fn`` accepts ``data``; any exception other than DecodeError fails the test."""
    try:
        fn(data)
    except DecodeError:
        return False
    return True


@pytest.fixture
def lz4_encoder() -> Iterator[LZ4JSONEncoder]:
    before = dramatiq.get_encoder()
    encoder = LZ4JSONEncoder(threshold=256)
    dramatiq.set_encoder(encoder)
    yield encoder
    dramatiq.set_encoder(before)


def test_a_worker_runs_large_messages_through_the_encoder(lz4_encoder: LZ4JSONEncoder) -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    seen: list[int] = []
    done = threading.Event()

    @dramatiq.actor(broker=broker)
    def big(payload: str) -> None:
        seen.append(len(payload))
        done.set()

    big.send("z" * 20_000)
    raw = broker.queues["default"].get_nowait()
    assert raw[:2] == MAGIC  # what travels is compressed
    broker.queues["default"].put(raw)
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        assert done.wait(10)
    finally:
        worker.stop()
    assert seen == [20_000]


def test_a_quarantining_worker_rejects_garbage_and_goes_on() -> None:
    before = dramatiq.get_encoder()
    dramatiq.set_encoder(LZ4JSONEncoder(quarantine=True))
    broker = StubBroker()
    broker.emit_after("process_boot")
    done = threading.Event()

    @dramatiq.actor(broker=broker)
    def ok(n: int) -> None:
        done.set()

    broker.queues["default"].put(b"\xa7w\x01\x01 not a frame")  # garbage queued first
    ok.send(1)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        assert done.wait(10)  # the message behind the garbage still runs
        broker.join("default", fail_fast=False)
    finally:
        worker.stop()
        dramatiq.set_encoder(before)
    assert [m.actor_name for m in broker.dead_letters] == [QUARANTINE_ACTOR]
