"""Canonical msgpack encoding shared by every lattice type.

Equal values give identical bytes on every run and platform: collections are emitted in the
order of their elements' own canonical bytes, never in dict or set iteration order, and floats
are always float64. Decoding is strict and raises `DecodeError` naming what was wrong; it
refuses documents nested deeper than `MAX_DEPTH` arrays, so no decoder recurses unboundedly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from crdtd.errors import DecodeError, LatticeValueError

Value = Any  # None | bool | int | float | str | bytes | tuple[Value, ...]

_DECODERS: dict[str, Callable[[list[Any]], Any]] = {}
T = TypeVar("T")

MAX_INT = 2**63 - 1
INT64_MIN = -(2**63)
MAX_DEPTH = 64
"""Deepest nesting of arrays (and maps) a lattice encoding or a canonical value may have."""


def pack(obj: Any) -> bytes:
    """Canonical msgpack bytes for an already-canonical object tree."""
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False)


def unpack(data: bytes) -> Any:
    """Strict msgpack decode: one object, no trailing bytes, arrays as lists, bounded depth."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except msgpack.StackError:
        raise DecodeError(f"lattice bytes nested deeper than {MAX_DEPTH} levels") from None
    except (msgpack.ExtraData, msgpack.FormatError, ValueError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    except Exception as exc:  # msgpack raises a few non-ValueError types on garbage
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    if _depth(obj) > MAX_DEPTH:
        raise DecodeError(f"lattice bytes nested deeper than {MAX_DEPTH} levels")
    return obj


def _depth(obj: Any) -> int:
    """Nesting depth of arrays and maps, found without recursion (the input may be hostile)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in o)
        elif isinstance(o, dict):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for kv in o.items() for x in kv)
    return deepest


def canon_value(v: Any, where: str = "value", depth: int = 1) -> Value:
    """Normalise a user value to the canonical form (lists become tuples); reject the rest."""
    if v is None or isinstance(v, bool | str | bytes):
        return v
    if isinstance(v, int):
        if not INT64_MIN <= v <= 2**64 - 1:
            raise DecodeError(f"{where}: integer {v} does not fit in 64 bits")
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, list | tuple):
        if depth > MAX_DEPTH:
            raise LatticeValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        return tuple(canon_value(x, where, depth + 1) for x in v)
    raise DecodeError(
        f"{where}: unsupported type {type(v).__name__} (use None, bool, int, float, str, bytes or tuples)"
    )


def value_key(v: Value) -> bytes:
    """Sort key for canonical values: their own canonical bytes (a total order)."""
    return pack(_value_obj(v))


def _value_obj(v: Value) -> Any:
    if isinstance(v, tuple):
        return [_value_obj(x) for x in v]
    return v


def value_to_obj(v: Value) -> Any:
    """Object tree for a canonical value (tuples as arrays)."""
    return _value_obj(v)


def value_from_obj(obj: Any, where: str) -> Value:
    """Inverse of `value_to_obj` with validation."""
    if isinstance(obj, dict):
        raise DecodeError(f"{where}: maps are not canonical values")
    return canon_value(obj, where)


def register_decoder(tag: str, fn: Callable[[list[Any]], T]) -> None:
    """Register the decoder for a lattice type tag (used for nested lattices)."""
    _DECODERS[tag] = fn


_LAZY_TAGS = frozenset({"hll", "theta", "kll", "fi"})
"""Tags of the sketch lattices, whose module (and DataSketches) loads on first decode."""


def _load_sketches() -> None:
    try:
        import crdtd.lattice.sketches  # noqa: F401  (registers the sketch decoders)
    except ImportError as exc:
        raise DecodeError(f"sketch values need DataSketches: {exc}") from None


def decode_obj(obj: Any, where: str = "lattice") -> Any:
    """Decode a tagged object tree `[tag, ...]` into its lattice value."""
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise DecodeError(f"{where}: expected a tagged array [tag, ...], got {type(obj).__name__}")
    fn = _DECODERS.get(obj[0])
    if fn is None and obj[0] in _LAZY_TAGS:
        _load_sketches()
        fn = _DECODERS.get(obj[0])
    if fn is None:
        raise DecodeError(f"{where}: unknown lattice tag {obj[0]!r}")
    return fn(obj)


def expect_list(obj: Any, n: int | None, where: str) -> list[Any]:
    """Check `obj` is an array (of length n when given)."""
    if not isinstance(obj, list):
        raise DecodeError(f"{where}: expected an array, got {type(obj).__name__}")
    if n is not None and len(obj) != n:
        raise DecodeError(f"{where}: expected {n} fields, got {len(obj)}")
    return obj


def expect_str(obj: Any, where: str) -> str:
    if not isinstance(obj, str):
        raise DecodeError(f"{where}: expected a string, got {type(obj).__name__}")
    return obj


def expect_uint(obj: Any, where: str) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or obj < 0 or obj > MAX_INT:
        raise DecodeError(f"{where}: expected a non-negative integer, got {obj!r}")
    return obj


def expect_int(obj: Any, where: str) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise DecodeError(f"{where}: expected an integer, got {obj!r}")
    return obj


def check_amount(by: Any, where: str) -> int:
    """An increment amount: a non-negative int that fits in 63 bits (LatticeValueError)."""
    if isinstance(by, bool) or not isinstance(by, int) or not 0 <= by <= MAX_INT:
        raise LatticeValueError(f"{where}: amount must be an integer in [0, 2**63 - 1], got {by!r}")
    return by


def expect_sorted_unique(keys: list[bytes], where: str) -> None:
    """Canonical collections are strictly increasing by key; anything else is non-canonical."""
    for i in range(1, len(keys)):
        if keys[i - 1] >= keys[i]:
            raise DecodeError(f"{where}: elements not in canonical order or duplicated")


def check_header(obj: list[Any], tag: str, n: int, where: str) -> list[Any]:
    """Validate `[tag, ...fields]` with exactly n fields after the tag."""
    expect_list(obj, None, where)
    if not obj or obj[0] != tag:
        got = repr(obj[0])[:40] if obj else "nothing"
        raise DecodeError(f"{where}: expected tag {tag!r}, got {got}")
    expect_list(obj, n + 1, where)
    return obj[1:]
