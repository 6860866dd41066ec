"""Frequent-items sketches as a lattice: the set of contributed sketches, queried together.

DataSketches' frequent-items `merge` adds counters (merging a sketch with itself doubles
them), so it is not idempotent and cannot be a join. As with KLL, the lattice value is a
grow-only set of components, one per contributed sketch: its total weight, its error offset
and the (item, counter) pairs it tracked. Join is set union, `le` is inclusion.

Per component DataSketches bounds an item's count by `counter <= true <= counter + offset`
(an untracked item: `0 <= true <= offset`) and estimates it as `counter + offset` when
tracked, else 0. The combined bounds are the sums over components; they are deterministic,
and a one-component value answers exactly as the library does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crdtd.errors import DecodeError, LatticeTypeError, LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase
from crdtd.lattice.sketches.common import Estimate, check_param, ds

MIN_LG_MAX, MAX_LG_MAX = 3, 26
MAX_ITEM_BYTES = 4096

Component = tuple[int, int, tuple[tuple[str, int], ...]]


class FrequentItemsSketch(LatticeBase):
    """Heavy hitters of string streams; `FrequentItemsSketch.of(items)` builds one component.

    `lg_max_map_size` bounds the items a component tracks (0.75 * 2**lg_max_map_size); the
    a-priori error of a component of total weight W is `epsilon * W`.
    """

    TAG = "fi"
    __slots__ = ("_comps", "_maps", "lg_max_map_size")

    def __init__(self, lg_max_map_size: int = 10, components: Iterable[Component] = ()) -> None:
        self.lg_max_map_size = check_param(
            lg_max_map_size, "lg_max_map_size", MIN_LG_MAX, MAX_LG_MAX, "FrequentItemsSketch"
        )
        capacity = (3 << lg_max_map_size) // 4
        checked = (_check_component(c, capacity) for c in components)
        comps = {codec.pack(_component_obj(c)): c for c in checked}
        self._comps = tuple(comps[b] for b in sorted(comps))
        self._maps: list[dict[str, int]] | None = None

    @classmethod
    def of(
        cls, items: Iterable[str] | Mapping[str, int], lg_max_map_size: int = 10
    ) -> FrequentItemsSketch:
        """One component counting `items` (strings), or an {item: weight} mapping."""
        check_param(
            lg_max_map_size, "lg_max_map_size", MIN_LG_MAX, MAX_LG_MAX, "FrequentItemsSketch"
        )
        sk = ds.frequent_strings_sketch(lg_max_map_size)
        pairs = items.items() if isinstance(items, Mapping) else ((i, 1) for i in items)
        for item, weight in pairs:
            _check_item(item)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise LatticeValueError(
                    f"FrequentItemsSketch: weight of {item[:40]!r} must be a positive integer"
                )
            sk.update(item, weight)
        if sk.is_empty():
            return cls(lg_max_map_size)
        return cls(lg_max_map_size, [_component_of(sk)])

    @property
    def components(self) -> tuple[Component, ...]:
        return self._comps

    @property
    def total_weight(self) -> int:
        return sum(c[0] for c in self._comps)

    @property
    def max_error(self) -> int:
        """Largest possible undercount of any item (the sum of the components' offsets)."""
        return sum(c[1] for c in self._comps)

    @property
    def epsilon(self) -> float:
        """A-priori relative error of one component (DataSketches' bound for the map size)."""
        return float(ds.frequent_strings_sketch.get_epsilon_for_lg_size(self.lg_max_map_size))

    def estimate(self, item: str) -> Estimate:
        """The item's total weight with deterministic lower and upper bounds."""
        _check_item(item)
        if self._maps is None:
            self._maps = [dict(c[2]) for c in self._comps]
        value = lower = upper = 0
        for (_total, offset, _pairs), counters in zip(self._comps, self._maps, strict=True):
            counter = counters.get(item, 0)
            lower += counter
            upper += counter + offset
            value += counter + offset if counter else 0
        return Estimate(float(value), float(lower), float(upper), 1.0)

    def frequent_items(
        self, threshold: int | None = None, no_false_positives: bool = True
    ) -> list[tuple[str, Estimate]]:
        """Items whose weight surely (or, with `no_false_positives=False`, possibly) exceeds
        `threshold` (default: `max_error`), by estimate descending, then item."""
        limit = self.max_error if threshold is None else threshold
        candidates = {item for c in self._comps for item, _ in c[2]}
        out = []
        for item in candidates:
            est = self.estimate(item)
            if (est.lower if no_false_positives else est.upper) > limit:
                out.append((item, est))
        out.sort(key=lambda p: (-p[1].value, p[0]))
        return out

    def join(self, other: FrequentItemsSketch) -> FrequentItemsSketch:
        self._check(other, "join")
        return FrequentItemsSketch(self.lg_max_map_size, self._comps + other._comps)

    def le(self, other: FrequentItemsSketch) -> bool:
        self._check(other, "compare")
        return set(self._comps) <= set(other._comps)

    def _check(self, other: Any, op: str) -> None:
        self._same_type(other, op)
        if other.lg_max_map_size != self.lg_max_map_size:
            raise LatticeTypeError(
                f"cannot {op} FrequentItemsSketch(lg_max_map_size={self.lg_max_map_size}) "
                f"with FrequentItemsSketch(lg_max_map_size={other.lg_max_map_size})"
            )

    def to_obj(self) -> list[Any]:
        return [self.TAG, self.lg_max_map_size, [_component_obj(c) for c in self._comps]]

    @classmethod
    def from_obj(cls, obj: Any) -> FrequentItemsSketch:
        lg, comps = codec.check_header(obj, cls.TAG, 2, "FrequentItemsSketch")
        codec.expect_list(comps, None, "FrequentItemsSketch.components")
        out = []
        for c in comps:
            total, offset, pairs = codec.expect_list(c, 3, "FrequentItemsSketch component")
            codec.expect_list(pairs, None, "FrequentItemsSketch items")
            items = []
            for p in pairs:
                item, counter = codec.expect_list(p, 2, "FrequentItemsSketch item")
                items.append((item, counter))
            out.append((total, offset, tuple(items)))
        return cls(lg, out)

    @classmethod
    def from_bytes(cls, data: bytes, lg_max_map_size: int | None = None) -> FrequentItemsSketch:
        """Strict decode; with `lg_max_map_size`, another size is a DecodeError too."""
        value: FrequentItemsSketch = super().from_bytes(data)
        if lg_max_map_size is not None and value.lg_max_map_size != lg_max_map_size:
            raise DecodeError(
                f"FrequentItemsSketch: lg_max_map_size is {value.lg_max_map_size}, "
                f"expected {lg_max_map_size}"
            )
        return value

    def _repr_body(self) -> str:
        return (
            f"lg_max_map_size={self.lg_max_map_size}, total_weight={self.total_weight}, "
            f"components={len(self._comps)}"
        )


def _check_item(item: Any) -> str:
    if not isinstance(item, str):
        raise LatticeValueError(
            f"FrequentItemsSketch: items are strings, got {type(item).__name__}"
        )
    if len(item.encode("utf-8", "surrogatepass")) > MAX_ITEM_BYTES:
        raise LatticeValueError(f"FrequentItemsSketch: item longer than {MAX_ITEM_BYTES} bytes")
    return item


def _component_of(sk: Any) -> Component:
    """Total weight, offset and tracked (item, counter) pairs of a DataSketches sketch."""
    rows = sk.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
    pairs = tuple(
        sorted(
            ((item, int(lb)) for item, _est, lb, _ub in rows if lb > 0),
            key=lambda p: p[0].encode("utf-8", "surrogatepass"),
        )
    )
    offsets = {int(ub) - int(lb) for _item, _est, lb, ub in rows}
    offset = offsets.pop() if offsets else 0
    return (int(sk.total_weight), offset, pairs)


def _component_obj(c: Component) -> list[Any]:
    return [c[0], c[1], [[item, counter] for item, counter in c[2]]]


def _check_component(c: Sequence[Any], capacity: int) -> Component:
    """total >= 1, 0 <= offset <= total, items unique ascending, counters sum <= total."""
    where = "FrequentItemsSketch component"
    if not isinstance(c, tuple | list) or len(c) != 3:
        raise LatticeValueError(f"{where}: expected (total_weight, offset, pairs)")
    total, offset, pairs = c
    for name, v, lo in (("total weight", total, 1), ("offset", offset, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= codec.MAX_INT:
            raise LatticeValueError(f"{where}: {name} must be an integer >= {lo}, got {v!r}")
    if offset > total or len(pairs) > capacity:
        raise LatticeValueError(
            f"{where}: offset {offset} > total {total}, or {len(pairs)} items > {capacity}"
        )
    out = []
    prev: bytes | None = None
    counted = 0
    for p in pairs:
        if not isinstance(p, tuple | list) or len(p) != 2:
            raise LatticeValueError(f"{where}: expected (item, counter) pairs")
        item, counter = _check_item(p[0]), p[1]
        key = item.encode("utf-8", "surrogatepass")
        if prev is not None and key <= prev:
            raise LatticeValueError(f"{where}: items must be unique and ascending")
        prev = key
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 1:
            raise LatticeValueError(f"{where}: counter of {item[:40]!r} must be positive")
        counted += counter
        out.append((item, counter))
    if counted > total:
        raise LatticeValueError(f"{where}: counters sum to {counted} > total weight {total}")
    return (total, offset, tuple(out))


codec.register_decoder(FrequentItemsSketch.TAG, FrequentItemsSketch.from_obj)
