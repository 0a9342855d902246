"""The blob codec: round trips, raw vs lz4 bodies, and typed errors for every bad blob."""

from __future__ import annotations

import datetime
import math
from typing import Any

import lz4.frame
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from aioworkflow._codec import (
    COMPRESS_MIN,
    MAGIC,
    VERSION,
    has_nonfinite,
    inflate,
    pack,
    unpack,
    unpack_body,
)
from aioworkflow.errors import DecodeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=50)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.text(max_size=10), children, max_size=8),
    max_leaves=40,
)  # fmt: skip


class _Float(float):
    """A float subclass (marshal refuses it)."""


RAW = MAGIC + bytes((VERSION, 0))
LZ4 = MAGIC + bytes((VERSION, 1))


class TestRoundTrip:
    @settings(max_examples=300)
    @given(json_values, st.sampled_from([None, True, False]))
    def test_any_json_value_round_trips_raw_or_compressed(
        self, value: Any, compress: bool | None
    ) -> None:
        blob = pack(value, compress=compress)
        if compress is not None:
            assert blob[:4] == (LZ4 if compress else RAW)
        assert unpack(blob) == value

    def test_small_bodies_are_raw_and_large_ones_compressed(self) -> None:
        small, large = pack([1, 2]), pack(["abc" * 100])
        assert small == RAW + b"[1,2]"
        assert large[:4] == LZ4
        assert len(large) < len(b"abc" * 100) / 2
        assert pack("x" * (COMPRESS_MIN - 3))[:4] == RAW  # 'x'*(MIN-3) is MIN-1 bytes of JSON
        assert pack("x" * (COMPRESS_MIN - 2))[:4] == LZ4

    @pytest.mark.parametrize("compress", [True, False])
    def test_nan_infinities_and_big_ints_survive(self, compress: bool) -> None:
        # orjson would write NaN as null and refuse 2**80; dramatiq's JSON keeps both
        value = unpack(
            pack([math.nan, math.inf, -math.inf, 2**80, None, "x" * 200], compress=compress)
        )
        assert math.isnan(value[0])
        assert value[1:] == [math.inf, -math.inf, 2**80, None, "x" * 200]

    def test_a_value_no_json_encoder_handles_is_a_type_error(self) -> None:
        with pytest.raises(TypeError):
            pack([object()])
        with pytest.raises(TypeError):
            pack({(1, 2): math.nan})

    @pytest.mark.parametrize("compress", [True, False])
    def test_unpack_body_gives_the_json_bytes(self, compress: bool) -> None:
        value = {"a": list(range(100))}
        assert unpack_body(pack(value, compress=compress)) == orjson.dumps(value)

    @settings(max_examples=300)
    @given(
        st.recursive(
            st.none() | st.integers() | st.text(max_size=5) | st.floats(),
            lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=3), c, max_size=6),
            max_leaves=30,
        )
    )
    def test_has_nonfinite_agrees_with_a_plain_walk(self, value: Any) -> None:
        def walk(v: Any) -> bool:
            if isinstance(v, float):
                return not math.isfinite(v)
            if isinstance(v, list):
                return any(map(walk, v))
            return isinstance(v, dict) and any(map(walk, v.values()))

        assert has_nonfinite(value) is walk(value)

    @pytest.mark.parametrize(
        "value",
        [0.0, -0.0, 1.5, -2.5, 1e308, -1e308, 5e-324, 1.7976931348623157e308, math.nan,
         -math.nan, math.inf, -math.inf],
    )  # fmt: skip
    def test_has_nonfinite(self, value: float) -> None:
        expected = not math.isfinite(value)
        # marshal's fast path, among negative ints (FF bytes) and strings ending in "g"
        assert has_nonfinite({"a": [-1, "g", (2, {"b": value}), -(2**31)]}) is expected
        # the slow path: types marshal does not know
        assert has_nonfinite([datetime.date(2024, 1, 1), {"b": value}]) is expected
        assert has_nonfinite([_Float(value)]) is expected
        deep: Any = [value]
        for _ in range(3000):
            deep = [deep]
        assert has_nonfinite(deep) is expected

    def test_non_string_keys_are_written_as_strings(self) -> None:
        assert unpack(pack({1: "a"})) == {"1": "a"}


class TestBadBlobs:
    @pytest.mark.parametrize(
        ("blob", "match"),
        [
            (b"", "magic"),
            (MAGIC, "magic"),
            (b"{}", "magic"),
            (b"\xa7x\x01\x00[]", "magic"),
            (MAGIC + bytes((0, 0)) + b"[]", "version 0"),
            (MAGIC + bytes((VERSION + 1, 0)) + b"[]", f"version {VERSION + 1}"),
            (MAGIC + bytes((VERSION, 0x80)) + b"[]", "flags 0x80"),
            (MAGIC + bytes((VERSION, 0x03)) + b"[]", "flags 0x3"),
            (RAW + b"[1,", "JSON"),
            (RAW + b"[1] [2]", "JSON"),
            (RAW + b"[" * 100_000, "JSON"),  # nested beyond any parser's depth
            (RAW + b"", "JSON"),
            (RAW + b"\xff\xfe", "JSON"),
            (LZ4 + b"not a frame", "lz4"),
            (LZ4, "lz4"),
        ],
    )
    def test_is_a_decode_error_that_says_why(self, blob: bytes, match: str) -> None:
        with pytest.raises(DecodeError, match=match) as info:
            unpack(blob)
        # keeps the head of the offending bytes: the blob, or the lz4 frame inside it
        assert info.value.data in (blob[:64], blob[4:68])

    def test_a_non_bytes_argument(self) -> None:
        with pytest.raises(DecodeError, match="expected bytes, got str"):
            unpack("\xa7w\x01\x00[]")  # type: ignore[arg-type]

    def test_the_cause_is_kept(self) -> None:
        with pytest.raises(DecodeError) as info:
            unpack(RAW + b"[1,")
        assert isinstance(info.value.__cause__, orjson.JSONDecodeError)

    @pytest.mark.parametrize("compress", [True, False])
    def test_every_truncation_is_rejected(self, compress: bool) -> None:
        blob = pack({"nodes": list(range(200))}, compress=compress)
        for cut in range(len(blob)):
            with pytest.raises(DecodeError):
                unpack(blob[:cut])

    def test_a_corrupt_frame_fails_its_checksum(self) -> None:
        blob = bytearray(pack(["word"] * 500, compress=True))
        blob[-6] ^= 0x01  # inside the last block or the checksum: must not decode silently
        with pytest.raises(DecodeError, match="lz4"):
            unpack(bytes(blob))

    def test_trailing_bytes_after_a_frame(self) -> None:
        blob = pack(list(range(1000)), compress=True)
        with pytest.raises(DecodeError, match="trailing"):
            unpack(blob + b"xx")
        with pytest.raises(DecodeError, match="trailing"):  # a second, valid frame
            unpack(blob + blob[4:])


class TestBombs:
    @pytest.mark.parametrize("store_size", [True, False])
    def test_inflating_is_capped_with_or_without_a_declared_size(self, store_size: bool) -> None:
        body = b"[" + b"0," * 5_000_000 + b"0]"
        frame = lz4.frame.compress(body, store_size=store_size)
        assert len(frame) < 100_000  # 10 MB from a small frame
        with pytest.raises(DecodeError, match="beyond 1048576 bytes"):
            unpack(LZ4 + frame, limit=1 << 20)
        with pytest.raises(DecodeError, match="beyond 1000 bytes"):
            inflate(frame, 1000)

    @pytest.mark.parametrize("store_size", [True, False])
    def test_the_cap_is_inclusive(self, store_size: bool) -> None:
        body = orjson.dumps(list(range(5000)))
        frame = lz4.frame.compress(body, store_size=store_size)
        assert inflate(frame, len(body)) == body
        with pytest.raises(DecodeError, match="beyond"):
            inflate(frame, len(body) - 1)
        assert unpack(LZ4 + frame, limit=len(body)) == list(range(5000))
