"""HyperLogLog distinct counts as a lattice: DataSketches HLL_8 registers, join = union.

The lattice value is the register array (one byte per slot, `2**lg_k` slots). DataSketches'
HLL_8 union of two sketches with the same `lg_k` is the register-wise maximum, so join is a
true semilattice and `a.le(b)` is "every register of a is <= b's" (exactly `a.join(b) == b`).

DataSketches' own serialised union is not canonical: it carries the HIP accumulator and an
out-of-order flag that depend on the order of updates and unions, and small sketches are
kept as coupon lists in insertion order. The canonical form is therefore the registers; the
library sees them as the image `datasketch_bytes()` (HLL mode, out-of-order, HIP zero, the
register sums recomputed; `kxq` sums of powers of two are exact in float64 whatever the
order), which is byte-for-byte what DataSketches itself writes for that state.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from crdtd.errors import DecodeError, LatticeError, LatticeTypeError, LatticeValueError
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

MIN_LG_K, MAX_LG_K = 4, 21
MAX_REGISTER = 63
_HLL_PREINTS, _SER_VER, _FAMILY_HLL, _MODE_HLL8 = 10, 1, 7, (2 << 2) | 2
_COMPACT, _OUT_OF_ORDER, _EMPTY = 8, 16, 4


class HllSketch(LatticeBase):
    """Distinct-count sketch; `HllSketch.of(values, lg_k=12)` hashes values on this site.

    Relative standard error is about `1.04 / sqrt(2**lg_k)` (1.6 % at the default 12).
    """

    TAG = "hll"
    __slots__ = ("_lib", "_regs", "lg_k")

    def __init__(self, lg_k: int = 12, registers: bytes | None = None) -> None:
        self.lg_k = check_param(lg_k, "lg_k", MIN_LG_K, MAX_LG_K, "HllSketch")
        size = 1 << lg_k
        regs = bytes(size) if registers is None else bytes(registers)
        if len(regs) != size:
            raise LatticeValueError(
                f"HllSketch: {len(regs)} registers, expected 2**{lg_k} = {size}"
            )
        if max(regs) > MAX_REGISTER:
            raise LatticeValueError(f"HllSketch: register value {max(regs)} exceeds {MAX_REGISTER}")
        self._regs = regs
        self._lib: Any = None

    @classmethod
    def of(cls, values: Iterable[Any], lg_k: int = 12) -> HllSketch:
        """Sketch `values` (int, float, str or bytes), hashing each on this site."""
        check_param(lg_k, "lg_k", MIN_LG_K, MAX_LG_K, "HllSketch")
        sk = ds.hll_sketch(lg_k, ds.HLL_8, True)  # start in HLL mode: registers, no coupons
        for v in values:
            sk.update(hashable_value(v, "HllSketch value"))
        return cls(lg_k, _registers_of(sk, lg_k))

    @property
    def registers(self) -> bytes:
        return self._regs

    def is_empty(self) -> bool:
        return not any(self._regs)

    def _sketch(self) -> Any:
        if self._lib is None:
            self._lib = ds.hll_sketch.deserialize(self.datasketch_bytes())
        return self._lib

    def estimate(self, std_devs: int = 2) -> Estimate:
        """Distinct count with bounds at `std_devs` standard deviations (1, 2 or 3)."""
        check_std_devs(std_devs, "HllSketch.estimate")
        sk = self._sketch()
        return Estimate(
            sk.get_estimate(),
            sk.get_lower_bound(std_devs),
            sk.get_upper_bound(std_devs),
            STD_DEV_CONFIDENCE[std_devs],
        )

    def join(self, other: HllSketch) -> HllSketch:
        """Union through DataSketches' `hll_union` (register-wise maximum)."""
        self._check(other, "join")
        if other.is_empty():
            return self
        if self.is_empty():
            return other
        union = ds.hll_union(self.lg_k)
        union.update(self._sketch())
        union.update(other._sketch())
        return HllSketch(self.lg_k, _registers_of(union.get_result(ds.HLL_8), self.lg_k))

    def le(self, other: HllSketch) -> bool:
        self._check(other, "compare")
        mine = np.frombuffer(self._regs, dtype=np.uint8)
        theirs = np.frombuffer(other._regs, dtype=np.uint8)
        return bool(np.all(mine <= theirs))

    def _check(self, other: Any, op: str) -> None:
        self._same_type(other, op)
        if other.lg_k != self.lg_k:
            raise LatticeTypeError(
                f"cannot {op} HllSketch(lg_k={self.lg_k}) with HllSketch(lg_k={other.lg_k})"
            )

    def datasketch_bytes(self) -> bytes:
        """This state as a DataSketches HLL_8 compact image (readable by any DataSketches)."""
        regs = np.frombuffer(self._regs, dtype=np.uint8)
        low = regs[regs < 32].astype(np.int64)
        high = regs[regs >= 32].astype(np.int64)
        kxq0 = float(np.ldexp(1.0, -low).sum())  # exact: dyadic terms, < 53 bits in total
        kxq1 = float(np.ldexp(1.0, -high).sum())
        zeros = int(np.count_nonzero(regs == 0))
        flags = _COMPACT | _OUT_OF_ORDER | (_EMPTY if zeros == len(regs) else 0)
        head = bytes([_HLL_PREINTS, _SER_VER, _FAMILY_HLL, self.lg_k, 0, flags, 0, _MODE_HLL8])
        return head + struct.pack("<dddii", 0.0, kxq0, kxq1, zeros, 0) + self._regs

    def to_obj(self) -> list[Any]:
        return [self.TAG, self.lg_k, self._regs]

    @classmethod
    def from_obj(cls, obj: Any) -> HllSketch:
        lg_k, regs = codec.check_header(obj, cls.TAG, 2, "HllSketch")
        check_param(lg_k, "lg_k", MIN_LG_K, MAX_LG_K, "HllSketch")
        if not isinstance(regs, bytes):
            raise DecodeError(f"HllSketch: registers must be bytes, got {type(regs).__name__}")
        return cls(lg_k, regs)

    @classmethod
    def from_bytes(cls, data: bytes, lg_k: int | None = None) -> HllSketch:
        """Strict decode; with `lg_k`, a sketch of another size is a DecodeError too."""
        value: HllSketch = super().from_bytes(data)
        if lg_k is not None and value.lg_k != lg_k:
            raise DecodeError(f"HllSketch: lg_k is {value.lg_k}, expected {lg_k}")
        return value

    def _repr_body(self) -> str:
        return f"lg_k={self.lg_k}, estimate={self.estimate().value:.1f}"


def _registers_of(sk: Any, lg_k: int) -> bytes:
    """The registers of a DataSketches HLL_8 sketch this process built (HLL mode, or empty)."""
    if sk.is_empty():
        return bytes(1 << lg_k)
    image = sk.serialize_compact()
    start = 40
    if image[0] != _HLL_PREINTS or image[7] != _MODE_HLL8 or len(image) != start + (1 << lg_k):
        raise LatticeError(f"DataSketches returned an unexpected HLL layout {image[:8].hex()}")
    return bytes(image[start:])


codec.register_decoder(HllSketch.TAG, HllSketch.from_obj)
