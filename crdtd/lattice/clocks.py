"""Causality: dots and version vectors (pointwise-max lattice)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from crdtd.errors import LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase

Dot = tuple[str, int]  # (node id, counter >= 1): one event's unique name


def _clean(counts: Mapping[str, int], where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for node, n in counts.items():
        codec.expect_str(node, where)
        codec.expect_uint(n, where)
        if n:
            out[node] = n
    return out


class VersionVector(LatticeBase):
    """Highest contiguous counter seen per node; join is pointwise max."""

    TAG = "vv"
    __slots__ = ("_c",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._c = _clean(counts or {}, "VersionVector")

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._c)

    def get(self, node: str) -> int:
        return self._c.get(node, 0)

    def increment(self, node: str) -> VersionVector:
        """A copy with `node`'s counter advanced by one."""
        c = dict(self._c)
        c[node] = c.get(node, 0) + 1
        return VersionVector(c)

    def contains(self, dot: Dot) -> bool:
        return 0 < dot[1] <= self._c.get(dot[0], 0)

    def join(self, other: VersionVector) -> VersionVector:
        self._same_type(other)
        c = dict(self._c)
        for node, n in other._c.items():
            if n > c.get(node, 0):
                c[node] = n
        return VersionVector(c)

    def le(self, other: VersionVector) -> bool:
        self._same_type(other, "compare")
        return all(n <= other._c.get(node, 0) for node, n in self._c.items())

    def concurrent(self, other: VersionVector) -> bool:
        return not self.le(other) and not other.le(self)

    def to_obj(self) -> list[Any]:
        return [self.TAG, [[k, self._c[k]] for k in sorted(self._c)]]

    @classmethod
    def from_obj(cls, obj: Any) -> VersionVector:
        (pairs,) = codec.check_header(obj, cls.TAG, 1, "VersionVector")
        codec.expect_list(pairs, None, "VersionVector.counts")
        counts: dict[str, int] = {}
        keys = []
        for p in pairs:
            k, n = codec.expect_list(p, 2, "VersionVector entry")
            counts[codec.expect_str(k, "VersionVector node")] = codec.expect_uint(
                n, "VersionVector counter"
            )
            keys.append(codec.pack(k))
        return cls(counts)

    def _repr_body(self) -> str:
        return repr({k: self._c[k] for k in sorted(self._c)})


class DotContext:
    """The set of dots a replica has seen, kept compact: per node a contiguous prefix
    `1..top` plus the loose counters above it.

    Every operation costs time proportional to the loose counters, never to `top`, so a
    context decoded from a few bytes that claims `top = 2**62` stays a few bytes in memory.
    """

    __slots__ = ("_loose", "_top")

    def __init__(self, dots: Iterable[Dot] = ()) -> None:
        loose: dict[str, set[int]] = {}
        for dot in dots:
            node, counter = check_dot(dot)
            loose.setdefault(node, set()).add(counter)
        self._top: dict[str, int] = {}
        self._loose: dict[str, frozenset[int]] = {}
        for node, counters in loose.items():
            self._settle(node, 0, counters)

    @classmethod
    def from_ranges(
        cls, tops: Mapping[str, int], loose: Mapping[str, Iterable[int]] | None = None
    ) -> DotContext:
        """The context holding `(node, 1..top)` for each node plus the given loose counters."""
        out = cls()
        extra = loose or {}
        for node in sorted(set(tops) | set(extra)):
            top = tops.get(node, 0)
            if top:
                check_dot((node, top))
            out._settle(node, top, {check_dot((node, c))[1] for c in extra.get(node, ())})
        return out

    def _settle(self, node: str, top: int, counters: Iterable[int]) -> None:
        """Store `node`'s prefix and loose counters, absorbing loose ones that extend the prefix."""
        rest = {c for c in counters if c > top}
        while top + 1 in rest:
            top += 1
            rest.discard(top)
        if top:
            self._top[node] = top
        else:
            self._top.pop(node, None)
        if rest:
            self._loose[node] = frozenset(rest)
        else:
            self._loose.pop(node, None)

    def contains(self, dot: Dot) -> bool:
        node, counter = dot
        return 0 < counter <= self._top.get(node, 0) or counter in self._loose.get(node, ())

    def union(self, other: DotContext) -> DotContext:
        out = DotContext()
        for node in set(self._top) | set(self._loose) | set(other._top) | set(other._loose):
            top = max(self._top.get(node, 0), other._top.get(node, 0))
            loose = self._loose.get(node, frozenset()) | other._loose.get(node, frozenset())
            out._settle(node, top, loose)
        return out

    def add(self, dots: Iterable[Dot]) -> DotContext:
        return self.union(DotContext(dots))

    def next_dot(self, node: str) -> Dot:
        """A fresh dot for `node`: one past the highest counter it has used."""
        top = max(self._loose.get(node, ()), default=self._top.get(node, 0))
        return (node, top + 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotContext):
            return NotImplemented
        return self._top == other._top and self._loose == other._loose

    def __hash__(self) -> int:
        return hash((frozenset(self._top.items()), frozenset(self._loose.items())))

    def __repr__(self) -> str:
        return f"DotContext({self.to_obj()!r})"

    def to_obj(self) -> list[Any]:
        """`[[node, contiguous-prefix-top, [loose counters above it]], ...]` by node."""
        nodes = sorted(set(self._top) | set(self._loose))
        return [[n, self._top.get(n, 0), sorted(self._loose.get(n, ()))] for n in nodes]

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> DotContext:
        """Decode in time proportional to the input: ranges are kept, never expanded."""
        codec.expect_list(obj, None, where)
        out = cls()
        prev = None
        for item in obj:
            node, top, loose = codec.expect_list(item, 3, where)
            codec.expect_str(node, where)
            if prev is not None and node <= prev:
                raise codec.DecodeError(f"{where}: nodes not in canonical order")
            prev = node
            codec.expect_uint(top, where)
            codec.expect_list(loose, None, where)
            last = top
            for c in loose:
                codec.expect_uint(c, where)
                if c <= last or c == top + 1:
                    raise codec.DecodeError(f"{where}: loose dots not canonical")
                last = c
            if not top and not loose:
                raise codec.DecodeError(f"{where}: node {node!r} holds no dots")
            out._top[node] = top
            if loose:
                out._loose[node] = frozenset(loose)
            if not top:
                del out._top[node]
        return out


def check_dot(dot: Any) -> Dot:
    """A dot is `(node id, counter)` with 1 <= counter <= 2**63 - 1 (LatticeValueError)."""
    if not isinstance(dot, tuple | list) or len(dot) != 2:
        raise LatticeValueError(f"a dot is (node, counter), got {dot!r}")
    node, counter = dot
    if not isinstance(node, str):
        raise LatticeValueError(f"dot node must be a string, got {type(node).__name__}")
    if (
        isinstance(counter, bool)
        or not isinstance(counter, int)
        or not 0 < counter <= codec.MAX_INT
    ):
        raise LatticeValueError(
            f"dot counter must be an integer in [1, 2**63 - 1], got {counter!r}"
        )
    return (node, counter)


codec.register_decoder(VersionVector.TAG, VersionVector.from_obj)
