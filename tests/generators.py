"""Hypothesis strategies, one per input type, shared by every law and merge test."""

from __future__ import annotations

import functools
import hashlib

from hypothesis import strategies as st

from crdtd.lattice import (
    DotContext,
    FrequentItemsSketch,
    GCounter,
    GSet,
    HllSketch,
    KllSketch,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Product,
    ThetaSketch,
    VersionVector,
)
from crdtd.lattice.sketches.theta import MAX_THETA

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

# Sketches: small sizes so estimation mode, compaction and purging all happen.
ids = st.integers(min_value=0, max_value=400)
hll_sketches = st.lists(ids, max_size=150).map(lambda vs: HllSketch.of(vs, lg_k=4))
built_theta_sketches = st.lists(ids, max_size=150).map(lambda vs: ThetaSketch.of(vs, lg_k=5))


@st.composite
def theta_states(draw: st.DrawFn) -> ThetaSketch:
    """Any valid theta state, also ones no single stream produces (theta < 1, few hashes)."""
    theta = draw(st.one_of(st.just(MAX_THETA), st.integers(min_value=1, max_value=MAX_THETA)))
    hashes = draw(st.sets(st.integers(min_value=1, max_value=max(1, theta - 1)), max_size=32))
    return ThetaSketch(5, theta, sorted(h for h in hashes if h < theta))


theta_sketches = st.one_of(built_theta_sketches, theta_states())


@functools.lru_cache(maxsize=4096)
def _kll_of(stream: tuple[float, ...]) -> KllSketch:
    """DataSketches' KLL compactor is seeded by the wall clock: one sketch per drawn stream
    keeps the strategy deterministic within a run, as Hypothesis requires."""
    return KllSketch.of(stream, k=8)


kll_sketches = st.lists(
    st.lists(st.integers(-50, 50).map(float), min_size=1, max_size=80).map(tuple), max_size=3
).map(lambda streams: _joined([_kll_of(s) for s in streams], KllSketch(k=8)))
frequent_sketches = st.lists(
    st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=60), max_size=3
).map(
    lambda streams: _joined(
        [FrequentItemsSketch.of(s, lg_max_map_size=3) for s in streams],
        FrequentItemsSketch(lg_max_map_size=3),
    )
)


def _joined(values, empty):
    out = empty
    for v in values:
        out = out.join(v)
    return out


SKETCHES = {
    "HllSketch": hll_sketches,
    "ThetaSketch": theta_sketches,
    "KllSketch": kll_sketches,
    "FrequentItemsSketch": frequent_sketches,
}

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
    **SKETCHES,
}
