"""Hypothesis strategies that corrupt valid encodings, shared by every decoder fuzz test.

Random bytes rarely get past a decoder's first check, so most of these start from a valid
encoding and break it the ways real faults and attackers do: bit flips, overwritten,
inserted and deleted bytes, truncation, trailing garbage, msgpack length fields that lie,
and structural edits of the decoded tree (a field replaced by a huge int, a 1000-deep
array, a map, a NaN, a long string), applied recursively inside nested encodings (an entry's
header inside its wire form, the entries inside a proof). `toml_mutations` does the same for
config files, line by line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import strategies as st

QUICK_AND_DEEP = [
    pytest.param(60, id="quick"),
    pytest.param(2000, id="deep", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
]
"""Example counts: a modest run in the default suite, a deep one under `-m slow`."""


def _nest(depth: int, leaf: Any = 1) -> Any:
    x = leaf
    for _ in range(depth):
        x = [x]
    return x


NASTY_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 5000,
    "\u202e\x00",
    b"",
    b"\x00" * 31,
    b"\xff" * 33,
    [],
    [[]],
    {"k": 1},
    {1: 2},
    _nest(70),
    _nest(900),
]
"""Values a structural mutation puts in place of a field: wrong types, edge ints, deep
nesting, maps where arrays belong."""

# -- msgpack tokens ----------------------------------------------------------------------------

# (first byte range, header size, size of the length field inside the header or 0 for "low bits")
_LENGTHED: list[tuple[range, int, int]] = [
    (range(0x80, 0x90), 1, 0),  # fixmap
    (range(0x90, 0xA0), 1, 0),  # fixarray
    (range(0xA0, 0xC0), 1, 0),  # fixstr
    (range(0xC4, 0xC5), 2, 1),  # bin8
    (range(0xC5, 0xC6), 3, 2),  # bin16
    (range(0xC6, 0xC7), 5, 4),  # bin32
    (range(0xD9, 0xDA), 2, 1),  # str8
    (range(0xDA, 0xDB), 3, 2),  # str16
    (range(0xDB, 0xDC), 5, 4),  # str32
    (range(0xDC, 0xDD), 3, 2),  # array16
    (range(0xDD, 0xDE), 5, 4),  # array32
    (range(0xDE, 0xDF), 3, 2),  # map16
    (range(0xDF, 0xE0), 5, 4),  # map32
]
_FIXED = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}
_RAW_PAYLOAD = {0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB}


def length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every msgpack length field in `data` (size 0: the header's low bits).

    A flat scan: arrays and maps need no skipping, str/bin payloads are jumped over.
    """
    out = []
    i = 0
    while i < len(data):
        b = data[i]
        for r, head, size in _LENGTHED:
            if b in r:
                out.append((i if size == 0 else i + 1, size))
                n = 0
                if size:
                    n = int.from_bytes(data[i + 1 : i + 1 + size], "big")
                elif 0xA0 <= b < 0xC0:
                    n = b & 0x1F
                i += head + (n if (b in _RAW_PAYLOAD or 0xA0 <= b < 0xC0) else 0)
                break
        else:
            i += _FIXED.get(b, 1)
    return out


def _set_length(data: bytes, offset: int, size: int, value: int) -> bytes:
    if size == 0:
        b = data[offset]
        mask = 0x1F if 0xA0 <= b < 0xC0 else 0x0F
        return data[:offset] + bytes([(b & ~mask) | (value & mask)]) + data[offset + 1 :]
    field = (value % (1 << (8 * size))).to_bytes(size, "big")
    return data[:offset] + field + data[offset + size :]


# -- structural edits --------------------------------------------------------------------------


def _paths(obj: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix]
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            out.extend(_paths(x, (*prefix, i)))
    return out


def _get(obj: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        obj = obj[i]
    return obj


def _replace(obj: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(obj)
    copy[path[0]] = _replace(obj[path[0]], path[1:], value)
    return copy


def _pack(obj: Any) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return None


@st.composite
def mutations(draw: st.DrawFn, valid: bytes, depth: int = 0) -> bytes:
    """One corruption of `valid` (or of an encoding nested inside it)."""
    kinds = ["flip", "overwrite", "truncate", "extend", "insert", "delete", "length"]
    try:
        tree = msgpack.unpackb(valid, raw=False, strict_map_key=False, use_list=True)
    except Exception:
        tree = None
    if tree is not None:
        kinds += ["replace", "replace", "duplicate", "drop"]
        if depth < 3 and any(isinstance(_get(tree, p), bytes) for p in _paths(tree)):
            kinds += ["inner", "inner"]
    kind = draw(st.sampled_from(kinds))
    n = len(valid)
    if kind == "flip" and n:
        pos, bit = draw(st.integers(0, n - 1)), draw(st.integers(0, 7))
        return valid[:pos] + bytes([valid[pos] ^ (1 << bit)]) + valid[pos + 1 :]
    if kind == "overwrite" and n:
        pos = draw(st.integers(0, n - 1))
        return valid[:pos] + bytes([draw(st.integers(0, 255))]) + valid[pos + 1 :]
    if kind == "truncate":
        return valid[: draw(st.integers(0, max(0, n - 1)))]
    if kind == "extend":
        return valid + draw(st.binary(min_size=1, max_size=16))
    if kind == "insert":
        pos = draw(st.integers(0, n))
        return valid[:pos] + draw(st.binary(min_size=1, max_size=8)) + valid[pos:]
    if kind == "delete" and n:
        pos = draw(st.integers(0, n - 1))
        return valid[:pos] + valid[pos + draw(st.integers(1, 8)) :]
    if kind == "length":
        fields = length_fields(valid)
        if fields:
            offset, size = draw(st.sampled_from(fields))
            value = draw(
                st.one_of(st.integers(0, 40), st.sampled_from([2**15, 2**16 - 1, 2**31, 2**32 - 1]))
            )
            return _set_length(valid, offset, size, value)
    if tree is not None:
        paths = _paths(tree)
        path = draw(st.sampled_from(paths))
        if kind == "replace":
            out = _pack(_replace(tree, path, draw(st.sampled_from(NASTY_VALUES))))
            if out is not None:
                return out
        if kind == "duplicate" and path:
            parent = _get(tree, path[:-1])
            grown = [*parent[: path[-1] + 1], parent[path[-1]], *parent[path[-1] + 1 :]]
            out = _pack(_replace(tree, path[:-1], grown))
            if out is not None:
                return out
        if kind == "drop" and path:
            parent = _get(tree, path[:-1])
            out = _pack(_replace(tree, path[:-1], parent[: path[-1]] + parent[path[-1] + 1 :]))
            if out is not None:
                return out
        if kind == "inner":
            inner = [p for p in paths if isinstance(_get(tree, p), bytes)]
            p = draw(st.sampled_from(inner))
            changed = draw(mutations(_get(tree, p), depth + 1))
            out = _pack(_replace(tree, p, changed))
            if out is not None:
                return out
    return valid[: max(0, n - 1)]


def corrupted(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid encodings, corrupted by one to three mutations, or random bytes now and then."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(valid)
        for _ in range(draw(st.integers(1, 3))):
            data = draw(mutations(data))
        return data

    return st.one_of(build(), build(), build(), st.binary(max_size=64))


# -- TOML --------------------------------------------------------------------------------------

NASTY_TOML = [
    "99999999999999999999999999",
    "-1",
    "0",
    "1e308",
    "inf",
    "nan",
    '""',
    '"' + "x" * 5000 + '"',
    "[" * 600 + "]" * 600,
    "{ a = " * 300 + "1" + " }" * 300,
    "{ a = 1 }",
    "[1, 2, 3]",
    "true",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "'/etc/passwd'",
    '"../../../tmp/x"',
    '"0.0.0.0:0"',
    '"\\u0000"',
    "0x7fffffffffffffff",
    "-9223372036854775808",
]


@st.composite
def toml_mutations(draw: st.DrawFn, valid: str) -> str:
    """One corruption of a TOML document: a value replaced, a line duplicated, dropped or
    renamed, a section renamed, an unknown key, or byte-level damage."""
    lines = valid.splitlines()
    assigns = [
        i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")
    ]
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    kind = draw(
        st.sampled_from(
            ["value", "value", "value", "dup", "drop", "rename", "section", "unknown", "bytes"]
        )
    )
    if kind == "value" and assigns:
        i = draw(st.sampled_from(assigns))
        key = lines[i].split("=", 1)[0]
        lines[i] = f"{key}= {draw(st.sampled_from(NASTY_TOML))}"
    elif kind == "dup" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
    elif kind == "drop" and lines:
        del lines[draw(st.integers(0, len(lines) - 1))]
    elif kind == "rename" and assigns:
        i = draw(st.sampled_from(assigns))
        key, value = lines[i].split("=", 1)
        lines[i] = f"{key.strip()}{draw(st.sampled_from(['x', '_', 'S']))} ={value}"
    elif kind == "section" and headers:
        i = draw(st.sampled_from(headers))
        lines[i] = draw(st.sampled_from(["[nodes]", "[[node]]", "[node.x]", "[]", "[namespaces]"]))
    elif kind == "unknown":
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, f"surprise = {draw(st.sampled_from(NASTY_TOML))}")
    else:
        data = "\n".join(lines).encode()
        damaged = draw(mutations(data))
        return damaged.decode("utf-8", "replace")
    return "\n".join(lines) + "\n"


def typed_only(
    fn: Callable[[], Any], allowed: type[BaseException] | tuple[type[BaseException], ...]
) -> Any:
    """Run `fn`; return its value or None when it raised one of `allowed`; anything else
    propagates (and fails the test with the real traceback)."""
    try:
        return fn()
    except allowed:
        return None
