"""Registers: last-writer-wins (total order) and multi-value (keeps concurrent writes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crdtd.errors import LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase
from crdtd.lattice.clocks import VersionVector


class LWWRegister(LatticeBase):
    """One value; join keeps the write with the larger (timestamp, node id, value bytes).

    The timestamp is a logical or hybrid clock value supplied by the caller (an int), never
    read from the wall clock here. Ties on (timestamp, node) fall back to the value's canonical
    bytes so join stays commutative even for buggy writers.
    """

    TAG = "lww"
    __slots__ = ("node", "timestamp", "value")

    def __init__(self, value: Any = None, timestamp: int = 0, node: str = "") -> None:
        self.value = codec.canon_value(value, "LWWRegister value")
        if (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int)
            or not codec.INT64_MIN <= timestamp <= codec.MAX_INT
        ):
            raise LatticeValueError(
                f"LWWRegister timestamp must be an integer in [-2**63, 2**63 - 1], got {timestamp!r}"
            )
        self.timestamp = timestamp
        self.node = codec.expect_str(node, "LWWRegister node")

    def _order(self) -> tuple[int, str, bytes]:
        return (self.timestamp, self.node, codec.value_key(self.value))

    def set(self, value: Any, timestamp: int, node: str) -> LWWRegister:
        """Write `value`; it wins only if (timestamp, node) is larger than the current one."""
        return self.join(LWWRegister(value, timestamp, node))

    def join(self, other: LWWRegister) -> LWWRegister:
        self._same_type(other)
        return self if self._order() >= other._order() else other

    def le(self, other: LWWRegister) -> bool:
        self._same_type(other, "compare")
        return self._order() <= other._order()

    def to_obj(self) -> list[Any]:
        return [self.TAG, codec.value_to_obj(self.value), self.timestamp, self.node]

    @classmethod
    def from_obj(cls, obj: Any) -> LWWRegister:
        v, ts, node = codec.check_header(obj, cls.TAG, 3, "LWWRegister")
        return cls(codec.value_from_obj(v, "LWWRegister value"), ts, node)

    def _repr_body(self) -> str:
        return f"{self.value!r}, timestamp={self.timestamp}, node={self.node!r}"


class MVRegister(LatticeBase):
    """Multi-value register: keeps every write not causally overwritten by another.

    Each write carries the version vector of the writer after the write; join keeps the
    writes whose vectors are not strictly dominated, so concurrent writes all survive.
    A register holds at most `MAX_WRITES` concurrent writes (in a reachable state there is
    at most one per writer); more is a `LatticeValueError`, and bytes claiming more are a
    `DecodeError` before any pruning, which costs time quadratic in the writes.
    """

    MAX_WRITES = 256

    TAG = "mv"
    __slots__ = ("_w",)

    def __init__(self, writes: Iterable[tuple[Any, VersionVector]] = ()) -> None:
        w: dict[bytes, tuple[Any, VersionVector]] = {}
        for value, vv in writes:
            if type(vv) is not VersionVector:
                raise LatticeValueError(
                    f"MVRegister write clock must be a VersionVector, got {type(vv).__name__}"
                )
            v = codec.canon_value(value, "MVRegister value")
            w[codec.pack([codec.value_to_obj(v), vv.to_obj()])] = (v, vv)
        self._w = self._prune(w)
        if len(self._w) > self.MAX_WRITES:
            raise LatticeValueError(
                f"MVRegister holds {len(self._w)} concurrent writes, more than {self.MAX_WRITES}"
            )

    @staticmethod
    def _prune(w: dict[bytes, tuple[Any, VersionVector]]) -> dict[bytes, tuple[Any, VersionVector]]:
        keep = {}
        for k, (v, vv) in w.items():
            dominated = any(vv.le(o) and not o.le(vv) for (_, o) in w.values())
            if not dominated:
                keep[k] = (v, vv)
        return keep

    @property
    def values(self) -> list[Any]:
        """Concurrent values, in canonical order."""
        return [self._w[k][0] for k in sorted(self._w)]

    @property
    def clock(self) -> VersionVector:
        out = VersionVector()
        for _, vv in self._w.values():
            out = out.join(vv)
        return out

    def set(self, value: Any, node: str) -> MVRegister:
        """Write `value` at `node`, overwriting everything this replica has seen."""
        return MVRegister([(value, self.clock.increment(node))])

    def join(self, other: MVRegister) -> MVRegister:
        self._same_type(other)
        return MVRegister(list(self._w.values()) + list(other._w.values()))

    def le(self, other: MVRegister) -> bool:
        self._same_type(other, "compare")
        return self.join(other) == other

    def to_obj(self) -> list[Any]:
        return [
            self.TAG,
            [[codec.value_to_obj(self._w[k][0]), self._w[k][1].to_obj()] for k in sorted(self._w)],
        ]

    @classmethod
    def from_obj(cls, obj: Any) -> MVRegister:
        (items,) = codec.check_header(obj, cls.TAG, 1, "MVRegister")
        writes = []
        codec.expect_list(items, None, "MVRegister.writes")
        if len(items) > cls.MAX_WRITES:
            raise codec.DecodeError(
                f"MVRegister.writes: {len(items)} writes, more than {cls.MAX_WRITES}"
            )
        for it in items:
            v, vv = codec.expect_list(it, 2, "MVRegister write")
            writes.append((codec.value_from_obj(v, "MVRegister value"), VersionVector.from_obj(vv)))
        return cls(writes)

    def _repr_body(self) -> str:
        return repr(self.values)


codec.register_decoder(LWWRegister.TAG, LWWRegister.from_obj)
codec.register_decoder(MVRegister.TAG, MVRegister.from_obj)
