"""Every lattice type obeys the semilattice laws, a consistent order and canonical bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.errors import DecodeError
from crdtd.lattice import check_crdt, decode, verify_laws
from tests.generators import ALL_LATTICES

NAMES = sorted(ALL_LATTICES)


def _join(a, b):
    return a.join(b)


@pytest.mark.parametrize("name", NAMES)
def test_join_is_commutative_associative_idempotent(name):
    report = check_crdt(_join, ALL_LATTICES[name], max_examples=60)
    assert report.ok, f"{name}:\n{report}"


@pytest.mark.parametrize("name", NAMES)
def test_partial_order_agrees_with_join(name):
    @settings(max_examples=60, deadline=None)
    @given(ALL_LATTICES[name], ALL_LATTICES[name])
    def check(a, b):
        j = a.join(b)
        assert a.le(j) and b.le(j)
        assert a.le(b) == (a.join(b) == b)
        assert a.le(a)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_canonical_bytes_round_trip_and_equal_values_equal_bytes(name):
    @settings(max_examples=60, deadline=None)
    @given(ALL_LATTICES[name], ALL_LATTICES[name])
    def check(a, b):
        data = a.to_bytes()
        back = type(a).from_bytes(data)
        assert back == a and back.to_bytes() == data
        assert decode(data) == a
        # join built in either order gives byte-identical encodings
        assert a.join(b).to_bytes() == b.join(a).to_bytes()

    check()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_bytes_raise_decode_error_and_nothing_else(data):
    with contextlib.suppress(DecodeError):
        decode(data)


@pytest.mark.parametrize("name", NAMES)
def test_mutated_encodings_raise_decode_error_or_decode_canonically(name):
    @settings(max_examples=40, deadline=None)
    @given(ALL_LATTICES[name], st.integers(min_value=0), st.integers(min_value=0, max_value=255))
    def check(a, pos, byte):
        data = bytearray(a.to_bytes())
        data[pos % len(data)] = byte
        try:
            value = decode(bytes(data))
        except DecodeError:
            return
        assert value.to_bytes() == bytes(data)

    check()


def test_verify_laws_reports_the_broken_law_with_a_counterexample():
    report = verify_laws(lambda a, b: a + b, [0, 1, 2])
    assert not report.ok
    assert report.failed == ["idempotence"]
    bad = report["idempotence"]
    assert bad.counterexample == (1,)
    assert "join(a, a) = 2" in bad.detail


def test_check_crdt_finds_non_associative_average():
    report = check_crdt(lambda a, b: (a + b) // 2, st.integers(-100, 100), max_examples=200)
    assert report.failed == ["associativity"]
    a, b, c = report["associativity"].counterexample
    assert (((a + b) // 2 + c) // 2) != ((a + (b + c) // 2) // 2)


def test_check_crdt_accepts_max():
    assert check_crdt(max, st.integers(), max_examples=100).ok
