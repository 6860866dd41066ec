"""Key codes sorted by polars give numpy's order."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crdtd
from crdtd.data import sort_codes


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 3000),
    bits=st.integers(0, 64),
    repeats=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_polars_sort_and_argsort_give_numpys_order(
    monkeypatch: pytest.MonkeyPatch, n: int, bits: int, repeats: bool, seed: int
) -> None:
    """Values over 0 to 64 bits (the top bit too), with many ties or none: the sort equals
    numpy's, and the argsort orders the values as numpy's does. (The patched threshold is
    the same for every example.)"""
    monkeypatch.setattr(sort_codes, "SORT_MIN", 0)
    rng = np.random.default_rng(seed)
    values = (
        rng.integers(0, 1 << bits, n, dtype=np.uint64)
        if bits < 64
        else rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    )
    if repeats and n:
        values = rng.choice(values[: max(1, n // 50)], n)
    np.testing.assert_array_equal(sort_codes.sorted_u64(values), np.sort(values))
    order = sort_codes.argsort_u64(values)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(values[order], np.sort(values))
    order, ordered = sort_codes.argsort_sorted_u64(values)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(values[order], ordered)
    np.testing.assert_array_equal(ordered, np.sort(values))
    order[:1] = 0  # writable


def test_a_merge_large_enough_for_polars_sort_gives_numpys_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two shuffled tables of 300,000 rows, int and UUID-like text keys (their codes sorted
    by polars), merge to the rows they merge to with numpy's sorts."""
    rng = np.random.default_rng(7)
    n = 300_000
    a_ids, b_ids = rng.permutation(n), rng.permutation(n) + n // 2
    for key in (pl.Series(a_ids), pl.Series(a_ids).cast(pl.String).str.zfill(20)):
        other = (
            pl.Series(b_ids)
            if key.dtype.is_integer()
            else pl.Series(b_ids).cast(pl.String).str.zfill(20)
        )
        a = pl.DataFrame({"id": key, "v": rng.normal(size=n)})
        b = pl.DataFrame({"id": other, "v": rng.normal(size=n)})
        assert n >= sort_codes.SORT_MIN
        monkeypatch.setattr(sort_codes, "ENABLED", True)
        fast = crdtd.merge(a, b, key="id")
        monkeypatch.setattr(sort_codes, "ENABLED", False)
        slow = crdtd.merge(a, b, key="id")
        assert fast.equals(slow)
        assert fast["id"].is_sorted() and len(fast) == n + n // 2
