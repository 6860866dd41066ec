"""Causality: dots and version vectors (pointwise-max lattice)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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
        c = dict(self._c)
        for node, n in other._c.items():
            if n > c.get(node, 0):
                c[node] = n
        return VersionVector(c)

    def le(self, other: VersionVector) -> bool:
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


@dataclass(frozen=True)
class DotContext:
    """The set of dots a replica has seen: compact version vector plus a cloud of loose dots."""

    dots: frozenset[Dot] = frozenset()

    def contains(self, dot: Dot) -> bool:
        return dot in self.dots

    def union(self, other: DotContext) -> DotContext:
        return DotContext(self.dots | other.dots)

    def add(self, dots: Iterable[Dot]) -> DotContext:
        return DotContext(self.dots | frozenset(dots))

    def next_dot(self, node: str) -> Dot:
        """A fresh dot for `node`: one past the highest counter it has used."""
        top = max((c for n, c in self.dots if n == node), default=0)
        return (node, top + 1)

    def to_obj(self) -> list[Any]:
        by_node: dict[str, list[int]] = {}
        for n, c in self.dots:
            by_node.setdefault(n, []).append(c)
        out = []
        for node in sorted(by_node):
            cs = sorted(by_node[node])
            # compact: [node, contiguous-prefix-max, [loose counters above it]]
            top = 0
            while top < len(cs) and cs[top] == top + 1:
                top += 1
            out.append([node, top, cs[top:]])
        return out

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> DotContext:
        codec.expect_list(obj, None, where)
        dots: set[Dot] = set()
        prev = None
        for item in obj:
            node, top, loose = codec.expect_list(item, 3, where)
            codec.expect_str(node, where)
            if prev is not None and node <= prev:
                raise codec.DecodeError(f"{where}: nodes not in canonical order")
            prev = node
            codec.expect_uint(top, where)
            codec.expect_list(loose, None, where)
            dots.update((node, c) for c in range(1, top + 1))
            last = top
            for c in loose:
                codec.expect_uint(c, where)
                if c <= last or (last == top and c == top + 1):
                    raise codec.DecodeError(f"{where}: loose dots not canonical")
                last = c
                dots.add((node, c))
        return cls(frozenset(dots))


codec.register_decoder(VersionVector.TAG, VersionVector.from_obj)
