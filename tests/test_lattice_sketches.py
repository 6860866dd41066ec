"""DataSketches as lattice values: laws, order-free bytes, strict decoding, library parity."""

from __future__ import annotations

import random

import datasketches as ds
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.errors import DecodeError, LatticeTypeError, LatticeValueError
from crdtd.lattice import (
    FrequentItemsSketch,
    GCounter,
    HllSketch,
    KllSketch,
    ThetaSketch,
    check_crdt,
    decode,
    verify_laws,
)
from crdtd.lattice.sketches.kll import _component_of as component_of
from tests.generators import SKETCHES, ids

NAMES = sorted(SKETCHES)


def _join(a, b):
    return a.join(b)


def _fold(values, order, grouping):
    """Join `values` in the given order, splitting the list at the given points."""
    vs = [values[i] for i in order]

    def tree(lo, hi, cuts):
        if hi - lo == 1:
            return vs[lo]
        mid = lo + 1 + (cuts[0] % (hi - lo - 1)) if cuts else (lo + hi) // 2
        return tree(lo, mid, cuts[1:]).join(tree(mid, hi, cuts[1:]))

    return tree(0, len(vs), grouping)


@pytest.mark.parametrize("name", NAMES)
def test_sketch_join_passes_check_crdt(name):
    report = check_crdt(_join, SKETCHES[name], max_examples=40)
    assert report.ok, f"{name}:\n{report}"


@pytest.mark.parametrize("name", NAMES)
def test_sketch_bytes_do_not_depend_on_union_order_or_grouping(name):
    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(SKETCHES[name], min_size=2, max_size=5),
        st.randoms(use_true_random=False),
        st.lists(st.integers(0, 10), max_size=4),
    )
    def check(values, rnd, grouping):
        order = list(range(len(values)))
        rnd.shuffle(order)
        left_fold = _fold(values, range(len(values)), [])
        assert _fold(values, order, grouping).to_bytes() == left_fold.to_bytes()

    check()


def _sites():
    rnd = random.Random(7)
    patients = [f"patient-{i}" for i in range(30_000)]
    return [rnd.sample(patients, 12_000) for _ in range(3)]


def test_distinct_patients_across_three_sites_are_within_the_stated_bound():
    sites = _sites()
    truth = len(set().union(*sites))
    for cls in (HllSketch, ThetaSketch):
        merged = _fold([cls.of(ids) for ids in sites], [2, 0, 1], [1])
        est = merged.estimate(std_devs=2)
        assert est.lower <= truth <= est.upper, (cls.__name__, truth, est)
        assert abs(est.value - truth) / truth < 0.05


@pytest.mark.parametrize("cls", [HllSketch, ThetaSketch])
def test_union_of_site_sketches_equals_the_sketch_of_all_values(cls):
    sites = _sites()
    whole = cls.of([v for s in sites for v in s], lg_k=10)
    parts = [cls.of(s, lg_k=10) for s in sites]
    assert parts[0].join(parts[1]).join(parts[2]).to_bytes() == whole.to_bytes()


def test_verify_laws_holds_on_every_sketch_type():
    samples = {
        "hll": [HllSketch.of(range(n), lg_k=6) for n in (0, 5, 300, 5000)],
        "theta": [ThetaSketch.of(range(n, 2 * n + 50), lg_k=5) for n in (0, 10, 400)],
        "kll": [KllSketch.of([float(i) for i in range(n)], k=8) for n in (1, 50, 500)],
        "fi": [FrequentItemsSketch.of([str(i % m) for i in range(99)], 3) for m in (2, 9, 40)],
    }
    for name, values in samples.items():
        report = verify_laws(_join, values)
        assert report.ok, f"{name}:\n{report}"


@pytest.mark.parametrize("name", NAMES)
def test_order_is_a_partial_order_consistent_with_join(name):
    @settings(max_examples=30, deadline=None)
    @given(SKETCHES[name], SKETCHES[name])
    def check(a, b):
        assert a.le(a.join(b)) and b.le(a.join(b))
        assert a.le(b) == (a.join(b) == b)

    check()


def test_hll_image_is_what_datasketches_itself_writes():
    for n in (0, 1, 40, 5000):
        value = HllSketch.of(range(n), lg_k=8)
        image = value.datasketch_bytes()
        assert ds.hll_sketch.deserialize(image).serialize_compact() == image
    a, b = HllSketch.of(range(3000), lg_k=8), HllSketch.of(range(2000, 9000), lg_k=8)
    regs = bytes(max(x, y) for x, y in zip(a.registers, b.registers, strict=True))
    assert a.join(b).registers == regs  # DataSketches' HLL_8 union is the register maximum


def test_theta_image_is_what_datasketches_itself_writes():
    for n in (0, 1, 2, 20, 5000):
        sk = ds.update_theta_sketch(5)
        for i in range(n):
            sk.update(i)
        union = ds.theta_union(5)
        union.update(sk)
        assert ThetaSketch.of(range(n), lg_k=5).datasketch_bytes() == union.get_result().serialize()
    nothing = ThetaSketch.of(range(5000), lg_k=5)
    empty_estimation = ds.theta_a_not_b().compute(nothing._sketch(), nothing._sketch())
    state = ThetaSketch(5, nothing.theta, [])
    assert state.datasketch_bytes() == empty_estimation.serialize()


def test_theta_set_operations_estimate_overlaps():
    a = ThetaSketch.of(range(0, 20_000))
    b = ThetaSketch.of(range(10_000, 30_000))
    inter, diff = a.intersection(b), a.difference(b)
    assert inter.lower <= 10_000 <= inter.upper
    assert diff.lower <= 10_000 <= diff.upper


def test_one_component_kll_answers_exactly_as_datasketches():
    rnd = random.Random(3)
    lib = ds.kll_doubles_sketch(16)
    for _ in range(5000):
        lib.update(rnd.gauss(0, 1))
    mine = KllSketch(16, [component_of(lib)])
    for r in [i / 50 for i in range(51)]:
        for inclusive in (False, True):
            assert mine.quantile(r, inclusive) == lib.get_quantile(r, inclusive)
    for x in (-3.0, -0.5, 0.0, 0.7, 2.5, 9.0):
        for inclusive in (False, True):
            assert mine.rank(x, inclusive) == pytest.approx(lib.get_rank(x, inclusive), abs=0)
    assert (mine.n, mine.min, mine.max) == (lib.n, lib.get_min_value(), lib.get_max_value())


def test_kll_quantiles_of_three_sites_are_within_the_rank_error():
    streams = [[float(i) for i in range(s, 30_000, 3)] for s in range(3)]
    merged = _fold([KllSketch.of(s, k=100) for s in streams], [1, 2, 0], [])
    everything = sorted(v for s in streams for v in s)
    for q in (0.1, 0.5, 0.9):
        got = merged.quantile(q)
        true_rank = everything.index(got) / len(everything)
        assert abs(true_rank - q) <= merged.rank_error
        bounds = merged.quantile_bounds(q)
        assert bounds.lower <= everything[int(q * len(everything))] <= bounds.upper


def test_one_component_frequent_items_answer_exactly_as_datasketches():
    rnd = random.Random(5)
    items = [f"item{min(int(rnd.paretovariate(1.2)), 200)}" for _ in range(20_000)]
    lib = ds.frequent_strings_sketch(5)
    for it in items:
        lib.update(it)
    mine = FrequentItemsSketch.of(items, lg_max_map_size=5)
    for it in ("item1", "item2", "item7", "item150", "missing"):
        est = mine.estimate(it)
        assert (est.value, est.lower, est.upper) == (
            lib.get_estimate(it),
            lib.get_lower_bound(it),
            lib.get_upper_bound(it),
        )
    theirs = lib.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES)
    assert {i for i, _ in mine.frequent_items()} == {row[0] for row in theirs}


def test_frequent_items_across_sites_bound_the_true_counts():
    sites = [["hot"] * 300 + [f"s{s}-{i}" for i in range(400)] for s in range(3)]
    merged = _fold([FrequentItemsSketch.of(s, 4) for s in sites], [0, 2, 1], [])
    est = merged.estimate("hot")
    assert est.lower <= 900 <= est.upper
    assert [i for i, _ in merged.frequent_items()] == ["hot"]


@pytest.mark.parametrize(
    "make,other_size,kw",
    [
        (lambda n: HllSketch.of(range(50), lg_k=n), 11, "lg_k"),
        (lambda n: ThetaSketch.of(range(50), lg_k=n), 11, "lg_k"),
        (lambda n: KllSketch.of([1.0, 2.0], k=2**n), 11, "k"),
        (lambda n: FrequentItemsSketch.of(["a"], lg_max_map_size=n), 11, "lg_max_map_size"),
    ],
)
def test_sketch_of_another_size_is_refused(make, other_size, kw):
    a, b = make(10), make(other_size)
    cls = type(a)
    expected = getattr(a, kw)
    with pytest.raises(DecodeError, match=f"{kw} is {getattr(b, kw)}, expected {expected}"):
        cls.from_bytes(b.to_bytes(), **{kw: expected})
    assert cls.from_bytes(a.to_bytes(), **{kw: expected}) == a
    with pytest.raises(LatticeTypeError, match=kw):
        a.join(b)


def test_sketch_of_another_type_is_refused_by_name():
    hll, theta = HllSketch.of([1, 2]), ThetaSketch.of([1, 2])
    with pytest.raises(DecodeError, match="expected tag 'hll', got 'theta'"):
        HllSketch.from_bytes(theta.to_bytes())
    with pytest.raises(LatticeTypeError, match="cannot join HllSketch with ThetaSketch"):
        hll.join(theta)
    with pytest.raises(LatticeTypeError, match="cannot join KllSketch with GCounter"):
        KllSketch.of([1.0]).join(GCounter())


@pytest.mark.parametrize(
    "obj,match",
    [
        (["hll", 4, bytes(15)], "registers"),
        (["hll", 4, bytes(15) + b"\x40"], "exceeds 63"),
        (["hll", 30, bytes(16)], "lg_k"),
        (["theta", 5, 10, [3, 2]], "ascending"),
        (["theta", 5, 10, [10]], "ascending integers in"),
        (["theta", 5, 2**63 - 1, list(range(1, 40))], "more than 2\\*\\*lg_k"),
        (["kll", 8, [[3, 0.0, 1.0, [0.0, 1.0], [1, 1]]]], "weights sum"),
        (["kll", 8, [[2, 0.0, 1.0, [1.0, 0.0], [1, 1]]]], "ascending"),
        (["kll", 8, [[1, 0.0, 0.0, [float("nan")], [1]]]], "NaN"),
        (["fi", 3, [[5, 0, [["b", 1], ["a", 1]]]]], "ascending"),
        (["fi", 3, [[1, 0, [["a", 2]]]]], "sum to 2"),
        (["fi", 3, [[9, 0, [[str(i), 1] for i in range(7)]]]], "items > 6"),
    ],
)
def test_malformed_sketch_bytes_are_decode_errors_naming_the_fault(obj, match):
    with pytest.raises(DecodeError, match=match):
        decode(msgpack.packb(obj, use_bin_type=True))


@given(st.lists(ids, max_size=30))
@settings(max_examples=20, deadline=None)
def test_bad_values_get_typed_errors_not_library_errors(values):
    for bad in (True, [1], float("nan"), None):
        with pytest.raises(LatticeValueError):
            HllSketch.of([*values, bad])
    with pytest.raises(LatticeValueError):
        KllSketch.of([1.0, float("nan")])
    with pytest.raises(LatticeValueError):
        FrequentItemsSketch.of([1, 2])
    with pytest.raises(LatticeValueError):
        HllSketch.of(values, lg_k=3)


def test_empty_sketches_are_the_bottom_of_each_lattice():
    for empty, full in (
        (HllSketch(), HllSketch.of(range(10))),
        (ThetaSketch(), ThetaSketch.of(range(10))),
        (KllSketch(), KllSketch.of([1.0])),
        (FrequentItemsSketch(), FrequentItemsSketch.of(["a"])),
    ):
        assert empty.le(full) and not full.le(empty)
        assert empty.join(full) == full and full.join(empty) == full
    assert HllSketch().estimate().value == 0.0 and ThetaSketch().estimate().value == 0.0
    with pytest.raises(LatticeValueError, match="empty"):
        KllSketch().quantile(0.5)


def test_sketches_nest_inside_other_lattices():
    from crdtd.lattice import ORMap

    m = ORMap().update("ward-1", "a", lambda v: HllSketch.of(["p1", "p2"]))
    m2 = ORMap().update("ward-1", "b", lambda v: HllSketch.of(["p2", "p3"]))
    merged = decode(m.join(m2).to_bytes())
    assert round(merged.get("ward-1").estimate().value) == 3


def test_datasketches_own_union_bytes_depend_on_order_so_a_canonical_form_is_needed():
    def lib_hll(values):
        sk = ds.hll_sketch(10, ds.HLL_8)
        for v in values:
            sk.update(v)
        return sk

    def lib_union(sketches):
        u = ds.hll_union(10)
        for sk in sketches:
            u.update(sk)
        return u.get_result(ds.HLL_8).serialize_compact()

    rnd = random.Random(1)
    samples = [rnd.sample(range(8000), n) for n in (200, 50, 1)]
    parts = [lib_hll(s) for s in samples]
    assert lib_union(parts) != lib_union(parts[::-1])
    mine = [HllSketch.of(s, lg_k=10) for s in samples]
    assert _fold(mine, [0, 1, 2], []).to_bytes() == _fold(mine, [2, 1, 0], []).to_bytes()


def test_datasketches_kll_builds_are_not_reproducible_so_components_are_kept():
    def build():
        sk = ds.kll_doubles_sketch(8)
        for i in range(2000):
            sk.update(float(i))
        return sk.serialize()

    assert len({build() for _ in range(5)}) > 1
    doubled = ds.kll_doubles_sketch.deserialize(build())
    doubled.merge(ds.kll_doubles_sketch.deserialize(build()))
    assert doubled.n == 4000  # the library's merge adds streams: not idempotent
    one = KllSketch.of([float(i) for i in range(2000)], k=8)
    assert one.join(one).n == 2000
