"""The fused numba kernels of `_gta` give the bytes of its torch path, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.strategies import _kernels, registry
from crdtd.strategies._gta import KEEP_ALL, Draws, Keep, combine
from crdtd.strategies._select import sample_stride
from crdtd.strategies.base import BLOCK_ALIGN, TensorBlocks, TensorMerge, run_blocks
from tests.test_model_blockwise import CASES, _stack, _tm

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba is not installed")


def _switched(on: bool, fn: Callable[[], T]) -> T:
    """fn() with the kernels switched on or off (as they were afterwards)."""
    was = _kernels.ENABLED
    _kernels.ENABLED = on
    try:
        return fn()
    finally:
        _kernels.ENABLED = was


def _both(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """fn() with the kernels, then without: both results."""
    return _switched(True, fn), _switched(False, fn)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.uint32)


# values where the torch path's choices show: ±0, ties at a threshold, equal magnitudes of
# opposite signs, sums that cancel to ±0
VALUES = st.sampled_from([0.0, -0.0, 0.5, -0.5, 0.25, -0.25, 1.0, -1.0, 1.5, 3.0, -3.0, 1e-3])


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    k=st.integers(1, 4),
    n=st.integers(1, 2 * 2048 + 7),
    offset=st.integers(0, 3 * BLOCK_ALIGN),
    consensus=st.booleans(),
    normalize=st.booleans(),
    lam=st.sampled_from([1.0, 0.7, 1 / 3, 0.0, -1.0]),
)
def test_combine_gives_the_torch_paths_bytes(
    data: st.DataObject,
    k: int,
    n: int,
    offset: int,
    consensus: bool,
    normalize: bool,
    lam: float,
) -> None:
    """Every keep the kernel takes (thresholds with tie positions, draws, scales), weights of
    either sign or zero, consensus or sum, on values rich in zeros and ties."""
    values = data.draw(st.lists(VALUES, min_size=(k + 1) * 8, max_size=(k + 1) * 8))
    picks = np.resize(np.array(values, dtype=np.float32), (k + 1) * n).reshape(k + 1, n)
    noise = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    jitter = noise.permuted(picks, axis=1)  # the same values in other places per row
    x = torch.from_numpy(jitter[:k].copy())
    base = torch.from_numpy(jitter[k].copy())
    keeps = []
    for i in range(k):
        kind = data.draw(st.sampled_from(["all", "threshold", "draws", "both_scaled"]))
        if kind == "all":
            keeps.append(KEEP_ALL)
            continue
        threshold = data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
        tie_from = data.draw(st.one_of(st.none(), st.integers(0, offset + n + 5)))
        below = data.draw(st.integers(0, 2**16 - 1))
        seed = data.draw(st.integers(0, 1000))
        draws = Draws(lambda chunk, s=seed, i=i: s * 97 + i * 13 + chunk, below)
        scale = data.draw(st.sampled_from([1.0, 2.0, 1 / 0.3, 0.5]))
        if kind == "threshold":
            keeps.append(Keep(threshold=threshold, tie_from=tie_from, scale=scale))
        elif kind == "draws":
            keeps.append(Keep(draws=draws, scale=scale))
        else:
            keeps.append(Keep(threshold=threshold, tie_from=tie_from, draws=draws, scale=scale))
    weights = torch.tensor(
        data.draw(st.lists(st.sampled_from([1.0, 0.5, 2.0, 0.0, -1.0]), min_size=k, max_size=k)),
        dtype=torch.float64,
    )

    def run() -> torch.Tensor:
        tm = TensorMerge("w", x.clone(), base.clone(), {}, (), torch.Generator(), offset=offset)
        return combine(
            tm, base.clone(), keeps, weights, consensus=consensus, normalize=normalize, lam=lam
        )

    fast, slow = _both(run)
    np.testing.assert_array_equal(_bits(fast), _bits(slow))


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 4),
    chunk=st.integers(0, 2),
    n=st.one_of(st.integers(1, 5000), st.integers(2 * BLOCK_ALIGN - 3000, 2 * BLOCK_ALIGN + 5000)),
    kinds=st.lists(st.sampled_from(["all", "draws", "scaled", "threshold+draws"]), min_size=4),
    below=st.integers(0, 2**16 - 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_draws_made_inside_the_combine_give_the_drawn_words_bytes(
    k: int, chunk: int, n: int, kinds: list[str], below: int, seed: int
) -> None:
    """A block on the chunk grid draws its words inside the kernel, tile by tile from each
    chunk's PCG64 lanes (`_draw_streams`), across chunk boundaries and partial tiles: the
    bytes of the same combine given the words drawn ahead (`_draw_words`)."""
    from crdtd.strategies import _gta

    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n).astype(np.float32)
    x = (base + rng.normal(0, 0.5, (k, n))).astype(np.float32)
    offset = chunk * BLOCK_ALIGN
    keeps = []
    for i, kind in enumerate(kinds[:k]):
        draws = Draws(lambda c, i=i: seed % 1000 * 7 + i * 13 + c, below)
        if kind == "all":
            keeps.append(KEEP_ALL)
        elif kind == "draws":
            keeps.append(Keep(draws=draws))
        elif kind == "scaled":
            keeps.append(Keep(draws=draws, scale=1 / 0.3))
        else:
            keeps.append(Keep(threshold=0.5, tie_from=offset + n // 3, draws=draws, scale=2.0))
    fused = _gta._fused_keeps(keeps)
    assert fused is not None
    streams = _gta._draw_streams(keeps, n, offset)
    assert (streams is None) == all(kind == "all" for kind in kinds[:k])
    outs = []
    for drawn in (None, streams):
        out = np.full(n, np.nan, np.float32)
        _kernels.combine_block(
            x,
            base,
            offset,
            fused,
            _gta._draw_words(keeps, n, offset).copy(),
            np.ones(k),
            streams=drawn,
            grid=BLOCK_ALIGN,
            unit=True,
            consensus=True,
            normalize=True,
            wmode=_kernels.UNIT,
            wfloor=0.0,
            divide=False,
            total=float(k),
            lam=1.0,
            out=out,
        )
        outs.append(out.view(np.uint32))
    np.testing.assert_array_equal(outs[0], outs[1])


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    k=st.integers(2, 3),
    n=st.integers(1, 2 * 2048 + 7),
    lam=st.sampled_from([1.0, 0.7, -1.0]),
)
def test_the_unit_weight_disjoint_mean_gives_the_torch_paths_bytes(
    data: st.DataObject, k: int, n: int, lam: float
) -> None:
    """TIES's and DARE's usual case (two or three models of unit weight, normalised
    consensus) runs its own one-pass loop: the same bytes as the torch path."""
    values = data.draw(st.lists(VALUES, min_size=(k + 1) * 8, max_size=(k + 1) * 8))
    picks = np.resize(np.array(values, dtype=np.float32), (k + 1) * n).reshape(k + 1, n)
    noise = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    jitter = noise.permuted(picks, axis=1)
    x = torch.from_numpy(jitter[:k].copy())
    base = torch.from_numpy(jitter[k].copy())
    thresholds = data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5]), min_size=k, max_size=k))
    keeps = [Keep(threshold=t, tie_from=n // 2) for t in thresholds]

    def run() -> torch.Tensor:
        tm = TensorMerge("w", x.clone(), base.clone(), {}, (), torch.Generator())
        ones = torch.ones(k, dtype=torch.float64)
        return combine(tm, base.clone(), keeps, ones, consensus=True, normalize=True, lam=lam)

    fast, slow = _both(run)
    np.testing.assert_array_equal(_bits(fast), _bits(slow))


KERNEL_CASES = [
    (n, i)
    for n in ("ties", "dare_linear", "dare_ties", "task_arithmetic")
    for i in range(len(CASES[n]))
]


@pytest.mark.parametrize("name, index", KERNEL_CASES)
def test_blockwise_merges_give_the_torch_paths_bytes(name: str, index: int) -> None:
    """The strategies' own block passes (TIES's magnitude scan included) on many ties."""
    strategy = registry.get(name)
    x, base = _stack(3, 2 * BLOCK_ALIGN + 12_345, seed=index)
    case = CASES[name][index]

    def run() -> torch.Tensor:
        blocks = TensorBlocks.of(_tm(name, x, base, case), BLOCK_ALIGN)
        return torch.cat(list(run_blocks(strategy, blocks)))

    fast, slow = _both(run)
    np.testing.assert_array_equal(_bits(fast), _bits(slow))


def test_a_bracket_the_sample_misses_still_gives_the_torch_paths_bytes() -> None:
    """TIES on a tensor whose sample is unlike the rest (the scan falls back to every entry)."""
    strategy = registry.get("ties")
    n = 2 * BLOCK_ALIGN
    x, base = _stack(3, n, seed=5)
    x[:, : n // 2] = base[: n // 2] + (x[:, : n // 2] - base[: n // 2]) * 1e-3
    step = sample_stride(n)
    x[:, ::step] = base[::step]  # the strided sample sees only zero task vectors

    def run() -> torch.Tensor:
        tm = _tm("ties", x, base, ({"density": 0.3}, []))
        return torch.cat(list(run_blocks(strategy, TensorBlocks.of(tm, BLOCK_ALIGN))))

    fast, slow = _both(run)
    np.testing.assert_array_equal(_bits(fast), _bits(slow))


def test_float64_tensors_take_the_torch_path() -> None:
    """The kernels are float32 only; float64 tensors a caller hands in combine as the torch
    path combines them (its base added in float64), not through a float32 kernel."""
    third = 1.0 / 3.0  # not a float32
    x = torch.tensor([[0.5, -1.0, 2.0], [2 * third, 1.0, -3.0]], dtype=torch.float64)
    base = torch.tensor([third, 0.0, third], dtype=torch.float64)

    def run() -> torch.Tensor:
        tm = TensorMerge("w", x.clone(), base.clone(), {}, (), torch.Generator())
        keeps = [Keep(threshold=0.75), KEEP_ALL]
        weights = torch.ones(2, dtype=torch.float64)
        return combine(tm, base.clone(), keeps, weights, consensus=True, normalize=True, lam=1.0)

    fast, slow = _both(run)
    assert fast.dtype == torch.float64
    assert fast.tolist() == slow.tolist()


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 2 * 2048 + 15),
    seed=st.integers(0, 2**16),
    quantiles=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 0.2)),
    raw=st.booleans(),
)
def test_the_scan_kernel_finds_every_entry_of_the_bracket_in_order(
    n: int, seed: int, quantiles: tuple[float, float], raw: bool
) -> None:
    """Counts below, values and positions inside [lo, hi] as numpy finds them, for brackets
    from empty to wide (the sparse gather reads eight flags a word, then a tail)."""
    rng = np.random.default_rng(seed)
    bits = rng.normal(0, 1, (3, n)).astype(np.float32).view(np.uint32) >> 16
    x16, b16 = bits.astype(np.uint16), (bits[0] ^ 1).astype(np.uint16)
    xf = (x16.astype(np.uint32) << 16).view(np.float32)
    bf = (b16.astype(np.uint32) << 16).view(np.float32)
    a = np.abs(xf - bf)
    q, width = quantiles
    lo = float(np.quantile(a[1], q))
    hi = float(np.quantile(a[1], min(1.0, q + width)))
    x, b = (x16, b16) if raw else (xf, bf)
    values = np.empty((2, n), np.float32)
    where = np.empty((2, n), np.int64)
    found, finite = _kernels.scan_block(x, b, [1, 2], [(lo, hi), (None, hi)], values, where)
    assert finite
    for (below, vals, pos), row, low in zip(found, (1, 2), (lo, None)):
        inside = (a[row] <= hi) if low is None else (a[row] >= low) & (a[row] <= hi)
        expect = np.flatnonzero(inside)
        np.testing.assert_array_equal(pos, expect)
        np.testing.assert_array_equal(vals, a[row][expect])
        assert below == (0 if low is None else int((a[row] < low).sum()))


@settings(max_examples=200, deadline=None)
@given(
    c=st.integers(0, 2048),
    seed=st.integers(0, 2**16),
    raw=st.booleans(),
    wide=st.booleans(),
    room=st.integers(0, 40),
    special=st.lists(
        st.tuples(
            st.integers(0, 2047),
            st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 3.0e38, -3.0e38]),
        ),
        max_size=8,
    ),
)
def test_the_sixteen_lane_scan_finds_what_the_flag_scan_finds(
    c: int, seed: int, raw: bool, wide: bool, room: int, special: list[tuple[int, float]]
) -> None:
    """`_scan_packed` (AVX-512F: |τ|, the counts and the gather in registers, 16 entries at
    a time) gives `_scan_flags`'s counts, values and positions, for bf16 bits and float32,
    int32 and int64 positions, NaN, ±inf, ±0 and overflowing τ, and near the end of the
    output row (where it goes on flag by flag)."""
    from crdtd.strategies import _numba_kernels as nk

    if not nk.COMPRESS:
        pytest.skip("the CPU has no AVX-512F")
    rng = np.random.default_rng(seed)
    xf = rng.normal(0, 1, 2048).astype(np.float32)
    bf = (xf + rng.normal(0, 0.5, 2048)).astype(np.float32)
    for at, value in special:
        (xf if at % 2 else bf)[at] = value
    xs, bs = xf[:c], bf[:c]
    if raw:
        xs = (xs.view(np.uint32) >> 16).astype(np.uint16)
        bs = ((bs.view(np.uint32) >> 16) << 16).view(np.float32)
    low, high = np.float32(0.25), np.float32(0.75 if not wide else np.inf)
    wide_x = (xs.astype(np.uint32) << 16).view(np.float32) if raw else xs
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.abs(wide_x - bs)
        count = int(((v >= low) & (v <= high)).sum())
    found = []
    for scan, kind in (
        (nk._scan_flags, np.int64),
        (nk._scan_packed, np.int32),
        (nk._scan_packed, np.int64),
    ):
        start = 3
        vj = np.full(start + count + room, -1.0, np.float32)  # room: 16 lanes fit, or not
        pj = np.full(len(vj), -1, kind)
        a, inside = np.empty(2048, np.float32), np.empty(2048, np.uint8)
        above, size, bounded = scan(xs, bs, low, high, a, inside, vj, pj, start, 100)
        assert (vj[:start] == -1.0).all() and (pj[:start] == -1).all()
        found.append((above, size, bounded, vj[start:size].tolist(), pj[start:size].tolist()))
    assert found[0][1] == 3 + count
    assert found[1] == found[0] and found[2] == found[0]


@settings(max_examples=200, deadline=None)
@given(
    c=st.integers(0, 2048),
    density=st.sampled_from([0.0, 0.03, 0.5, 1.0]),
    room=st.integers(0, 64),
    seed=st.integers(0, 2**16),
)
def test_both_gathers_append_the_flagged_entries_in_order(
    c: int, density: float, room: int, seed: int
) -> None:
    """The compress gather (where the CPU has AVX-512F), the word-wise one and the per-flag
    one (big-endian) append the same entries and positions; near the end of the output row the compress one goes on entry by
    entry (it stores 16 lanes at a time)."""
    from crdtd.strategies import _numba_kernels as nk

    rng = np.random.default_rng(seed)
    a = rng.normal(size=2048).astype(np.float32)
    inside = (rng.random(2048) < density).astype(np.uint8)
    expect = np.flatnonzero(inside[:c])
    start = 5
    gathers = [nk._gather_each, nk._gather_words] + ([nk._gather_packed] if nk.COMPRESS else [])
    for gather in gathers:
        vj = np.full(start + len(expect) + room, -1.0, np.float32)
        pj = np.full(len(vj), -1, np.int64)
        size = gather(a, inside, c, 100, vj, pj, start)
        assert size == start + len(expect)
        np.testing.assert_array_equal(vj[start:size], a[expect])
        np.testing.assert_array_equal(pj[start:size], expect + 100)
        assert (vj[:start] == -1.0).all() and (pj[:start] == -1).all()


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(width=32, allow_nan=True, allow_infinity=True),
            st.sampled_from([0.0, -0.0, 1.5, -1.5, 2.0**-149]),
        ),
        min_size=1,
        max_size=300,
    ),
    picks=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    kernels_on=st.booleans(),
)
def test_order_statistics_are_the_sorts_entries_and_counts(
    values: list[float], picks: list[float], kernels_on: bool
) -> None:
    """The counting select gives np.sort's m-th entry (±0.0 compare equal, every NaN last)
    and `searchsorted(side="right")` of it, for any ranks, with the kernels on or off."""
    a = np.array(values, np.float32)
    ordered = np.sort(a)
    ranks = [1 + int(p * (a.size - 1)) for p in picks]
    found = _switched(kernels_on, lambda: _kernels.order_stats(a, ranks))
    for (value, count), m in zip(found, ranks):
        want = ordered[m - 1]
        if np.isnan(want):
            assert np.isnan(value) and count == a.size
        else:
            assert value == want
            assert count == int(np.searchsorted(ordered, want, side="right"))
    strided = np.repeat(a, 2)[::2]  # a non-contiguous view, as a strided sample is
    assert (
        _kernels.order_stats(strided, ranks[:1])[0][1] == _kernels.order_stats(a, ranks[:1])[0][1]
    )


def test_order_statistics_of_bf16_task_vectors_match_the_sort() -> None:
    """Long runs of equal values (what bf16 checkpoints' task vectors hold) and many ranks."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.02, 200_000).astype(np.float32)
    bf = ((x.view(np.uint32) >> 16) << 16).view(np.float32)
    a = np.abs(bf - np.float32(0.001))
    ordered = np.sort(a)
    ranks = [1, 7, 50_000, 100_000, 199_999, 200_000]
    for (value, count), m in zip(_kernels.order_stats(a, ranks), ranks):
        assert value == ordered[m - 1]
        assert count == int(np.searchsorted(ordered, ordered[m - 1], side="right"))


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    count=st.integers(0, 70),
    kernels_on=st.booleans(),
)
def test_pcg64_draws_are_numpys(seed: int, count: int, kernels_on: bool) -> None:
    """The four-lane PCG64 gives `np.random.PCG64(seed).random_raw(count)` word for word
    (DARE's masks are documented as those draws), any count, kernels on or off."""
    mine = _switched(kernels_on, lambda: _kernels.pcg64_raw(seed, count))
    np.testing.assert_array_equal(mine, np.random.PCG64(seed).random_raw(count))
    assert mine.dtype == np.uint64


@pytest.mark.parametrize(
    "c0, c1",
    [
        (0, 1000),
        (0, 1001),
        (BLOCK_ALIGN, 2 * BLOCK_ALIGN),
        (5, 800),
        (BLOCK_ALIGN + 4, BLOCK_ALIGN + 12),
    ],
)
def test_draws_filled_in_place_are_the_chunks_words(c0: int, c1: int) -> None:
    """`Draws.fill` draws straight into its row at a chunk's start and copies elsewhere;
    either way the row holds `words(c0, c1)`, and nothing past it changes."""
    draws = Draws(lambda chunk: 1234 + chunk, 30_000)
    row = np.full(c1 - c0 + 8, 7, np.uint16)
    draws.fill(c0, c1, row[: c1 - c0])
    np.testing.assert_array_equal(row[: c1 - c0], draws.words(c0, c1))
    assert (row[c1 - c0 :] == 7).all()
    first = c0 // BLOCK_ALIGN * BLOCK_ALIGN
    raw = np.random.PCG64(1234 + c0 // BLOCK_ALIGN).random_raw((c1 - first + 3) // 4)
    np.testing.assert_array_equal(row[: c1 - c0], raw.view("<u2")[c0 - first : c1 - first])
