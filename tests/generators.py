"""Hypothesis strategies, one per input type, shared by every law and merge test."""

from __future__ import annotations

import hashlib

from hypothesis import strategies as st

from crdtd.lattice import (
    DotContext,
    GCounter,
    GSet,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Product,
    VersionVector,
)

NODES = ("a", "b", "c")
node_ids = st.sampled_from(NODES)

scalar_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=6),
)
canonical_values = st.recursive(
    scalar_values, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6
)

counts = st.dictionaries(node_ids, st.integers(min_value=0, max_value=50), max_size=3)
gcounters = counts.map(GCounter)
pncounters = st.builds(PNCounter, gcounters, gcounters)
version_vectors = counts.map(VersionVector)
lww_registers = st.builds(
    LWWRegister, canonical_values, st.integers(min_value=0, max_value=5), node_ids
)
mv_registers = st.lists(st.tuples(st.integers(0, 4), version_vectors), max_size=3).map(MVRegister)
gsets = st.lists(canonical_values, max_size=5).map(GSet)

dots = st.tuples(node_ids, st.integers(min_value=1, max_value=6))


def _element_of(dot: tuple[str, int], universe: int = 4) -> str:
    """Each dot names one add of one element, the same in every draw (a global history)."""
    return f"e{hashlib.sha256(repr(dot).encode()).digest()[0] % universe}"


@st.composite
def orsets(draw: st.DrawFn) -> ORSet:
    """A reachable ORSet state: live dots ⊆ context, and each dot adds a fixed element."""
    context = draw(st.frozensets(dots, max_size=8))
    live = (
        draw(st.frozensets(st.sampled_from(sorted(context)), max_size=8))
        if context
        else frozenset()
    )
    by_elem: dict[str, set[tuple[str, int]]] = {}
    for d in sorted(live):
        by_elem.setdefault(_element_of(d), set()).add(d)
    return ORSet(sorted(by_elem.items()), DotContext(context))


@st.composite
def ormaps(draw: st.DrawFn) -> ORMap:
    """An ORMap whose key set is a reachable ORSet and whose values are GCounters."""
    keys = draw(orsets())
    universe = [f"e{i}" for i in range(4)]
    values = [(k, draw(gcounters)) for k in universe if draw(st.booleans())]
    return ORMap(keys, values)


products = st.builds(lambda a, b: Product(count=a, members=b), gcounters, orsets())

ALL_LATTICES = {
    "GCounter": gcounters,
    "PNCounter": pncounters,
    "VersionVector": version_vectors,
    "LWWRegister": lww_registers,
    "MVRegister": mv_registers,
    "GSet": gsets,
    "ORSet": orsets(),
    "ORMap": ormaps(),
    "Product": products,
}
