"""Direct-address pairing of two tables' rows by dense key codes, against a plain dict."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import crdtd.data.vectorised as vectorised
from crdtd.data import merge
from crdtd.data.dense import SLOTS_PER_ROW, Pairs, pair_rows


def expected_pairs(codes: list[int], a_rows: int) -> tuple[list[int], list[int], list[int]]:
    """Each key's first row in key order, the positions of the shared keys, b's rows there."""
    rows: dict[int, list[int]] = {}
    for row, code in enumerate(codes):
        rows.setdefault(code, []).append(row)
    kept, landing, second = [], [], []
    for i, code in enumerate(sorted(rows)):
        kept.append(rows[code][0])
        if len(rows[code]) == 2:
            landing.append(i)
            second.append(rows[code][1])
    return kept, landing, second


@settings(max_examples=200, deadline=None)
@given(
    a=st.lists(st.integers(0, 40), unique=True, max_size=20),
    b=st.lists(st.integers(0, 40), unique=True, max_size=20),
)
def test_pairs_match_a_dict_of_rows_by_key(a: list[int], b: list[int]) -> None:
    codes = np.array(a + b, dtype=np.uint64)
    pairs = pair_rows(codes, len(a))
    if not a or not b or max(a + b) + 1 > SLOTS_PER_ROW * len(a + b):
        assert pairs is None
        return
    assert pairs is not None
    kept, landing, second = expected_pairs(a + b, len(a))
    assert pairs.kept.tolist() == kept
    assert pairs.landing.tolist() == landing
    assert pairs.second.tolist() == second


def test_a_table_holding_a_key_twice_is_left_to_the_sort() -> None:
    assert pair_rows(np.array([0, 1, 1, 2, 0], dtype=np.uint64), 3) is None  # in a
    assert pair_rows(np.array([0, 1, 2, 1, 1], dtype=np.uint64), 3) is None  # in b
    assert pair_rows(np.array([0, 1, 2, 1, 0], dtype=np.uint64), 3) is not None  # in both


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), composite=st.booleans(), stamped=st.booleans())
def test_shuffled_dense_states_merge_directly_like_the_row_path(
    seed: int, composite: bool, stamped: bool
) -> None:
    """Two states (unique keys, any row order) with nulls and conflicting values; with a
    timestamp `ts` drawn from 0..2 with nulls, so that pairs tie on it, or one side is newer."""
    rng = np.random.default_rng(seed)
    universe = rng.permutation(300)
    states = []
    for t in range(2):
        ids = universe[t * 100 : t * 100 + 200]
        frame = pl.DataFrame(
            {
                "id": ids // 3 if composite else ids,
                "site": np.array(["a", "b", "c"])[ids % 3],
                "n": pl.Series(rng.integers(-5, 5, len(ids))).set(
                    pl.Series(rng.random(len(ids)) < 0.2), None
                ),
                "s": np.array(["x", "y", "zz"])[rng.integers(0, 3, len(ids))],
                "ts": pl.Series(rng.integers(0, 3, len(ids))).set(
                    pl.Series(rng.random(len(ids)) < 0.1), None
                ),
            }
        )
        states.append(frame)
    key = ["site", "id"] if composite else "id"
    timestamp = "ts" if stamped else None
    taken: list[bool] = []
    real = vectorised.pair_rows

    def spy(codes: np.ndarray, a_rows: int) -> Pairs | None:
        result = real(codes, a_rows)
        taken.append(result is not None)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vectorised, "pair_rows", spy)
        fast = merge(*states, key=key, timestamp=timestamp, fast_threshold=0)
    assert taken == [True]
    assert_frame_equal(fast, merge(*states, key=key, timestamp=timestamp, fast_threshold=10**9))
