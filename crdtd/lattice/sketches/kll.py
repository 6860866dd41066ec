"""KLL quantile sketches as a lattice: the set of contributed sketches, queried together.

DataSketches' KLL `merge` cannot be a lattice join: it adds the streams (merging a sketch with
itself doubles every weight, so it is not idempotent) and its compactor draws coin flips from
a generator seeded by the wall clock (merging the same two sketches twice gives different
bytes). So the lattice value is a grow-only set of *components*, one per contributed sketch:
each the weighted items DataSketches retained (`n`, min, max, items ascending with their
weights). Join is set union, `le` is inclusion: both exact. Queries run over the combined
sorted view of every component with DataSketches' own rank and quantile definitions, so a
one-component value answers exactly as the library does and every node answers identically.

Each component's rank error is at most `eps * n_i` (DataSketches' single-sided normalised rank
error for `k`, at its 99 % confidence), so the combined view's rank error is at most `eps * N`
whenever every component is within its bound.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from crdtd.errors import DecodeError, LatticeTypeError, LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase
from crdtd.lattice.sketches.common import Estimate, check_param, ds

MIN_K, MAX_K = 8, 65535
MAX_ITEMS = 1 << 20
"""Most retained items one component may hold (a KLL sketch of k=65535 holds far fewer)."""
KLL_CONFIDENCE = 0.99

Component = tuple[int, float, float, tuple[float, ...], tuple[int, ...]]


class KllSketch(LatticeBase):
    """Quantiles of float streams; `KllSketch.of(values, k=200)` builds one component."""

    TAG = "kll"
    __slots__ = ("_comps", "_view", "k")

    def __init__(self, k: int = 200, components: Iterable[Component] = ()) -> None:
        self.k = check_param(k, "k", MIN_K, MAX_K, "KllSketch")
        comps = {codec.pack(_component_obj(c)): c for c in map(_check_component, components)}
        self._comps = tuple(comps[b] for b in sorted(comps))
        self._view: tuple[list[float], list[int]] | None = None

    @classmethod
    def of(cls, values: Iterable[float], k: int = 200) -> KllSketch:
        """One component sketching `values` (floats; NaN is refused, not skipped)."""
        check_param(k, "k", MIN_K, MAX_K, "KllSketch")
        sk = ds.kll_doubles_sketch(k)
        for v in values:
            f = float(v)
            if math.isnan(f):
                raise LatticeValueError("KllSketch value: NaN has no rank")
            sk.update(f)
        if sk.is_empty():
            return cls(k)
        return cls(k, [_component_of(sk)])

    @property
    def n(self) -> int:
        """Total number of values sketched across components."""
        return sum(c[0] for c in self._comps)

    @property
    def components(self) -> tuple[Component, ...]:
        return self._comps

    @property
    def rank_error(self) -> float:
        """Normalised single-sided rank error (DataSketches' bound for `k`)."""
        return float(ds.kll_doubles_sketch.get_normalized_rank_error(self.k, False))

    @property
    def min(self) -> float:
        self._need_values("min")
        return min(c[1] for c in self._comps)

    @property
    def max(self) -> float:
        self._need_values("max")
        return max(c[2] for c in self._comps)

    def _need_values(self, what: str) -> None:
        if not self._comps:
            raise LatticeValueError(f"KllSketch.{what}: the sketch is empty")

    def _sorted_view(self) -> tuple[list[float], list[int]]:
        """Items ascending with cumulative weights, equal items folded together."""
        if self._view is None:
            pairs = sorted(
                (item, w) for c in self._comps for item, w in zip(c[3], c[4], strict=True)
            )
            items: list[float] = []
            cum: list[int] = []
            total = 0
            for item, w in pairs:
                total += w
                if items and items[-1] == item:
                    cum[-1] = total
                else:
                    items.append(item)
                    cum.append(total)
            self._view = (items, cum)
        return self._view

    def rank(self, value: float, inclusive: bool = False) -> float:
        """Normalised rank of `value`: the fraction of values below it (or at most it)."""
        self._need_values("rank")
        items, cum = self._sorted_view()
        pos = (bisect.bisect_right if inclusive else bisect.bisect_left)(items, float(value))
        return 0.0 if pos == 0 else cum[pos - 1] / cum[-1]

    def quantile(self, rank: float, inclusive: bool = False) -> float:
        """The value at normalised `rank` in [0, 1] (DataSketches' definition)."""
        self._need_values("quantile")
        if not 0.0 <= rank <= 1.0:
            raise LatticeValueError(f"KllSketch.quantile: rank {rank!r} is not in [0, 1]")
        items, cum = self._sorted_view()
        total = cum[-1]
        if inclusive:
            pos = bisect.bisect_left(cum, math.ceil(rank * total))
        else:
            pos = bisect.bisect_right(cum, int(rank * total))
        return items[min(pos, len(items) - 1)]

    def quantile_bounds(self, rank: float) -> Estimate:
        """The quantile at `rank` with the values at `rank -/+ rank_error` as its bounds."""
        eps = self.rank_error
        return Estimate(
            self.quantile(rank),
            self.quantile(max(0.0, rank - eps)),
            self.quantile(min(1.0, rank + eps)),
            KLL_CONFIDENCE,
        )

    def join(self, other: KllSketch) -> KllSketch:
        self._check(other, "join")
        return KllSketch(self.k, self._comps + other._comps)

    def le(self, other: KllSketch) -> bool:
        self._check(other, "compare")
        return set(self._comps) <= set(other._comps)

    def _check(self, other: Any, op: str) -> None:
        self._same_type(other, op)
        if other.k != self.k:
            raise LatticeTypeError(f"cannot {op} KllSketch(k={self.k}) with KllSketch(k={other.k})")

    def to_obj(self) -> list[Any]:
        return [self.TAG, self.k, [_component_obj(c) for c in self._comps]]

    @classmethod
    def from_obj(cls, obj: Any) -> KllSketch:
        k, comps = codec.check_header(obj, cls.TAG, 2, "KllSketch")
        codec.expect_list(comps, None, "KllSketch.components")
        out = []
        for c in comps:
            n, lo, hi, items, weights = codec.expect_list(c, 5, "KllSketch component")
            codec.expect_list(items, None, "KllSketch items")
            codec.expect_list(weights, None, "KllSketch weights")
            out.append((n, lo, hi, tuple(items), tuple(weights)))
        return cls(k, out)

    @classmethod
    def from_bytes(cls, data: bytes, k: int | None = None) -> KllSketch:
        """Strict decode; with `k`, a sketch of another size is a DecodeError too."""
        value: KllSketch = super().from_bytes(data)
        if k is not None and value.k != k:
            raise DecodeError(f"KllSketch: k is {value.k}, expected {k}")
        return value

    def _repr_body(self) -> str:
        return f"k={self.k}, n={self.n}, components={len(self._comps)}"


def _component_of(sk: Any) -> Component:
    """The weighted items a DataSketches KLL sketch retained, equal items folded."""
    folded: dict[float, int] = {}
    for item, weight in sk:
        key = float(item) + 0.0  # -0.0 and 0.0 are one item
        folded[key] = folded.get(key, 0) + int(weight)
    items = tuple(sorted(folded))
    return (
        int(sk.n),
        float(sk.get_min_value()) + 0.0,
        float(sk.get_max_value()) + 0.0,
        items,
        tuple(folded[i] for i in items),
    )


def _component_obj(c: Component) -> list[Any]:
    return [c[0], c[1], c[2], list(c[3]), list(c[4])]


def _check_component(c: Sequence[Any]) -> Component:
    """n >= 1, min <= items <= max (strictly ascending, not NaN), weights sum to n."""
    where = "KllSketch component"
    if not isinstance(c, tuple | list) or len(c) != 5:
        raise LatticeValueError(f"{where}: expected (n, min, max, items, weights)")
    n, lo, hi, items, weights = c
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= codec.MAX_INT:
        raise LatticeValueError(f"{where}: n must be an integer in [1, 2**63 - 1], got {n!r}")
    if not (len(items) == len(weights) and 1 <= len(items) <= min(n, MAX_ITEMS)):
        raise LatticeValueError(
            f"{where}: {len(items)} items and {len(weights)} weights for n={n} "
            f"(need equal counts in [1, min(n, {MAX_ITEMS})])"
        )
    for x in (lo, hi, *items):
        if type(x) is not float or math.isnan(x) or (x == 0.0 and math.copysign(1.0, x) < 0):
            raise LatticeValueError(f"{where}: values must be floats, not NaN or -0.0: {x!r}")
    if not (lo <= items[0] and items[-1] <= hi):
        raise LatticeValueError(f"{where}: items must lie within [min, max]")
    if any(a >= b for a, b in itertools.pairwise(items)):
        raise LatticeValueError(f"{where}: items must be strictly ascending")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise LatticeValueError(f"{where}: weights must be positive integers, got {w!r}")
    if sum(weights) != n:
        raise LatticeValueError(f"{where}: weights sum to {sum(weights)}, not n={n}")
    return (n, lo, hi, tuple(items), tuple(weights))


codec.register_decoder(KllSketch.TAG, KllSketch.from_obj)
