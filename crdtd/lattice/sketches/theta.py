"""Theta sketches (distinct counts with set operations) as a lattice: join = union.

The state is DataSketches' compact ordered theta sketch: `theta` and the retained hashes below
it, at most `2**lg_k` of them. Union keeps the smallest `2**lg_k` hashes below the smallest
theta and lowers theta to the next hash when it trims: a function of the union of the inputs,
so it is commutative, associative and idempotent, and `a.le(b)` is `a.join(b) == b` (b's
theta is at most a's and b holds every hash of a below it).

An update sketch holds up to about twice `2**lg_k` hashes between rebuilds, in an order that
depends on insertion; every value here is normalised through `theta_union`, which trims to
`2**lg_k`, so equal inputs give equal bytes. The retained hashes are 64-bit MurmurHash3 of the
values with DataSketches' public default seed: anyone holding a candidate value can test
whether it is among them, so share theta sketches only where that is acceptable (HLL keeps far
less).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from crdtd.errors import DecodeError, LatticeTypeError, LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase
from crdtd.lattice.sketches.common import (
    STD_DEV_CONFIDENCE,
    Estimate,
    check_param,
    check_std_devs,
    ds,
    hashable_value,
)

MIN_LG_K, MAX_LG_K = 5, 26
MAX_THETA = 2**63 - 1
_SER_VER, _FAMILY_COMPACT = 3, 3
_READ_ONLY, _EMPTY, _COMPACT, _ORDERED = 2, 4, 8, 16


def _seed_hash() -> int:
    return int(ds.update_theta_sketch().get_seed_hash())


SEED_HASH = _seed_hash()
"""16-bit hash of DataSketches' default seed (9001), written into every image."""


class ThetaSketch(LatticeBase):
    """Distinct-count sketch with union, intersection and difference estimates.

    `ThetaSketch.of(values, lg_k=12)` hashes values on this site; relative standard error is
    about `1 / sqrt(2**lg_k)`.
    """

    TAG = "theta"
    __slots__ = ("_hashes", "_lib", "lg_k", "theta")

    def __init__(self, lg_k: int = 12, theta: int = MAX_THETA, hashes: Iterable[int] = ()) -> None:
        self.lg_k = check_param(lg_k, "lg_k", MIN_LG_K, MAX_LG_K, "ThetaSketch")
        self.theta = check_param(theta, "theta", 1, MAX_THETA, "ThetaSketch")
        hs = tuple(hashes)
        if len(hs) > 1 << lg_k:
            raise LatticeValueError(
                f"ThetaSketch: {len(hs)} hashes, more than 2**lg_k = {1 << lg_k}"
            )
        prev = 0
        for h in hs:
            if isinstance(h, bool) or not isinstance(h, int) or not prev < h < theta:
                raise LatticeValueError(
                    f"ThetaSketch: hashes must be ascending integers in [1, theta), got {h!r}"
                )
            prev = h
        self._hashes = hs
        self._lib: Any = None

    @classmethod
    def of(cls, values: Iterable[Any], lg_k: int = 12) -> ThetaSketch:
        """Sketch `values` (int, float, str or bytes), hashing each on this site."""
        check_param(lg_k, "lg_k", MIN_LG_K, MAX_LG_K, "ThetaSketch")
        sk = ds.update_theta_sketch(lg_k)
        for v in values:
            sk.update(hashable_value(v, "ThetaSketch value"))
        union = ds.theta_union(lg_k)
        union.update(sk)
        return cls._from_lib(union.get_result(True), lg_k)

    @classmethod
    def _from_lib(cls, sk: Any, lg_k: int) -> ThetaSketch:
        return cls(lg_k, int(sk.theta64), sorted(int(h) for h in sk))

    @property
    def hashes(self) -> tuple[int, ...]:
        return self._hashes

    def is_empty(self) -> bool:
        return self.theta == MAX_THETA and not self._hashes

    def _sketch(self) -> Any:
        if self._lib is None:
            self._lib = ds.compact_theta_sketch.deserialize(self.datasketch_bytes())
        return self._lib

    def estimate(self, std_devs: int = 2) -> Estimate:
        """Distinct count with bounds at `std_devs` standard deviations (1, 2 or 3)."""
        return _estimate(self._sketch(), std_devs, "ThetaSketch.estimate")

    def intersection(self, *others: ThetaSketch, std_devs: int = 2) -> Estimate:
        """Distinct count of values in this sketch and every one of `others`."""
        inter = ds.theta_intersection()
        inter.update(self._sketch())
        for o in others:
            self._check(o, "intersect")
            inter.update(o._sketch())
        return _estimate(inter.get_result(), std_devs, "ThetaSketch.intersection")

    def difference(self, other: ThetaSketch, std_devs: int = 2) -> Estimate:
        """Distinct count of values in this sketch but not in `other` (A not B)."""
        self._check(other, "subtract")
        result = ds.theta_a_not_b().compute(self._sketch(), other._sketch())
        return _estimate(result, std_devs, "ThetaSketch.difference")

    def join(self, other: ThetaSketch) -> ThetaSketch:
        """Union through DataSketches' `theta_union` (trimmed to 2**lg_k hashes)."""
        self._check(other, "join")
        union = ds.theta_union(self.lg_k)
        union.update(self._sketch())
        union.update(other._sketch())
        return ThetaSketch._from_lib(union.get_result(True), self.lg_k)

    def le(self, other: ThetaSketch) -> bool:
        self._check(other, "compare")
        return self.join(other) == other

    def _check(self, other: Any, op: str) -> None:
        self._same_type(other, op)
        if other.lg_k != self.lg_k:
            raise LatticeTypeError(
                f"cannot {op} ThetaSketch(lg_k={self.lg_k}) with ThetaSketch(lg_k={other.lg_k})"
            )

    def datasketch_bytes(self) -> bytes:
        """This state as a DataSketches compact ordered theta image (serial version 3)."""
        n = len(self._hashes)
        if self.theta == MAX_THETA and n <= 1:
            pre = 1
        elif self.theta == MAX_THETA:
            pre = 2
        else:
            pre = 3
        flags = _READ_ONLY | _COMPACT | _ORDERED | (_EMPTY if self.is_empty() else 0)
        out = bytes([pre, _SER_VER, _FAMILY_COMPACT, 0, 0, flags]) + struct.pack("<H", SEED_HASH)
        if pre >= 2:
            out += struct.pack("<II", n, 0)
        if pre == 3:
            out += struct.pack("<Q", self.theta)
        return out + struct.pack(f"<{n}Q", *self._hashes)

    def to_obj(self) -> list[Any]:
        return [self.TAG, self.lg_k, self.theta, list(self._hashes)]

    @classmethod
    def from_obj(cls, obj: Any) -> ThetaSketch:
        lg_k, theta, hashes = codec.check_header(obj, cls.TAG, 3, "ThetaSketch")
        codec.expect_list(hashes, None, "ThetaSketch.hashes")
        return cls(lg_k, theta, hashes)

    @classmethod
    def from_bytes(cls, data: bytes, lg_k: int | None = None) -> ThetaSketch:
        """Strict decode; with `lg_k`, a sketch of another size is a DecodeError too."""
        value: ThetaSketch = super().from_bytes(data)
        if lg_k is not None and value.lg_k != lg_k:
            raise DecodeError(f"ThetaSketch: lg_k is {value.lg_k}, expected {lg_k}")
        return value

    def _repr_body(self) -> str:
        return f"lg_k={self.lg_k}, retained={len(self._hashes)}, theta={self.theta}"


def _estimate(sk: Any, std_devs: int, where: str) -> Estimate:
    check_std_devs(std_devs, where)
    return Estimate(
        sk.get_estimate(),
        sk.get_lower_bound(std_devs),
        sk.get_upper_bound(std_devs),
        STD_DEV_CONFIDENCE[std_devs],
    )


codec.register_decoder(ThetaSketch.TAG, ThetaSketch.from_obj)
