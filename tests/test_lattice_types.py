"""Behaviour of each lattice type as a user sees it."""

from __future__ import annotations

import pytest

from crdtd.errors import DecodeError, LatticeError, LatticeTypeError
from crdtd.lattice import (
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


def test_gcounter_sums_per_node_and_join_takes_the_max():
    a = GCounter().increment("a", 3)
    b = GCounter().increment("a", 1).increment("b", 2)
    assert a.join(b).value == 5
    with pytest.raises(ValueError):
        a.increment("a", -1)


def test_pncounter_counts_down():
    c = PNCounter().increment("a", 5).decrement("b", 2)
    assert c.value == 3
    assert c.join(PNCounter().decrement("b", 4)).value == 1


def test_lww_register_orders_by_timestamp_then_node():
    r1 = LWWRegister("x", 5, "a")
    r2 = LWWRegister("y", 5, "b")
    r3 = LWWRegister("z", 4, "z")
    assert r1.join(r2).value == "y" and r2.join(r1).value == "y"
    assert r3.join(r1).value == "x"


def test_mv_register_keeps_concurrent_writes_and_drops_overwritten_ones():
    base = MVRegister().set("v0", "a")
    left = base.set("left", "a")
    right = base.set("right", "b")
    merged = left.join(right)
    assert merged.values == ["left", "right"]
    assert merged.set("final", "c").join(left).values == ["final"]


def test_version_vector_detects_concurrency():
    a = VersionVector({"a": 2})
    b = VersionVector({"b": 1})
    assert a.concurrent(b)
    assert a.le(a.join(b))


def test_gset_union():
    assert GSet([1, 2]).join(GSet([2, 3])).elements == [1, 2, 3]
    assert 2 in GSet([1, 2]) and 9 not in GSet([1, 2])


def test_gset_keeps_int_float_and_bool_apart():
    s = GSet([1, 1.0, True])
    assert len(s) == 3


def test_orset_add_wins_over_concurrent_remove():
    s = ORSet().add("x", "a")
    removed = s.remove("x")
    re_added = s.add("x", "b")
    assert "x" in removed.join(re_added)
    assert "x" in re_added.join(removed)


def test_orset_remove_of_observed_add_sticks():
    s = ORSet().add("x", "a").add("y", "a")
    r = s.remove("x")
    assert r.join(s).elements == ["y"]


def test_orset_deltas_reproduce_the_full_state():
    s = ORSet()
    d1 = s.add_delta("x", "a")
    s = s.join(d1)
    d2 = s.add_delta("y", "a")
    s = s.join(d2)
    d3 = s.remove_delta("x")
    s = s.join(d3)
    replica = ORSet().join(d1).join(d2).join(d3)
    assert replica == s and s.elements == ["y"]
    assert len(d2.to_bytes()) < len(s.add("z", "a").to_bytes())


def test_ormap_joins_values_of_the_same_key():
    m1 = ORMap().update("k", "a", lambda v: (v or GCounter()).increment("a", 2))
    m2 = ORMap().update("k", "b", lambda v: (v or GCounter()).increment("b", 3))
    merged = m1.join(m2)
    assert merged.get("k").value == 5
    assert merged.remove("k").get("k") is None


def test_ormap_rejects_mixed_value_types_for_one_key():
    m1 = ORMap().update("k", "a", lambda v: GCounter().increment("a"))
    m2 = ORMap().update("k", "b", lambda v: GSet([1]))
    with pytest.raises(LatticeTypeError, match="cannot join GCounter with GSet"):
        m1.join(m2)


def test_product_joins_field_by_field_and_checks_fields():
    p = Product(a=GCounter().increment("a"), b=GSet([1]))
    q = Product(a=GCounter().increment("b"), b=GSet([2]))
    j = p.join(q)
    assert j.a.value == 2 and j.b.elements == [1, 2]
    with pytest.raises(LatticeError, match="fields differ"):
        p.join(Product(a=GCounter()))


def test_decode_names_what_is_wrong():
    with pytest.raises(DecodeError, match="unknown lattice tag"):
        from crdtd.lattice import decode

        decode(b"\x91\xa3zzz")
    with pytest.raises(DecodeError, match="non-negative integer"):
        GCounter.from_bytes(b"\x92\xa2gc\x91\x92\xa1a\xff")


def test_unsupported_values_are_rejected_with_their_type():
    with pytest.raises(DecodeError, match="unsupported type dict"):
        GSet([{"a": 1}])
