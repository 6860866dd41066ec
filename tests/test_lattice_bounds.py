"""Hostile bytes and misuse get typed errors, in time and memory proportional to the input."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from crdtd.errors import CrdtdError, DecodeError, LatticeTypeError, LatticeValueError
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
    decode,
)
from crdtd.lattice.codec import MAX_DEPTH


@pytest.mark.timeout(30)  # the old decoder expanded the range: 10**7 took seconds, 2**62 hung
@pytest.mark.parametrize("top", [10**7, 2**62, 2**63 - 1])
def test_orset_context_claiming_a_huge_range_decodes_without_expanding_it(top):
    data = msgpack.packb(["ors", [], [["a", top, []]]])
    value = decode(data)
    assert value.context.contains(("a", top)) and not value.context.contains(("a", top + 1))
    assert value.to_bytes() == data
    if top < 2**63 - 1:
        assert value.add_delta("x", "a").context.contains(("a", top + 1))
    else:
        with pytest.raises(LatticeValueError, match="dot counter"):
            value.add_delta("x", "a")


@pytest.mark.timeout(30)
def test_ormap_key_context_claiming_a_huge_range_decodes_without_expanding_it():
    data = msgpack.packb(["orm", ["ors", [], [["a", 2**62, [2**62 + 5]]]], []])
    assert decode(data).to_bytes() == data


def test_huge_contexts_join_and_compact_without_expanding():
    a = ORSet.from_bytes(msgpack.packb(["ors", [], [["a", 2**62, [2**62 + 2]]]]))
    b = ORSet.from_bytes(msgpack.packb(["ors", [], [["a", 5, [2**62 + 1]]]]))
    joined = a.join(b)
    assert joined.context == DotContext.from_ranges({"a": 2**62 + 2})
    assert joined.to_obj()[2] == [["a", 2**62 + 2, []]]


def test_dot_context_equality_ignores_how_it_was_built():
    assert DotContext([("a", 1), ("a", 2), ("a", 4)]) == DotContext([("a", 4), ("a", 2)]).add(
        [("a", 1)]
    )
    assert DotContext([("a", 1), ("a", 2)]) == DotContext.from_ranges({"a": 2})
    assert DotContext([("a", 3)]) != DotContext.from_ranges({"a": 3})


def _nested(depth: int) -> object:
    x: object = 1
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 1020])
def test_gset_element_nested_too_deep_is_a_decode_error(depth):
    data = msgpack.packb(["gs", [_nested(depth)]])
    with pytest.raises(DecodeError, match="nested deeper than"):
        decode(data)
    with pytest.raises(DecodeError, match="nested deeper than"):
        GSet.from_bytes(data)


def test_nesting_within_the_bound_still_round_trips():
    value = GSet([_nested_tuple(MAX_DEPTH - 3)])
    assert decode(value.to_bytes()) == value


def _nested_tuple(depth: int) -> object:
    x: object = 1
    for _ in range(depth):
        x = (x,)
    return x


def test_building_a_value_nested_too_deep_is_a_typed_error():
    with pytest.raises(LatticeValueError, match="nested deeper than"):
        GSet([_nested_tuple(2000)])


def test_ormap_nested_too_deep_is_a_decode_error():
    inner: list[object] = ["gc", []]
    for _ in range(100):
        inner = ["orm", ["ors", [["k", [["a", 1]]]], [["a", 1, []]]], [["k", inner]]]
    with pytest.raises(DecodeError, match="nested deeper than"):
        decode(msgpack.packb(inner))


@pytest.mark.parametrize("timestamp", [2**70, -(2**70), 2**63, True, 1.5])
def test_lww_register_timestamp_outside_64_bits_is_refused_at_construction(timestamp):
    with pytest.raises(LatticeValueError, match="LWWRegister timestamp"):
        LWWRegister("x", timestamp, "a")


def test_lww_register_set_with_an_overflowing_timestamp_leaves_the_register_usable():
    r = LWWRegister("x", 1, "a")
    with pytest.raises(LatticeValueError):
        r.set("y", 2**64, "a")
    assert r.set("y", 2**63 - 1, "a").to_bytes()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.decrement("a", -5),
        lambda c: c.increment("a", -5),
        lambda c: c.increment("a", True),
        lambda c: c.increment("a", 1.0),
        lambda c: c.increment("a", 2**63),
    ],
)
def test_pncounter_refuses_negative_or_non_integer_amounts(call):
    with pytest.raises(LatticeValueError, match="amount"):
        call(PNCounter())


@pytest.mark.parametrize("amount", [-1, 2.0, 2**64])
def test_gcounter_refuses_negative_or_non_integer_amounts(amount):
    with pytest.raises(LatticeValueError, match="amount"):
        GCounter().increment("a", amount)


def test_counter_overflow_past_64_bits_is_refused():
    c = GCounter().increment("a", 2**63 - 1)
    with pytest.raises(LatticeValueError):
        c.increment("a")


def test_pncounter_decrement_counts_down():
    assert PNCounter().decrement("a", 5).value == -5


SAMPLES = {
    "GCounter": GCounter({"a": 1}),
    "PNCounter": PNCounter().increment("a"),
    "VersionVector": VersionVector({"a": 1}),
    "LWWRegister": LWWRegister(1, 1, "a"),
    "MVRegister": MVRegister().set(1, "a"),
    "GSet": GSet([1]),
    "ORSet": ORSet().add(1, "a"),
    "ORMap": ORMap().update("k", "a", lambda v: GCounter({"a": 1})),
    "Product": Product(a=GCounter({"a": 1})),
    "HllSketch": HllSketch.of([1]),
    "ThetaSketch": ThetaSketch.of([1]),
    "KllSketch": KllSketch.of([1.0]),
    "FrequentItemsSketch": FrequentItemsSketch.of(["a"]),
}


@pytest.mark.parametrize(
    "left,right",
    [(a, b) for a, b in itertools.permutations(sorted(SAMPLES), 2)],
)
def test_joining_or_comparing_different_lattice_types_is_a_typed_error(left, right):
    a, b = SAMPLES[left], SAMPLES[right]
    with pytest.raises(LatticeTypeError, match=f"{left}.*{right}"):
        a.join(b)
    with pytest.raises(LatticeTypeError, match=f"{left}.*{right}"):
        a.le(b)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_joining_a_non_lattice_is_a_typed_error(name):
    with pytest.raises(LatticeTypeError):
        SAMPLES[name].join(3)


def test_ormap_values_of_different_types_under_one_key_are_a_type_error():
    m1 = ORMap().update("k", "a", lambda v: GCounter().increment("a"))
    m2 = ORMap().update("k", "b", lambda v: GSet([1]))
    with pytest.raises(LatticeTypeError, match="cannot join GCounter with GSet"):
        m1.join(m2)


def test_values_outside_the_lattice_contract_raise_crdtd_errors():
    for bad in (lambda: GSet([{1: 2}]), lambda: LWWRegister(1, 0, 5), lambda: ORSet([(1, [5])])):
        with pytest.raises(CrdtdError):
            bad()


def _mv_bytes(n: int) -> bytes:
    writes = [[i, ["vv", [[f"n{i:06d}", 1]]]] for i in range(n)]
    return msgpack.packb(["mv", sorted(writes, key=msgpack.packb)])


def test_mv_register_with_too_many_concurrent_writes_is_refused_before_pruning(monkeypatch):
    pruned = []
    prune = MVRegister._prune
    counted = staticmethod(lambda w: pruned.append(len(w)) or prune(w))
    monkeypatch.setattr(MVRegister, "_prune", counted)
    with pytest.raises(DecodeError, match="more than 256"):
        decode(_mv_bytes(5000))  # pruning 5000 writes (quadratic) took ~12 s
    assert pruned == []
    assert decode(_mv_bytes(MVRegister.MAX_WRITES)).values == list(range(256))


def test_mv_register_join_past_the_write_bound_is_a_typed_error():
    half = MVRegister.MAX_WRITES // 2 + 1
    a = MVRegister([(i, VersionVector({f"a{i}": 1})) for i in range(half)])
    b = MVRegister([(i, VersionVector({f"b{i}": 1})) for i in range(half)])
    with pytest.raises(LatticeValueError, match="concurrent writes"):
        a.join(b)
