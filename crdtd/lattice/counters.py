"""Counters: grow-only (GCounter) and increment/decrement (PNCounter)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crdtd.errors import LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase


class GCounter(LatticeBase):
    """Per-node grow-only counts; value = sum, join = pointwise max."""

    TAG = "gc"
    __slots__ = ("_c",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._c: dict[str, int] = {}
        for node, n in (counts or {}).items():
            codec.expect_str(node, "GCounter node")
            codec.expect_uint(n, "GCounter count")
            if n:
                self._c[node] = n

    @property
    def value(self) -> int:
        return sum(self._c.values())

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._c)

    def increment(self, node: str, by: int = 1) -> GCounter:
        """A copy with `by` (>= 0) added to `node`'s count (LatticeValueError otherwise)."""
        codec.check_amount(by, "GCounter.increment (a GCounter only grows; use PNCounter)")
        c = dict(self._c)
        c[node] = c.get(node, 0) + by
        if c[node] > codec.MAX_INT:
            raise LatticeValueError(
                f"GCounter.increment: node {node!r} count would pass 2**63 - 1 (amount {by})"
            )
        return GCounter(c)

    def join(self, other: GCounter) -> GCounter:
        self._same_type(other)
        c = dict(self._c)
        for node, n in other._c.items():
            c[node] = max(n, c.get(node, 0))
        return GCounter(c)

    def le(self, other: GCounter) -> bool:
        self._same_type(other, "compare")
        return all(n <= other._c.get(k, 0) for k, n in self._c.items())

    def to_obj(self) -> list[Any]:
        return [self.TAG, [[k, self._c[k]] for k in sorted(self._c)]]

    @classmethod
    def from_obj(cls, obj: Any) -> GCounter:
        (pairs,) = codec.check_header(obj, cls.TAG, 1, "GCounter")
        counts: dict[str, int] = {}
        for p in codec.expect_list(pairs, None, "GCounter.counts"):
            k, n = codec.expect_list(p, 2, "GCounter entry")
            counts[codec.expect_str(k, "GCounter node")] = codec.expect_uint(n, "GCounter count")
        return cls(counts)

    def _repr_body(self) -> str:
        return repr({k: self._c[k] for k in sorted(self._c)})


class PNCounter(LatticeBase):
    """Two GCounters: value = increments − decrements."""

    TAG = "pn"
    __slots__ = ("n", "p")

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None) -> None:
        for part in (p, n):
            if part is not None and type(part) is not GCounter:
                raise LatticeValueError(
                    f"PNCounter parts must be GCounters, got {type(part).__name__}"
                )
        self.p = p or GCounter()
        self.n = n or GCounter()

    @property
    def value(self) -> int:
        return self.p.value - self.n.value

    def increment(self, node: str, by: int = 1) -> PNCounter:
        """A copy counting `by` (>= 0) up at `node`; a negative amount is a LatticeValueError."""
        codec.check_amount(by, "PNCounter.increment (use decrement to count down)")
        return PNCounter(self.p.increment(node, by), self.n)

    def decrement(self, node: str, by: int = 1) -> PNCounter:
        """A copy counting `by` (>= 0) down at `node`; a negative amount is a LatticeValueError."""
        codec.check_amount(by, "PNCounter.decrement (use increment to count up)")
        return PNCounter(self.p, self.n.increment(node, by))

    def join(self, other: PNCounter) -> PNCounter:
        self._same_type(other)
        return PNCounter(self.p.join(other.p), self.n.join(other.n))

    def le(self, other: PNCounter) -> bool:
        self._same_type(other, "compare")
        return self.p.le(other.p) and self.n.le(other.n)

    def to_obj(self) -> list[Any]:
        return [self.TAG, self.p.to_obj(), self.n.to_obj()]

    @classmethod
    def from_obj(cls, obj: Any) -> PNCounter:
        p, n = codec.check_header(obj, cls.TAG, 2, "PNCounter")
        return cls(GCounter.from_obj(p), GCounter.from_obj(n))

    def _repr_body(self) -> str:
        return f"value={self.value}"


codec.register_decoder(GCounter.TAG, GCounter.from_obj)
codec.register_decoder(PNCounter.TAG, PNCounter.from_obj)
