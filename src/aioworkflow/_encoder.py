"""``LZ4JSONEncoder``: dramatiq's JSON messages, lz4-compressed when that pays off.

Install it on every process (workers and producers) before the first message is sent::

    dramatiq.set_encoder(aioworkflow.LZ4JSONEncoder())

Wire format: a message body shorter than ``threshold`` bytes is written as plain JSON, exactly
what dramatiq's own ``JSONEncoder`` reads, so mixed fleets keep working during a rollout. A
longer one is written as an aioworkflow blob (see ``_codec``): two magic bytes that never start
JSON text, a version byte, a flags byte, then an lz4 frame with a content checksum.

``decode`` reads both, so messages already queued before the switch still decode. It also
reads a bare lz4 frame of JSON, the format of the encoder dramatiq-workflow's README suggests,
so a fleet moving from that encoder switches without losing queued messages (see
``docs/migrating.md``: upgrade the consumers first, as that encoder cannot read these blobs). It is total:
any input either decodes to a message dict or raises :class:`dramatiq.errors.DecodeError` (never
a raw lz4, orjson or ``UnicodeDecodeError``), and inflating is capped at ``max_size`` bytes.

On a Redis broker, dramatiq's consumer restarts when a payload fails to decode, and the other
messages of the batch it had already fetched wait until that worker process restarts. Pass
``quarantine=True`` to decode garbage into a message for the actor ``aioworkflow.undecodable``
(which no application defines) instead: the worker logs it as an unknown actor, rejects it,
and goes on with the rest of the batch.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

import lz4.frame
import orjson
from dramatiq.encoder import Encoder, MessageData
from dramatiq.errors import DecodeError as _DramatiqDecodeError

from . import _codec
from .errors import DecodeError

__all__ = ["QUARANTINE_ACTOR", "LZ4JSONEncoder"]

#: Actor (and queue) name of the placeholder a quarantining encoder decodes garbage into.
QUARANTINE_ACTOR = "aioworkflow.undecodable"


def _decode_error(message: str, data: Any, error: BaseException) -> _DramatiqDecodeError:
    """dramatiq's ``DecodeError`` (its constructor is untyped)."""
    err: _DramatiqDecodeError = _DramatiqDecodeError(message, data, error)  # type: ignore[no-untyped-call]
    return err


#: The first bytes of an lz4 frame (never the start of JSON text, nor of an aioworkflow blob).
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"

_HEADER = _codec.MAGIC + bytes((_codec.VERSION, 0x01))
_FIELDS = frozenset(("queue_name", "actor_name", "args", "kwargs", "options", "message_id"))


class LZ4JSONEncoder(Encoder):
    """A drop-in for dramatiq's ``JSONEncoder`` that compresses large messages with lz4.

    Args:
        threshold: bodies of at least this many bytes of JSON are compressed (lz4 does not pay
            off on small messages; measured in ``bench/bench_encoder.py``).
        max_size: refuse to inflate a compressed message beyond this many bytes.
        quarantine: decode undecodable input into a placeholder message for
            :data:`QUARANTINE_ACTOR` instead of raising (see the module docstring).
    """

    def __init__(
        self, *, threshold: int = 1024, max_size: int = 64 << 20, quarantine: bool = False
    ) -> None:
        if threshold < 0 or max_size <= 0:
            raise ValueError("threshold must be >= 0 and max_size > 0")
        self.threshold = threshold
        self.max_size = max_size
        self.quarantine = quarantine

    def encode(self, data: MessageData) -> bytes:
        """Serialize message fields: plain JSON when small, an lz4 blob when large."""
        try:
            body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
            # orjson writes NaN and infinities as null; dramatiq's JSONEncoder keeps them.
            if b"null" in body and _codec.has_nonfinite(data):
                raise TypeError("non-finite float")
        except TypeError:
            # What orjson refuses (ints beyond 64 bits, NaN, ...) the stdlib may still write,
            # as dramatiq's JSONEncoder would.
            body = json.dumps(data, separators=(",", ":")).encode()
        if len(body) < self.threshold:
            return body
        frame: bytes = lz4.frame.compress(body, content_checksum=True, store_size=True)
        if len(frame) + len(_HEADER) >= len(body):
            return body
        return _HEADER + frame

    def decode(self, data: bytes) -> MessageData:
        """Read plain JSON or an lz4 blob; garbage raises dramatiq's ``DecodeError``."""
        try:
            fields = self._decode(data)
        except _DramatiqDecodeError as exc:
            if self.quarantine:
                return _placeholder(data, exc)
            raise
        return fields

    def _decode(self, data: object) -> MessageData:
        try:
            raw = _codec.as_bytes(data)  # dramatiq's brokers pass bytes; a foreign one may not
        except DecodeError as exc:
            raise _decode_error(str(exc), data, TypeError(str(exc))) from None
        try:
            if raw[:2] == _codec.MAGIC:
                body = _codec.unpack_body(raw, limit=self.max_size)
            elif raw[:4] == LZ4_FRAME_MAGIC:
                # A bare lz4 frame: what dramatiq-workflow's README encoder writes (migration).
                body = _codec.inflate(raw, self.max_size)
            else:
                body = raw
            fields: object = _loads(body)
        except DecodeError as exc:
            raise _decode_error(f"undecodable message: {exc}", raw[:64], exc) from None
        except (ValueError, RecursionError) as exc:
            raise _decode_error(f"undecodable message: {exc}", raw[:64], exc) from None
        message = cast("dict[str, Any]", fields) if isinstance(fields, dict) else None
        if message is None or not message.keys() >= _FIELDS:
            missing = sorted(_FIELDS - message.keys()) if message is not None else None
            err = ValueError(f"not a dramatiq message (missing {missing})")
            raise _decode_error(str(err), raw[:64], err)
        return message


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # dramatiq's JSONEncoder writes NaN/Infinity, which is not JSON and orjson refuses.
        return json.loads(raw.decode("utf-8"))


def _placeholder(data: object, exc: _DramatiqDecodeError) -> MessageData:
    try:
        head = _codec.as_bytes(data)[:64].hex()
    except DecodeError:
        head = ""
    return {
        "queue_name": QUARANTINE_ACTOR,
        "actor_name": QUARANTINE_ACTOR,
        "args": [],
        "kwargs": {},
        "options": {"undecodable": str(exc), "payload_head": head},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
