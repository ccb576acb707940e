"""Plain-data codec and length-prefixed framing shared by the parent, the harness and the program process.

Stdlib only: the two child scripts import this file by path. Values cross process boundaries as
JSON with tagged containers, so the receiving side rebuilds genuine builtin objects (never objects
whose methods the sender controls). Objects that are not plain data travel as opaque references
produced by a caller-supplied hook."""
from __future__ import annotations

import json
import os
import select
import struct
import time

MAX_DEPTH = 200
BIG_INT_BITS = 12_000
HEADER = struct.Struct(">I")


class WireError(Exception):
    """A value cannot be encoded, or a frame is malformed, too large or cut off."""


class PeerGone(WireError):
    """The other end closed its pipe (it exited or was killed)."""


class WireTimeout(WireError):
    """No complete frame arrived before the deadline."""


def _plain(obj, ref, depth, path):
    """``obj`` as JSON-ready data: scalars as themselves, containers as {"t": tag, "v": ...}."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is str:
        return obj
    if t is float:
        return obj
    if isinstance(obj, int):  # int subclasses (IntEnum, ...) travel as their underlying integer
        value = int.__int__(obj)
        # JSON writes ints in decimal, which Python caps at 4300 digits; huge ints travel in hex
        return value if value.bit_length() <= BIG_INT_BITS else {"t": "i", "v": hex(value)}
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, complex):
        return {"t": "c", "v": [complex.real.__get__(obj), complex.imag.__get__(obj)]}
    if isinstance(obj, (bytes, bytearray)):
        return {"t": "b" if isinstance(obj, bytes) else "ba", "v": bytes(obj).decode("latin-1")}
    key = id(obj)
    if key in path:
        raise WireError("value contains a reference cycle")
    path.add(key)
    try:
        if isinstance(obj, list):
            return {"t": "l", "v": [_plain(x, ref, depth + 1, path) for x in list.__iter__(obj)]}
        if isinstance(obj, tuple):
            return {"t": "u", "v": [_plain(x, ref, depth + 1, path) for x in tuple.__iter__(obj)]}
        if isinstance(obj, dict):
            return {"t": "d", "v": [[_plain(k, ref, depth + 1, path), _plain(v, ref, depth + 1, path)]
                                    for k, v in dict.items(obj)]}
        if isinstance(obj, frozenset):
            return {"t": "f", "v": [_plain(x, ref, depth + 1, path) for x in frozenset.__iter__(obj)]}
        if isinstance(obj, set):
            return {"t": "s", "v": [_plain(x, ref, depth + 1, path) for x in set.__iter__(obj)]}
    finally:
        path.discard(key)
    if ref is not None:
        out = ref(obj)
        if out is not None:
            return out
    raise WireError(f"a {t.__name__} is not plain data")


def encode(obj, ref=None):
    """JSON-ready form of ``obj``; ``ref(obj)`` may return a reference dict for non-plain objects."""
    return _plain(obj, ref, 0, set())


def decode(data, deref=None):
    """Rebuild builtin objects from :func:`encode` output; ``deref(tag, value)`` resolves references."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, dict) or "t" not in data:
        raise WireError("malformed value")
    tag, v = data["t"], data.get("v")
    if tag == "l":
        return [decode(x, deref) for x in v]
    if tag == "u":
        return tuple(decode(x, deref) for x in v)
    if tag == "d":
        return {decode(k, deref): decode(x, deref) for k, x in v}
    if tag == "s":
        return {decode(x, deref) for x in v}
    if tag == "f":
        return frozenset(decode(x, deref) for x in v)
    if tag == "i":
        return int(v, 16)
    if tag == "c":
        return complex(float(v[0]), float(v[1]))
    if tag == "b":
        return v.encode("latin-1")
    if tag == "ba":
        return bytearray(v.encode("latin-1"))
    if deref is not None:
        return deref(tag, v)
    raise WireError(f"unexpected reference {tag!r}")


def dumps(message) -> bytes:
    return json.dumps(message, allow_nan=True, separators=(",", ":")).encode("utf-8")


def send(fd: int, message) -> None:
    """Write one frame: 4-byte big-endian length, then the JSON bytes."""
    payload = dumps(message)
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            raise PeerGone("peer closed the pipe") from None
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WireTimeout("no reply before the deadline")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise PeerGone("peer closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(fd: int, max_bytes: int, deadline: float | None = None):
    """Read one frame (at most ``max_bytes`` of JSON) before ``deadline`` (``time.monotonic()``)."""
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size, deadline))
    if size > max_bytes:
        raise WireError(f"frame of {size} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(_read_exact(fd, size, deadline))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"malformed frame: {exc}") from None
