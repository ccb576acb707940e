"""The plain-data codec: values cross processes as builtin objects, never as the sender's objects."""
import collections
import enum
import json
import math

import pytest

from dllm_rl.sandbox import _wire


def roundtrip(value):
    return _wire.decode(json.loads(_wire.dumps(_wire.encode(value))))


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**70, 10**5000, 1.5, "text \udcff with a lone surrogate", b"\x00\xff", bytearray(b"ab"),
    [1, [2, (3, 4)]], (1,), (), {"a": 1, (1, 2): [3], 5: {6}}, {1, (2, 3)}, frozenset({1, 2}), 3 + 4j,
], ids=lambda v: type(v).__name__)
def test_roundtrip_keeps_value_and_exact_types(value):
    out = roundtrip(value)
    assert out == value and type(out) is type(value)
    if isinstance(value, dict):
        assert all(type(k) is type(k2) for k, k2 in zip(out, value))


def test_special_floats_survive():
    out = roundtrip([math.inf, -math.inf, math.nan])
    assert out[0] == math.inf and out[1] == -math.inf and math.isnan(out[2])


def test_builtin_subclasses_arrive_as_their_plain_values():
    class Colour(enum.IntEnum):
        RED = 3

    class Liar(int):
        def __eq__(self, other):
            return True

    Point = collections.namedtuple("Point", "x y")
    out = roundtrip([Colour.RED, Liar(5), Point(1, 2), collections.OrderedDict(a=1), collections.Counter("aab")])
    assert out == [3, 5, (1, 2), {"a": 1}, {"a": 2, "b": 1}]
    assert [type(x) for x in out] == [int, int, tuple, dict, dict]
    assert out[1] != 6  # the overridden __eq__ did not travel


def test_cycles_and_foreign_objects_are_refused():
    loop = []
    loop.append(loop)
    with pytest.raises(_wire.WireError, match="cycle"):
        _wire.encode(loop)
    with pytest.raises(_wire.WireError, match="not plain data"):
        _wire.encode(object())
    assert _wire.encode(object(), lambda o: {"t": "h", "v": 1}) == {"t": "h", "v": 1}
    with pytest.raises(_wire.WireError, match="unexpected reference"):
        _wire.decode({"t": "h", "v": 1})


def test_frames_reject_oversized_and_truncated_input():
    import os

    r, w = os.pipe()
    _wire.send(w, {"x": "y" * 100})
    with pytest.raises(_wire.WireError, match="exceeds"):
        _wire.recv(r, 50)
    os.close(r), os.close(w)
    r, w = os.pipe()
    os.write(w, _wire.HEADER.pack(10) + b"{}")
    os.close(w)
    with pytest.raises(_wire.PeerGone):
        _wire.recv(r, 1000)
    os.close(r)
