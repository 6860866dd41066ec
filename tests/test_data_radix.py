"""The radix sort of 64-bit key codes gives numpy's order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.data import radix

pytestmark = pytest.mark.skipif(not radix.AVAILABLE, reason="numba is not installed")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 3000),
    bits=st.integers(0, 64),
    repeats=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_radix_sort_and_argsort_give_numpys_stable_order(
    monkeypatch: pytest.MonkeyPatch, n: int, bits: int, repeats: bool, seed: int
) -> None:
    """Values over 0 to 64 bits, with many ties or none, digits every value shares (skipped
    passes): the sort equals numpy's and the argsort numpy's stable one, ties in order. (The
    patched threshold is the same for every example.)"""
    monkeypatch.setattr(radix, "RADIX_MIN", 0)
    rng = np.random.default_rng(seed)
    top = 1 << bits
    values = (
        rng.integers(0, top, n, dtype=np.uint64, endpoint=False) if bits else np.zeros(n, np.uint64)
    )
    if repeats and n:
        values = rng.choice(values[: max(1, n // 50)], n)
    if bits >= 12 and n:
        values |= np.uint64(0x5 << 8)  # a middle digit shared by every value
    want_order = np.argsort(values, kind="stable")
    order = radix.argsort_u64(values)
    np.testing.assert_array_equal(order, want_order)
    mine = values.copy()
    radix.sort_u64(mine, bits)
    np.testing.assert_array_equal(mine, np.sort(values))


def test_short_arrays_and_a_missing_radix_sort_are_numpys(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.array([5, 3, 3, 9, 0], np.uint64)
    np.testing.assert_array_equal(radix.argsort_u64(values), [4, 1, 2, 0, 3])
    monkeypatch.setattr(radix, "RADIX_MIN", 0)
    monkeypatch.setattr(radix, "ENABLED", False)
    mine = values.copy()
    radix.sort_u64(mine)
    np.testing.assert_array_equal(mine, [0, 3, 3, 5, 9])


def test_a_merge_large_enough_for_the_radix_sort_gives_numpys_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two shuffled tables of 300,000 rows (key codes sorted by the radix sort) merge to the
    rows they merge to with numpy's sort."""
    import polars as pl

    import crdtd

    rng = np.random.default_rng(7)
    n = 300_000
    a_ids, b_ids = rng.permutation(n), rng.permutation(n) + n // 2
    a = pl.DataFrame({"id": a_ids, "v": rng.normal(size=n)})
    b = pl.DataFrame({"id": b_ids, "v": rng.normal(size=n)})
    assert n * 2 >= radix.RADIX_MIN
    fast = crdtd.merge(a, b, key="id")
    monkeypatch.setattr(radix, "ENABLED", False)
    slow = crdtd.merge(a, b, key="id")
    assert fast.equals(slow)
    assert fast["id"].is_sorted() and len(fast) == n + n // 2
