"""Blob codec: orjson, optionally lz4-framed, behind a 4-byte versioned header. Pure.

Layout of every blob aioworkflow stores (DAGs, results)::

    byte 0-1  MAGIC  b"\\xa7w"   never the first bytes of JSON text
    byte 2    VERSION            bumped when the layout below changes
    byte 3    FLAGS              bit 0: body is an lz4 frame (with content checksum)
    byte 4-   body               orjson bytes, or an lz4 frame of them

Small bodies are stored raw: lz4 only pays off above ``COMPRESS_MIN`` bytes.
"""

from __future__ import annotations

import json
import marshal
import math
from typing import Any, cast

import lz4.frame
import orjson

from .errors import DecodeError

__all__ = [
    "COMPRESS_MIN",
    "MAGIC",
    "VERSION",
    "as_bytes",
    "dumps_json",
    "has_nonfinite",
    "inflate",
    "pack",
    "unpack",
    "unpack_body",
]

#: Leading bytes of every blob; 0xA7 is not valid UTF-8 as a first byte, so never JSON text.
MAGIC = b"\xa7w"
#: Layout version written by this release; older readers reject newer blobs.
VERSION = 1
#: Bodies shorter than this are stored raw: an lz4 frame costs about 15 bytes of overhead.
COMPRESS_MIN = 128
#: Refuse to inflate beyond this (a corrupt or hostile frame must not exhaust memory).
MAX_INFLATED = 1 << 30

_FLAG_LZ4 = 0x01


def dumps_json(obj: Any) -> bytes:
    """orjson with the options aioworkflow always uses (non-string dict keys allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def has_nonfinite(obj: Any) -> bool:
    """Whether ``obj`` holds a float NaN or infinity, which orjson silently writes as ``null``.

    Cheap callers first check for ``b"null"`` in orjson's output: no ``null``, no such float.
    This is on the encoder's hot path, so it scans ``marshal``'s bytes (C speed) and walks the
    values in Python only when those bytes might hold one, or when marshal cannot handle them.
    """
    try:
        raw = marshal.dumps(obj)
    except ValueError:  # a type marshal does not know (datetime, a subclass, deep nesting)
        return _walk_nonfinite(obj)
    return _marshal_may_hold_nonfinite(raw) and _walk_nonfinite(obj)


def _marshal_may_hold_nonfinite(raw: bytes) -> bool:
    # marshal writes an exact float as b"g" (b"\xe7" with the ref flag) and 8 bytes, little
    # endian. NaN and infinities have every exponent bit set: the last two bytes are
    # [F0-FF] [7F|FF]. So look at each 7F/FF byte only (memchr): there are few in most data.
    for marker in (0x7F, 0xFF):
        i = raw.find(marker, 8)
        while i != -1:
            if raw[i - 1] >= 0xF0 and raw[i - 8] in (0x67, 0xE7):
                return True
            i = raw.find(marker, i + 1)
    return False


def _walk_nonfinite(obj: object) -> bool:
    stack: list[object] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, list | tuple):
            stack.extend(cast("list[object] | tuple[object, ...]", item))
        elif isinstance(item, dict):
            stack.extend(cast("dict[object, object]", item).values())
    return False


def pack(obj: Any, *, compress: bool | None = None) -> bytes:
    """Encode ``obj`` as a blob.

    Args:
        obj: anything orjson or the stdlib's ``json`` encodes (NaN and infinities are kept).
        compress: force lz4 on or off; by default compress bodies of ``COMPRESS_MIN`` bytes or more.

    Raises:
        TypeError: ``obj`` holds a value JSON cannot encode (callers translate it).
    """
    try:
        body = dumps_json(obj)
        # orjson writes NaN and infinities as null: let the stdlib keep them, as dramatiq does.
        if b"null" in body and has_nonfinite(obj):
            raise TypeError("non-finite float")
    except TypeError:
        # The stdlib also writes what orjson refuses (ints beyond 64 bits); it raises TypeError
        # for values neither can encode.
        body = json.dumps(obj, separators=(",", ":")).encode()
    if compress is None:
        compress = len(body) >= COMPRESS_MIN
    if compress:
        frame: bytes = lz4.frame.compress(body, content_checksum=True, store_size=True)
        return MAGIC + bytes((VERSION, _FLAG_LZ4)) + frame
    return MAGIC + bytes((VERSION, 0)) + body


def inflate(frame: bytes, limit: int = MAX_INFLATED) -> bytes:
    """Decompress one complete lz4 frame of at most ``limit`` bytes of output.

    The cap holds whether or not the frame header declares its content size, so a hostile
    frame cannot exhaust memory.

    Raises:
        DecodeError: corrupt, truncated, trailing bytes, or inflating beyond ``limit``.
    """
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        out: bytes = decompressor.decompress(frame, max_length=limit + 1)
    except Exception as exc:  # lz4 raises RuntimeError and friends
        raise DecodeError(f"corrupt lz4 frame: {exc}", frame[:64]) from exc
    if len(out) > limit:
        raise DecodeError(f"lz4 frame inflates beyond {limit} bytes", frame[:64])
    if not decompressor.eof:
        raise DecodeError("truncated lz4 frame", frame[:64])
    if decompressor.unused_data:
        raise DecodeError("trailing bytes after the lz4 frame", frame[:64])
    return out


def as_bytes(data: object) -> bytes:
    """``data`` as ``bytes`` if it is bytes-like, else a :class:`DecodeError` (stored data
    comes from outside: a foreign key type or a client without ``decode_responses``)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(cast("bytearray | memoryview[int]", data))
    raise DecodeError(f"expected bytes, got {type(data).__name__}")


def unpack(data: bytes | bytearray | memoryview, *, limit: int = MAX_INFLATED) -> Any:
    """Decode a blob written by :func:`pack`.

    Raises:
        DecodeError: not a blob, unknown version or flags, corrupt frame, or invalid JSON.
    """
    body = unpack_body(data, limit=limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error: Exception = exc
    try:  # what pack() wrote with the stdlib: NaN, infinities, ints beyond 64 bits
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise DecodeError(f"corrupt JSON body: {error}", bytes(data[:64])) from error


def unpack_body(data: bytes | bytearray | memoryview, *, limit: int = MAX_INFLATED) -> bytes:
    """The JSON bytes of a blob written by :func:`pack` (checked header, inflated body).

    Raises:
        DecodeError: not a blob (also: not bytes at all, whatever the annotation says), unknown
            version or flags, or a corrupt frame.
    """
    data = as_bytes(data)
    if len(data) < 4 or data[:2] != MAGIC:
        raise DecodeError("not an aioworkflow blob (bad magic)", data[:64])
    version, flags = data[2], data[3]
    if version != VERSION:
        raise DecodeError(
            f"unknown blob version {version} (this release reads {VERSION})", data[:64]
        )
    if flags & ~_FLAG_LZ4:
        raise DecodeError(f"unknown blob flags {flags:#x}", data[:64])
    body = data[4:]
    if flags & _FLAG_LZ4:
        body = inflate(body, limit)
    return body
