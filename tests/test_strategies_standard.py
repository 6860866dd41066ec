"""Standard-family strategies (linear … ram) against literal implementations of their formulas.

Every deterministic strategy is compared with an independent numpy/loop implementation
written here from the paper (or the merge tool's documented definition) on small hand-made
tensors; the stochastic ones (DARE, DELLA) get statistical tests with fixed generator seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.errors import StrategyError, StrategyParamError, UnknownStrategyError
from crdtd.strategies import get, names
from crdtd.strategies._select import bottom_mask, kth_smallest, kth_value, top_mask
from crdtd.strategies.base import BLOCK_ALIGN, TensorMerge, chunk_seed

STANDARD = [
    "linear", "task_arithmetic", "passthrough", "ties", "dare_linear", "dare_ties",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "slerp", "nuslerp",
    "multislerp", "karcher", "model_stock", "nearswap", "arcee_fusion", "ram", "ramplus_tl",
]  # fmt: skip


def merge(
    name: str,
    inputs: Any,
    base: Any = None,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Validate params like the engine does and run strategy `name` on one tensor."""
    strategy = get(name)
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    b = None if base is None else torch.as_tensor(np.asarray(base, dtype=np.float32))
    mps = model_params if model_params is not None else [{}] * x.shape[0]
    p, mp = strategy.validate(params or {}, mps)
    g = torch.Generator().manual_seed(seed)
    out = strategy.fn(TensorMerge("layer.weight", x, b, p, mp, g))
    assert out.dtype == torch.float32
    assert tuple(out.shape) == tuple(x.shape[1:])
    return out.numpy().astype(np.float64)


def close(a: Any, b: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=tol, atol=tol)


# -- literal references ----------------------------------------------------------------------


def ref_trim_top(tv: np.ndarray, density: float) -> np.ndarray:
    """Keep the ⌊density·n⌋ (≥1) largest |τ| entries by explicit sorting."""
    flat = tv.reshape(-1)
    n = flat.size
    if density >= 1:
        return tv.copy()
    k = max(1, math.floor(density * n + 1e-9))
    order = sorted(range(n), key=lambda j: -abs(flat[j]))
    out = np.zeros(n)
    for j in order[:k]:
        out[j] = flat[j]
    return out.reshape(tv.shape)


def ref_breadcrumbs_trim(tv: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Drop the ⌊gamma·n⌋ largest and the smallest, keeping ⌊density·n⌋ (the merge tools' rule)."""
    flat = tv.reshape(-1)
    n = flat.size
    if density >= 1:
        return tv.copy()
    target = max(1, math.floor(density * n + 1e-9))
    n_top = min(math.floor(gamma * n + 1e-9), n - target)
    n_bot = n - target - n_top
    order = sorted(range(n), key=lambda j: abs(flat[j]))
    out = np.zeros(n)
    for j in order[n_bot : n - n_top]:
        out[j] = flat[j]
    return out.reshape(tv.shape)


def ref_disjoint(trimmed: list[np.ndarray], w: Sequence[float], normalize: bool) -> np.ndarray:
    """TIES elect + disjoint merge, entry by entry."""
    shape = trimmed[0].shape
    flat = [t.reshape(-1) for t in trimmed]
    out = np.zeros(flat[0].size)
    for j in range(out.size):
        s = sum(w[i] * flat[i][j] for i in range(len(flat)))
        sign = 1.0 if s >= 0 else -1.0
        num = 0.0
        den = 0.0
        for i in range(len(flat)):
            v = w[i] * flat[i][j]
            if np.sign(v) == sign:
                num += v
                den += w[i]
        out[j] = num / (den if den != 0 else 1.0) if normalize else num
    return out.reshape(shape)


def ref_slerp(t: float, v0: np.ndarray, v1: np.ndarray, threshold: float = 0.9995) -> np.ndarray:
    a, b = v0.reshape(-1), v1.reshape(-1)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    if abs(cos) > threshold:
        return (1 - t) * v0 + t * v1
    om = math.acos(cos)
    return (math.sin((1 - t) * om) * v0 + math.sin(t * om) * v1) / math.sin(om)


# Hand-made inputs: magnitudes distinct so every trim is unambiguous.
BASE = np.array([[0.5, -0.25, 1.0], [0.0, 2.0, -1.5]])
TV = np.array(
    [
        [[0.9, -0.1, 0.35], [-0.6, 0.05, 0.7]],
        [[-0.8, 0.3, 0.45], [0.2, -0.15, 0.55]],
        [[0.4, -0.65, -0.25], [0.85, 0.12, -0.95]],
    ]
)
INPUTS = BASE + TV


# -- linear family -----------------------------------------------------------------------------


def test_linear_is_the_weighted_mean_of_the_inputs() -> None:
    w = [1.0, 2.0, 0.5]
    expected = sum(w[i] * INPUTS[i] for i in range(3)) / sum(w)
    close(merge("linear", INPUTS, model_params=[{"weight": x} for x in w]), expected)
    raw = merge(
        "linear", INPUTS, params={"normalize": False}, model_params=[{"weight": x} for x in w]
    )
    close(raw, sum(w[i] * INPUTS[i] for i in range(3)))


def test_linear_with_weights_summing_to_zero_is_refused() -> None:
    with pytest.raises(StrategyParamError, match="weight"):
        merge("linear", INPUTS[:2], model_params=[{"weight": 1.0}, {"weight": -1.0}])


def test_task_arithmetic_adds_lambda_times_weighted_task_vectors_to_the_base() -> None:
    w = [1.0, -0.5, 2.0]
    got = merge("task_arithmetic", INPUTS, BASE, {"lambda": 0.7}, [{"weight": x} for x in w])
    close(got, BASE + 0.7 * sum(w[i] * TV[i] for i in range(3)))
    normalized = merge(
        "task_arithmetic", INPUTS, BASE, {"normalize": True}, [{"weight": x} for x in w]
    )
    close(normalized, BASE + sum(w[i] * TV[i] for i in range(3)) / sum(w))


def test_passthrough_copies_its_single_input_scaled() -> None:
    close(merge("passthrough", INPUTS[:1]), INPUTS[0])
    close(merge("passthrough", INPUTS[:1], params={"scale": 0.5}), 0.5 * INPUTS[0])


# -- TIES / breadcrumbs / SCE ------------------------------------------------------------------


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_ties_on_two_identical_task_vectors_returns_that_task_vector(density: float) -> None:
    got = merge("ties", [INPUTS[0], INPUTS[0]], BASE, {"density": density})
    close(got, BASE + ref_trim_top(TV[0], density))
    if density == 1.0:
        close(got, INPUTS[0])


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_trim_elect_disjoint_mean(normalize: bool) -> None:
    w = [1.0, 2.0, 0.5]
    d = [0.5, 0.7, 0.34]
    mps = [{"weight": w[i], "density": d[i]} for i in range(3)]
    got = merge("ties", INPUTS, BASE, {"lambda": 0.8, "normalize": normalize}, mps)
    trimmed = [ref_trim_top(TV[i], d[i]) for i in range(3)]
    close(got, BASE + 0.8 * ref_disjoint(trimmed, w, normalize))


def test_ties_rescale_preserves_each_trimmed_vectors_l1_norm() -> None:
    got = merge("ties", INPUTS[:1], BASE, {"density": 0.5, "rescale": True})
    trimmed = ref_trim_top(TV[0], 0.5)
    expected = trimmed * np.abs(TV[0]).sum() / np.abs(trimmed).sum()
    close(got, BASE + expected)


@pytest.mark.parametrize("name,consensus", [("breadcrumbs", False), ("breadcrumbs_ties", True)])
def test_breadcrumbs_drop_largest_gamma_and_smallest_entries(name: str, consensus: bool) -> None:
    d = [0.5, 0.67, 0.5]
    g = [0.17, 0.0, 0.34]
    mps = [{"density": d[i], "gamma": g[i]} for i in range(3)]
    got = merge(name, INPUTS, BASE, {"normalize": True}, mps)
    trimmed = [ref_breadcrumbs_trim(TV[i], d[i], g[i]) for i in range(3)]
    expected = ref_disjoint(trimmed, [1.0] * 3, True) if consensus else np.mean(trimmed, axis=0)
    close(got, BASE + expected)


def test_breadcrumbs_keeps_the_middle_band_of_magnitudes() -> None:
    tv = np.arange(1.0, 11.0)
    got = merge("breadcrumbs", [tv], np.zeros(10), {"density": 0.6, "gamma": 0.2})
    close(got, [0, 0, 3, 4, 5, 6, 7, 8, 0, 0])


def test_sce_selects_calculates_and_erases_like_the_paper() -> None:
    topk = 0.5
    got = merge("sce", INPUTS, BASE, {"select_topk": topk})
    flat = TV.reshape(3, -1)
    n = flat.shape[1]
    var = [float(np.var(flat[:, j])) for j in range(n)]
    nonzero = sum(1 for v in var if v != 0)
    keep = sorted(range(n), key=lambda j: -var[j])[: int(topk * nonzero)]
    masked = np.zeros_like(flat)
    masked[:, keep] = flat[:, keep]
    energy = [float(np.mean(masked[i] ** 2)) for i in range(3)]
    w = [e / sum(energy) for e in energy]
    out = np.zeros(n)
    for j in range(n):
        sign = 1.0 if masked[:, j].sum() >= 0 else -1.0
        num = sum(w[i] * masked[i, j] for i in range(3) if np.sign(masked[i, j]) == sign)
        den = sum(w[i] for i in range(3) if np.sign(masked[i, j]) == sign)
        out[j] = num / (den if den != 0 else 1.0)
    close(got, BASE + out.reshape(BASE.shape))


# -- DARE and DELLA (stochastic) ---------------------------------------------------------------


def test_dare_expectation_equals_the_input_task_vector() -> None:
    base = np.zeros(400)
    tv = np.linspace(-1.0, 1.0, 400)
    runs = np.stack(
        [merge("dare_linear", [tv], base, {"density": 0.3}, seed=s) for s in range(300)]
    )
    kept = (runs != 0).mean()
    assert abs(kept - 0.3) < 0.01
    nonzero = runs[runs != 0]
    expected_nonzero = (np.repeat(tv[None], 300, 0) / 0.3)[runs != 0]
    close(nonzero, expected_nonzero)
    # Mean over runs: unbiased within 4 standard errors per entry, and overall.
    se = np.abs(tv) * math.sqrt((1 - 0.3) / 0.3) / math.sqrt(300)
    assert np.all(np.abs(runs.mean(0) - tv) <= 4 * se + 1e-6)
    assert abs(runs.mean() - tv.mean()) < 0.01


def test_dare_is_reproducible_for_a_generator_seed_and_varies_across_seeds() -> None:
    a = merge("dare_ties", INPUTS, BASE, {"density": 0.5}, seed=7)
    b = merge("dare_ties", INPUTS, BASE, {"density": 0.5}, seed=7)
    c = merge("dare_ties", INPUTS, BASE, {"density": 0.5}, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dare_keeps_an_entry_when_its_16_bit_word_of_its_chunk_stream_is_below_density() -> None:
    """The documented draw: chunk c of model i reads PCG64(chunk_seed(g, i, c)) as 16-bit
    words, low first; entry j of the chunk keeps when word j < ⌊density·2¹⁶⌋."""
    n = BLOCK_ALIGN + 5000  # two chunks of the grid, the second one partial
    out = merge(
        "dare_linear", [np.ones(n)], np.zeros(n), {"density": 0.3, "rescale": False}, seed=4
    )
    g = torch.Generator().manual_seed(4)
    want = []
    for c, size in enumerate([BLOCK_ALIGN, 5000]):
        raw = np.random.PCG64(chunk_seed(g, 0, c)).random_raw((size + 3) // 4)
        want.append(raw.astype("<u8").view("<u2")[:size] < int(0.3 * 2**16))
    np.testing.assert_array_equal(out, np.concatenate(want).astype(np.float64))


def test_dare_at_full_density_is_task_arithmetic_and_ties() -> None:
    close(merge("dare_linear", INPUTS, BASE), BASE + TV.sum(0))
    close(merge("dare_ties", INPUTS, BASE), BASE + ref_disjoint(list(TV), [1.0] * 3, False))


def test_della_keeps_large_magnitudes_more_often_and_is_unbiased() -> None:
    row = np.linspace(0.01, 1.0, 50)
    tv = np.stack([row, -row])  # two rows: ranks are per row
    runs = np.stack(
        [
            merge("della_linear", [tv], np.zeros_like(tv), {"density": 0.5, "epsilon": 0.3}, seed=s)
            for s in range(400)
        ]
    )
    keep_rate = (runs != 0).mean(0)
    # Keep probability is density − ε … density + ε from the smallest to the largest entry.
    expected_p = 0.2 + 0.6 * np.arange(50) / 49
    assert np.all(np.abs(keep_rate - expected_p) < 0.1)
    assert np.corrcoef(keep_rate[0], expected_p)[0, 1] > 0.95
    assert np.abs(runs.mean(0) - tv).mean() < 0.05


def test_della_rejects_epsilon_that_pushes_probabilities_outside_zero_one() -> None:
    with pytest.raises(StrategyParamError, match="epsilon"):
        merge("della", INPUTS, BASE, {"density": 0.2, "epsilon": 0.3})


# -- spherical --------------------------------------------------------------------------------


def test_slerp_at_t0_and_t1_returns_the_endpoints_exactly() -> None:
    a, b = INPUTS[0], INPUTS[1]
    np.testing.assert_array_equal(merge("slerp", [a, b], params={"t": 0.0}), a.astype(np.float32))
    np.testing.assert_array_equal(merge("slerp", [a, b], params={"t": 1.0}), b.astype(np.float32))


@pytest.mark.parametrize("t", [0.25, 0.5, 0.9])
def test_slerp_matches_the_spherical_formula(t: float) -> None:
    close(merge("slerp", INPUTS[:2], params={"t": t}), ref_slerp(t, INPUTS[0], INPUTS[1]))
    # One input plus a base: interpolate from the base towards the input.
    close(merge("slerp", INPUTS[:1], BASE, {"t": t}), ref_slerp(t, BASE, INPUTS[0]))


def test_slerp_falls_back_to_lerp_for_nearly_colinear_inputs() -> None:
    a = np.array([1.0, 2.0, 3.0])
    b = 2.0 * a + 1e-4
    close(merge("slerp", [a, b], params={"t": 0.3}), 0.7 * a + 0.3 * b)


def test_slerp_keeps_the_norm_of_equal_norm_endpoints() -> None:
    a = np.array([1.0, 0.0])
    b = np.array([0.0, 1.0])
    close(merge("slerp", [a, b], params={"t": 0.5}), [math.sqrt(0.5), math.sqrt(0.5)])


def test_slerp_without_two_inputs_or_a_base_is_refused() -> None:
    with pytest.raises(StrategyParamError, match="base"):
        merge("slerp", INPUTS[:1])


def test_nuslerp_interpolates_by_weight_ratio_and_in_task_space_with_a_base() -> None:
    mps = [{"weight": 3.0}, {"weight": 1.0}]
    close(merge("nuslerp", INPUTS[:2], model_params=mps), ref_slerp(0.25, INPUTS[0], INPUTS[1], 2))
    with_base = merge("nuslerp", INPUTS[:2], BASE, model_params=mps)
    close(with_base, BASE + ref_slerp(0.25, TV[0], TV[1], 2))


@pytest.mark.parametrize("row_wise", [True, False])
def test_nuslerp_unflattened_interpolates_rows_or_columns(row_wise: bool) -> None:
    params = {"nuslerp_flatten": False, "nuslerp_row_wise": row_wise}
    got = merge("nuslerp", INPUTS[:2], params=params)
    a, b = INPUTS[0], INPUTS[1]
    if row_wise:
        expected = np.stack([ref_slerp(0.5, a[r], b[r], 2) for r in range(a.shape[0])])
    else:
        expected = np.stack([ref_slerp(0.5, a[:, c], b[:, c], 2) for c in range(a.shape[1])], 1)
    close(got, expected)


def ref_multislerp(xs: np.ndarray, w: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    w = w / w.sum()
    flat = xs.reshape(len(xs), -1)
    norms = np.linalg.norm(flat, axis=1)
    units = flat / (norms[:, None] + eps)
    mean = (w[:, None] * units).sum(0)
    mean /= np.linalg.norm(mean)
    tangent = sum(w[i] * (units[i] - (units[i] @ mean) * mean) for i in range(len(xs)))
    tn = np.linalg.norm(tangent) + eps
    res = mean * math.cos(tn) + tangent * math.sin(tn) / tn
    return (res * (norms * w).sum()).reshape(xs.shape[1:])


def test_multislerp_matches_the_tangent_space_barycentre() -> None:
    w = np.array([1.0, 2.0, 0.5])
    got = merge("multislerp", INPUTS, model_params=[{"weight": x} for x in w])
    close(got, ref_multislerp(INPUTS, w))
    with_base = merge("multislerp", INPUTS, BASE, model_params=[{"weight": x} for x in w])
    close(with_base, BASE + ref_multislerp(TV, w))


def test_multislerp_refuses_balanced_antipodal_inputs() -> None:
    a = np.array([1.0, 2.0])
    with pytest.raises(StrategyError, match=r"layer\.weight"):
        merge("multislerp", [a, -a, np.zeros(2)])


def test_karcher_of_two_vectors_is_their_spherical_midpoint_scaled_to_the_mean_norm() -> None:
    a = np.array([3.0, 0.0, 0.0])
    b = np.array([0.0, 1.0, 0.0])
    got = merge("karcher", [a, b], params={"max_iter": 50, "tol": 1e-10})
    close(got, 2.0 * np.array([math.sqrt(0.5), math.sqrt(0.5), 0.0]), 1e-5)


def test_karcher_mean_is_a_stationary_point_of_the_weighted_distance() -> None:
    w = np.array([1.0, 2.0, 0.5])
    got = merge(
        "karcher",
        INPUTS,
        params={"max_iter": 200, "tol": 1e-12},
        model_params=[{"weight": x} for x in w],
    )
    flat = INPUTS.reshape(3, -1)
    units = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    m = got.reshape(-1) / np.linalg.norm(got)
    grad = np.zeros_like(m)
    for i in range(3):
        cos = float(np.clip(units[i] @ m, -1, 1))
        th = math.acos(cos)
        grad += w[i] / w.sum() * th / math.sin(th) * (units[i] - cos * m)
    assert np.linalg.norm(grad) < 1e-5
    close(np.linalg.norm(got), (w * np.linalg.norm(flat, axis=1)).sum() / w.sum(), 1e-5)


# -- model stock, nearswap, arcee fusion, RAM --------------------------------------------------


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_interpolates_with_the_papers_ratio(filter_wise: bool) -> None:
    got = merge("model_stock", INPUTS, BASE, {"filter_wise": filter_wise})
    rows = [slice(None)] if not filter_wise else [slice(r, r + 1) for r in range(BASE.shape[0])]
    expected = np.zeros_like(BASE)
    for r in rows:
        offs = [TV[i][r].reshape(-1) for i in range(3)]
        cos = []
        for i in range(3):
            for j in range(i + 1, 3):
                cos.append(offs[i] @ offs[j] / (np.linalg.norm(offs[i]) * np.linalg.norm(offs[j])))
        c = float(np.mean(cos))
        t = 3 * c / (1 + 2 * c)
        expected[r] = t * INPUTS.mean(0)[r] + (1 - t) * BASE[r]
    close(got, expected)


def test_nearswap_moves_towards_the_input_only_where_it_is_close() -> None:
    base = np.array([0.0, 1.0, 2.0, 3.0])
    other = np.array([0.0, 1.05, 2.5, 13.0])
    got = merge("nearswap", [other], base, {"t": 0.1})
    expected = []
    for b, o in zip(base, other):
        d = abs(b - o)
        w = 1.0 if d == 0 else min(1.0, 0.1 / d)
        expected.append(w * o + (1 - w) * b)
    close(got, expected)


def test_arcee_fusion_takes_only_outlier_important_changes() -> None:
    base = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, -0.1, 0.2, 0.1], [0.3, 0.3, 0.3, 0.3]])
    other = base + np.array([[0.01, 0.0, 2.0, 0.02], [0.0, 0.03, 0.0, 0.05], [1.5, 0.0, 0.0, 0.01]])
    got = merge("arcee_fusion", [other], base)
    imp = np.zeros_like(base)
    for r in range(3):
        p = np.exp(other[r]) / np.exp(other[r]).sum() + 1e-8
        q = np.exp(base[r]) / np.exp(base[r]).sum() + 1e-8
        kl = float((p * np.log(p / q)).sum())
        imp[r] = np.abs(other[r] - base[r]) * kl
    s = np.sort(imp.reshape(-1))
    q1, med, q3 = (s[int(q * (s.size - 1))] for q in (0.25, 0.5, 0.75))
    mask = imp >= med + 1.5 * (q3 - q1)
    close(got, np.where(mask, other, base))
    assert mask.sum() < mask.size


def ref_ram(tvs: np.ndarray, eps: float, r: float, alpha: float) -> np.ndarray:
    k, n = tvs.shape
    changed = np.abs(tvs) > eps
    count = changed.sum(0)
    scale = np.ones(k)
    if r:
        for i in range(k):
            shared = sum(1 for j in range(n) if changed[i, j] and count[j] > 1)
            unique = sum(1 for j in range(n) if changed[i, j] and count[j] == 1)
            rho = shared / max(unique, eps)
            scale[i] = 1 + r * min(max(rho, 0.0), alpha)
    out = np.zeros(n)
    for j in range(n):
        for i in range(k):
            if changed[i, j]:
                out[j] += tvs[i, j] * scale[i] if count[j] == 1 else tvs[i, j] / count[j]
    return out


def test_ram_averages_shared_updates_and_keeps_unique_ones() -> None:
    base = np.zeros(6)
    tvs = np.array([[1.0, 0.0, 2.0, 0.0, 0.5, 0.0], [0.0, 3.0, 4.0, 0.0, 0.5, 1e-7]])
    got = merge("ram", base + tvs, base)
    close(got, [1.0, 3.0, 3.0, 0.0, 0.5, 0.0])
    close(got, ref_ram(tvs, 1e-5, 0.0, 0.0))


def test_ramplus_tl_rescales_unique_updates_by_the_overlap_ratio() -> None:
    base = np.linspace(-1, 1, 8)
    tvs = np.array(
        [[0.2, 0.0, 0.3, 0.1, 0.0, -0.4, 0.0, 0.5], [0.0, 0.6, 0.3, -0.2, 0.0, 0.0, 0.7, 0.0]]
    )
    got = merge("ramplus_tl", base + tvs, base, {"r": 0.5, "alpha": 0.8})
    close(got, base + ref_ram(tvs, 1e-5, 0.5, 0.8))


# -- validation, registry, selection -----------------------------------------------------------


def test_every_standard_strategy_is_registered_and_documented() -> None:
    registered = set(names())
    for name in STANDARD:
        assert name in registered
        s = get(name)
        assert s.paper and s.formula and s.summary, name


def test_unknown_strategy_suggests_close_names() -> None:
    with pytest.raises(UnknownStrategyError, match="ties"):
        get("tiess")


@pytest.mark.parametrize(
    "name,params,model_params,key",
    [
        ("ties", {"densty": 0.5}, None, "densty"),
        ("ties", {"density": 1.5}, None, "density"),
        ("ties", {}, [{"density": -0.1}] * 3, "density"),
        ("ties", {}, [{"lambda": 2.0}] * 3, "lambda"),
        ("slerp", {"t": 2.0}, None, "'t'"),
        ("breadcrumbs", {"gamma": "lots"}, None, "gamma"),
        ("linear", {"normalize": "maybe"}, None, "normalize"),
        ("karcher", {"max_iter": 0}, None, "max_iter"),
        ("nearswap", {"t": 0.0}, None, "'t'"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_key(
    name: str, params: dict[str, Any], model_params: list[dict[str, Any]] | None, key: str
) -> None:
    with pytest.raises(StrategyParamError, match=key):
        get(name).validate(params, model_params or [{}] * 3)


def test_strategies_needing_a_base_say_so_naming_the_tensor() -> None:
    for name in ("task_arithmetic", "ties", "dare_ties", "sce", "model_stock", "ram"):
        with pytest.raises(StrategyParamError, match=r"layer\.weight"):
            merge(name, INPUTS)


def test_selection_matches_a_stable_sort_including_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        a = torch.tensor(rng.integers(0, 4, n), dtype=torch.float32)
        m = int(rng.integers(0, n + 1))
        order = sorted(range(n), key=lambda j: (float(a[j]), j))
        expected = torch.zeros(n, dtype=torch.bool)
        expected[order[:m]] = True
        assert torch.equal(bottom_mask(a, m), expected)
        assert torch.equal(top_mask(a, n - m), ~expected)


def test_kth_value_is_exact_on_large_and_adversarial_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(600_000, generator=g).abs()
    structured = torch.arange(600_000, dtype=torch.float32).remainder(7)
    for a in (big, structured):
        for m in (1, 12_345, 300_000, 599_999, 600_000):
            assert float(kth_smallest(a, m)) == float(torch.kthvalue(a, m).values)
        mask = top_mask(a, 150_000)
        assert int(mask.sum()) == 150_000
        assert float(a[mask].min()) >= float(a[~mask].max())


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, -0.0, 1e-45, 1e-40, 1.17549435e-38, 0.5, 0.5, 0.5, 3.0, 1e30]),
        min_size=1,
        max_size=300,
    ),
    where=st.floats(0.0, 1.0),
)
def test_kth_value_equals_torch_kthvalue_on_tied_zero_and_subnormal_values(
    values: list[float], where: float
) -> None:
    a = torch.tensor(values, dtype=torch.float32)
    m = 1 + int(where * (a.numel() - 1))
    assert kth_value(a, m) == float(torch.kthvalue(a, m).values)
    assert kth_value(torch.full((50,), 0.25), 17) == 0.25


def test_magnitude_selection_never_sorts_the_whole_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 400_000
    g = torch.Generator().manual_seed(1)
    base = torch.zeros(n)
    x = torch.randn(3, n, generator=g)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("full sort called")

    for fn in ("sort", "argsort", "msort"):
        monkeypatch.setattr(torch, fn, refuse)
        monkeypatch.setattr(torch.Tensor, fn, refuse)
    out = merge("ties", x.numpy(), base.numpy(), {"density": 0.2})
    monkeypatch.undo()
    assert np.count_nonzero(out) <= 3 * int(0.2 * n)


# -- order independence (Hypothesis) -----------------------------------------------------------

SYMMETRIC: dict[str, tuple[dict[str, Any], bool]] = {
    "linear": ({}, True),
    "task_arithmetic": ({"lambda": 0.5}, True),
    "ties": ({"density": 0.6}, True),
    "breadcrumbs": ({"density": 0.6, "gamma": 0.1}, True),
    "breadcrumbs_ties": ({"density": 0.6, "gamma": 0.1}, True),
    "sce": ({"select_topk": 0.5}, True),
    "multislerp": ({}, False),
    "karcher": ({"max_iter": 30}, False),
    "model_stock": ({}, True),
    "ram": ({}, True),
    "ramplus_tl": ({}, True),
    "nuslerp": ({}, False),
}

floats = st.floats(min_value=-4, max_value=4, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(SYMMETRIC)),
    data=st.lists(st.lists(floats, min_size=6, max_size=6), min_size=3, max_size=3),
    base=st.lists(floats, min_size=6, max_size=6),
    weights=st.lists(st.floats(0.25, 3.0), min_size=3, max_size=3),
    perm=st.permutations([0, 1, 2]),
)
def test_symmetric_strategies_ignore_input_order(
    name: str,
    data: list[list[float]],
    base: list[float],
    weights: list[float],
    perm: list[int],
) -> None:
    params, uses_base = SYMMETRIC[name]
    k = 2 if name == "nuslerp" else 3
    x = np.array(data[:k]) + np.arange(6) * 0.01  # no two rows identical
    x[:, 0] += np.arange(k) * 0.5
    b = np.array(base) if uses_base else None
    strategy = get(name)
    per_model = [p.name for p in strategy.per_model_params() if p.name == "weight"]
    mps = [{key: weights[i] for key in per_model} for i in range(k)]
    order = [i for i in perm if i < k]
    try:
        a = merge(name, x, b, params, mps)
    except StrategyError:
        return  # degenerate draw (e.g. antipodal inputs); order cannot matter there
    c = merge(name, x[order], b, params, [mps[i] for i in order])
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)


ROBUST_NAMES = [
    "median", "trimmed_mean", "geometric_median", "krum", "multi_krum", "bulyan",
    "centered_clip", "fedavg",
]  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", STANDARD + ROBUST_NAMES)
def test_cuda_tensors_give_the_cpu_result(name: str) -> None:
    strategy = get(name)
    k = strategy.max_inputs or 7
    g = torch.Generator().manual_seed(5)
    base = torch.randn(33, 17, generator=g)
    x = base + 0.1 * torch.randn(k, 33, 17, generator=g)
    params: dict[str, Any] = {}
    if name in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties"):
        params = {"density": 0.4}
    if name in ("della", "della_linear"):
        params = {"density": 0.5, "epsilon": 0.2}
    p, mp = strategy.validate(params, [{}] * k)
    outs = []
    for dev in ("cpu", "cuda"):
        tm = TensorMerge("t", x.to(dev), base.to(dev), p, mp, torch.Generator().manual_seed(3))
        out = strategy.fn(tm)
        assert out.device.type == dev
        outs.append(out.cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def ref_ties_torch(x: torch.Tensor, base: torch.Tensor, density: float) -> torch.Tensor:
    """TIES with an explicit stable sort; equal magnitudes: the later position ranks higher."""
    n = base.numel()
    k = max(1, math.floor(density * n + 1e-9))
    trimmed = []
    for i in range(x.shape[0]):
        tv = (x[i] - base).reshape(-1)
        order = torch.sort(tv.abs(), stable=True).indices  # ascending (value, position)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[n - k :]] = True
        trimmed.append(tv * keep)
    t = torch.stack(trimmed)
    # The election sum is ill-conditioned where entries nearly cancel: use float32, in order.
    sign = torch.where(t[0] + t[1] + t[2] >= 0, 1.0, -1.0)
    t = t.double()
    agree = torch.sign(t) == sign
    num = (t * agree).sum(0)
    den = agree.sum(0).double()
    return (base.reshape(-1).double() + num / torch.where(den == 0, 1.0, den)).reshape(base.shape)


@pytest.mark.parametrize("levels", [0, 5])
def test_ties_on_large_tensors_with_tied_magnitudes_matches_a_stable_sort(levels: int) -> None:
    g = torch.Generator().manual_seed(levels)
    base = torch.randn(700, 500, generator=g)
    noise = torch.randn(3, 700, 500, generator=g)
    if levels:  # few distinct magnitudes: thresholds fall inside long runs of ties
        noise = torch.round(noise * levels) / levels
    x = base + noise * 0.125  # exact in float32 for the quantised case
    got = merge("ties", x.numpy(), base.numpy(), {"density": 0.3})
    close(got, ref_ties_torch(x, base, 0.3).numpy(), 1e-5)


@pytest.mark.parametrize("levels", [0, 4])
def test_ties_is_exact_when_the_strided_sample_is_unrepresentative(levels: int) -> None:
    n = 600_000  # sample stride 9: every sampled entry is one of the large ones below
    g = torch.Generator().manual_seed(2)
    base = torch.zeros(n)
    x = 1e-3 * torch.randn(3, n, generator=g)
    if levels:  # ties at the threshold, found in the pass over every entry
        x = torch.round(x * 1024 * levels) / (1024 * levels)
    x[:, ::9] = torch.randn(3, (n + 8) // 9, generator=g).abs() + 1.0
    got = merge("ties", x.numpy(), base.numpy(), {"density": 0.5})
    close(got, ref_ties_torch(x, base, 0.5).numpy(), 1e-6)


PROPAGATING = sorted(n for n in names() if get(n).propagates_nonfinite)


def test_the_strategies_checked_by_their_result_are_the_linear_family_ties_and_dare() -> None:
    assert PROPAGATING == [
        "dare_linear",
        "dare_ties",
        "fedavg",
        "linear",
        "passthrough",
        "task_arithmetic",
        "ties",
        "weight_average",
    ]


@pytest.mark.parametrize("name", PROPAGATING)
@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    n=st.integers(1, 9),
    where=st.integers(0, 1000),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    in_base=st.booleans(),
    weights=st.lists(st.sampled_from([0.0, 1.0, 2.5, -1.0]), min_size=4, max_size=4),
)
def test_a_non_finite_input_gives_a_non_finite_result_entry(
    name: str, k: int, n: int, where: int, bad: float, in_base: bool, weights: list[float]
) -> None:
    """What lets the engine check these strategies' results instead of every input."""
    strategy = get(name)
    k = 1 if strategy.max_inputs == 1 else k
    x = np.linspace(-1.0, 1.0, k * n, dtype=np.float32).reshape(k, n)
    base = np.full(n, 0.25, dtype=np.float32)  # given to every strategy; most ignore it
    if in_base and strategy.uses_base:
        base[where % n] = bad
    else:
        x[where % k, where % n] = bad
    key = next((p.name for p in strategy.per_model_params()), None)
    mps = [{key: w} for w in weights[:k]] if key == "weight" else None
    if mps is not None and abs(sum(weights[:k])) < 1e-9 and name != "task_arithmetic":
        mps = None  # a normalised mean of weights summing to zero is refused, not merged
    out = merge(name, x, base, model_params=mps)
    assert not np.isfinite(out[where % n])
