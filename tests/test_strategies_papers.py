"""Paper strategies (weighted, subspace, adaptive, unlearning) against literal formulas.

Each deterministic strategy is compared with an independent, loop-level implementation of
its paper's formula on small hand-made tensors; the searches get statistical tests with
fixed seeds; missing data-derived inputs must raise a `StrategyParamError` naming them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies import get, names
from crdtd.strategies.adaptive import (
    entropy_loss,
    learn_adamerging,
    learn_adarank,
    learn_dam,
    register_fitness,
)
from crdtd.strategies.base import TensorMerge, canonical_params, generator_for
from crdtd.strategies.subspace import emr_parts, emr_task_tensor

H3 = [
    "weight_average", "fisher_merge", "regression_mean", "emr", "star", "svd_knot_tying",
    "adarank", "dual_projection", "ada_merging", "dam", "weight_scope_alignment",
    "representation_surgery", "evolutionary_merge", "genetic_merge", "negative_merge",
    "split_unlearn_merge", "safe_merge", "led_merge",
]  # fmt: skip

NAME = "model.layers.0.mlp.up_proj.weight"


def tensor_merge(
    name: str,
    inputs: Sequence[Any],
    base: Any = None,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    extras: Sequence[Mapping[str, Any]] = (),
    digest: bytes = b"test-digest",
) -> TensorMerge:
    strategy = get(name)
    stack = torch.stack([torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in inputs])
    mp = [{} for _ in inputs] if model_params is None else list(model_params)
    gp, mps = strategy.validate(dict(params or {}), mp)
    ex = tuple(
        {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in e.items()}
        for e in extras
    )
    b = None if base is None else torch.as_tensor(np.asarray(base), dtype=torch.float32)
    g = generator_for(digest, NAME, canonical_params(gp, mps))
    return TensorMerge(NAME, stack, b, gp, mps, g, ex)


def run(name: str, inputs: Sequence[Any], base: Any = None, **kw: Any) -> np.ndarray:
    tm = tensor_merge(name, inputs, base, **kw)
    out = get(name).fn(tm)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == tuple(tm.inputs.shape[1:])
    return out.double().numpy()


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def close(a: Any, b: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=tol, atol=tol)


def test_every_paper_strategy_is_registered_with_its_paper_and_formula():
    registered = set(names())
    for name in H3:
        assert name in registered
        s = get(name)
        assert s.paper and s.formula and s.summary, name
        assert s.family == "papers"


# -- weighted -----------------------------------------------------------------------------------


def test_weight_average_is_the_weighted_soup():
    a, b, c = rng().normal(size=(3, 4, 3))
    out = run(
        "weight_average", [a, b, c], model_params=[{"weight": 1}, {"weight": 2}, {"weight": 5}]
    )
    close(out, (a + 2 * b + 5 * c) / 8)
    raw = run(
        "weight_average",
        [a, b],
        params={"normalize": False},
        model_params=[{"weight": 0.5}, {"weight": 0.25}],
    )
    close(raw, 0.5 * a + 0.25 * b)


def test_weight_average_with_weights_summing_to_zero_is_refused():
    with pytest.raises(StrategyParamError, match="sums to zero"):
        run(
            "weight_average",
            [np.ones(3), np.zeros(3)],
            model_params=[{"weight": 1}, {"weight": -1}],
        )


def fisher_literal(thetas, fishers, lams, eps):
    out = np.zeros_like(thetas[0])
    for idx in np.ndindex(out.shape):
        num = sum(lam * (f[idx] + eps) * t[idx] for t, f, lam in zip(thetas, fishers, lams))
        den = sum(lam * (f[idx] + eps) for f, lam in zip(fishers, lams))
        out[idx] = num / den
    return out


def test_fisher_merge_matches_the_fisher_weighted_average():
    r = rng(1)
    thetas = r.normal(size=(3, 2, 3))
    fishers = r.uniform(0, 2, size=(3, 2, 3))
    fishers[0, 0, 0] = 0.0
    lams = [1.0, 0.5, 2.0]
    out = run(
        "fisher_merge",
        list(thetas),
        model_params=[{"weight": x} for x in lams],
        extras=[{"fisher": f} for f in fishers],
    )
    close(out, fisher_literal(thetas, fishers, lams, 1e-6))


def test_fisher_merge_follows_the_confident_model_and_equal_fishers_give_the_mean():
    a, b = np.array([1.0, 2.0]), np.array([3.0, -4.0])
    out = run("fisher_merge", [a, b], extras=[{"fisher": [1e6, 1.0]}, {"fisher": [1e-3, 1.0]}])
    close(out, [1.0, -1.0], tol=1e-3)
    same = run("fisher_merge", [a, b], extras=[{"fisher": [2.0, 2.0]}] * 2)
    close(same, (a + b) / 2)


def test_fisher_merge_normalize_divides_each_model_by_its_fisher_norm():
    r = rng(2)
    thetas, fishers = r.normal(size=(2, 4)), r.uniform(0.1, 3, size=(2, 4))
    out = run(
        "fisher_merge",
        list(thetas),
        params={"normalize": True, "epsilon": 0.0},
        extras=[{"fisher": f} for f in fishers],
    )
    inv = 1 / np.linalg.norm(fishers, axis=1)
    close(out, fisher_literal(thetas, fishers, inv / inv.sum(), 0.0))


def test_fisher_merge_without_or_with_bad_fishers_is_refused():
    with pytest.raises(StrategyParamError, match="'fisher'"):
        run("fisher_merge", [np.ones(2), np.zeros(2)])
    with pytest.raises(StrategyParamError, match="negative"):
        run(
            "fisher_merge",
            [np.ones(2), np.zeros(2)],
            extras=[{"fisher": [1.0, -1.0]}, {"fisher": [1.0, 1.0]}],
        )
    with pytest.raises(StrategyParamError, match="shape"):
        run(
            "fisher_merge",
            [np.ones(2), np.zeros(2)],
            extras=[{"fisher": [1.0]}, {"fisher": [1.0, 1.0]}],
        )


def test_regression_mean_solves_the_joint_least_squares_of_all_models():
    r = rng(3)
    ws = r.normal(size=(2, 3, 4))
    xs = [r.normal(size=(20, 4)), r.normal(size=(15, 4)) * 2]
    out = run("regression_mean", list(ws), extras=[{"gram": x.T @ x} for x in xs])
    design = np.vstack(xs)
    target = np.vstack([x @ w.T for x, w in zip(xs, ws)])
    literal = np.linalg.lstsq(design, target, rcond=None)[0].T
    close(out, literal, tol=1e-4)


def test_regression_mean_alpha_shrinks_off_diagonal_gram_entries():
    r = rng(4)
    ws = r.normal(size=(2, 2, 3))
    grams = [x.T @ x for x in (r.normal(size=(9, 3)), r.normal(size=(9, 3)))]
    alpha = 0.4
    red = [alpha * g + (1 - alpha) * np.diag(np.diag(g)) for g in grams]
    literal = sum(w @ g for w, g in zip(ws, red)) @ np.linalg.inv(sum(red))
    out = run(
        "regression_mean", list(ws), params={"alpha": alpha}, extras=[{"gram": g} for g in grams]
    )
    close(out, literal, tol=1e-4)


def test_regression_mean_diagonal_fallback_is_a_per_column_weighted_mean():
    r = rng(5)
    ws = r.normal(size=(3, 2, 4))
    diags = r.uniform(0.5, 2, size=(3, 4))
    diags[:, 3] = 0.0
    out = run("regression_mean", list(ws), extras=[{"gram": d} for d in diags])
    for j in range(3):
        close(out[:, j], sum(w[:, j] * d[j] for w, d in zip(ws, diags)) / diags[:, j].sum())
    close(out[:, 3], ws[:, :, 3].mean(axis=0))


def test_regression_mean_keeps_the_mean_where_no_data_constrains_and_averages_biases():
    r = rng(6)
    ws = r.normal(size=(2, 2, 3))
    xs = [r.normal(size=(1, 3)), r.normal(size=(1, 3))]
    out = run("regression_mean", list(ws), extras=[{"gram": x.T @ x} for x in xs])
    design, target = np.vstack(xs), np.vstack([x @ w.T for x, w in zip(xs, ws)])
    close(design @ out.T, target, tol=1e-4)
    null = np.linalg.svd(design)[2][-1]
    close(out @ null, ws.mean(axis=0) @ null, tol=1e-4)
    bias = run("regression_mean", [np.array([1.0, 2.0]), np.array([3.0, 0.0])])
    close(bias, [2.0, 1.0])


def test_regression_mean_without_gram_is_refused_naming_it():
    with pytest.raises(StrategyParamError, match="'gram'"):
        run("regression_mean", [np.ones((2, 2)), np.zeros((2, 2))])


# -- subspace -----------------------------------------------------------------------------------


def emr_literal(tvs):
    k = len(tvs)
    flat = [t.reshape(-1) for t in tvs]
    uni = np.zeros_like(flat[0])
    for j in range(uni.size):
        total = sum(f[j] for f in flat)
        g = 1.0 if total > 0 else -1.0
        mags = [abs(f[j]) for f in flat if f[j] * g > 0]
        uni[j] = g * (max(mags) if mags else 0.0)
    masks = [np.array([f[j] * uni[j] > 0 for j in range(uni.size)]) for f in flat]
    resc = []
    for i in range(k):
        den = np.abs(masks[i] * uni).sum()
        resc.append(np.abs(flat[i]).sum() / den if den else 0.0)
    return uni.reshape(tvs[0].shape), [m.reshape(tvs[0].shape) for m in masks], resc


def test_emr_returns_base_plus_the_elected_unified_vector():
    base = np.array([[0.5, -0.5, 0.0], [1.0, 1.0, 1.0]])
    tvs = [
        np.array([[0.3, -0.2, 0.0], [0.1, 0.4, -0.3]]),
        np.array([[0.5, 0.1, 0.2], [-0.6, 0.2, -0.1]]),
        np.array([[-0.1, -0.4, -0.2], [0.2, 0.0, 0.5]]),
    ]
    out = run("emr", [base + t for t in tvs], base)
    uni, masks, resc = emr_literal(tvs)
    close(out, base + uni)
    tm = tensor_merge("emr", [base + t for t in tvs], base)
    parts = emr_parts(tm.task_vectors())
    close(parts.rescalers.numpy(), resc)
    for i in range(3):
        close(emr_task_tensor(tm, i).numpy(), base + resc[i] * masks[i] * uni)


def star_literal(m, eta):
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    running, r = 0.0, 0
    while running < s.sum() * eta / 100 - 1e-12:
        running += s[r]
        r += 1
    r = max(r, 1)
    kept = s[:r] * s.sum() / s[:r].sum()
    return u[:, :r] @ np.diag(kept) @ vt[:r]


@pytest.mark.parametrize("eta", [10.0, 40.0, 75.0, 100.0])
def test_star_truncates_rescales_and_averages(eta):
    r = rng(7)
    base = r.normal(size=(5, 4))
    tvs = r.normal(size=(2, 5, 4)) * np.array([[3.0], [1.0], [0.5], [0.2], [0.1]])
    out = run(
        "star",
        [base + t for t in tvs],
        base,
        params={"eta": eta},
        model_params=[{"weight": 1.0}, {"weight": 3.0}],
    )
    literal = base + (star_literal(tvs[0], eta) + 3 * star_literal(tvs[1], eta)) / 4
    close(out, literal, tol=1e-4)
    nuclear = np.linalg.svd(star_literal(tvs[0], eta), compute_uv=False).sum()
    close(nuclear, np.linalg.svd(tvs[0], compute_uv=False).sum(), tol=1e-6)


def test_star_on_biases_averages_task_vectors():
    base = np.array([1.0, 2.0])
    out = run("star", [base + np.array([0.2, 0.0]), base + np.array([0.0, 0.4])], base)
    close(out, base + np.array([0.1, 0.2]))


def ties_literal(tvs, density, weights=None):
    k = len(tvs)
    weights = [1.0] * k if weights is None else weights
    flat = [t.reshape(-1).astype(float) for t in tvs]
    n = flat[0].size
    keep = int(density * n)
    trimmed = []
    for f in flat:
        order = sorted(range(n), key=lambda j: -abs(f[j]))
        cut = abs(f[order[keep - 1]]) if keep > 0 else math.inf
        trimmed.append(np.array([f[j] if abs(f[j]) >= cut else 0.0 for j in range(n)]))
    out = np.zeros(n)
    total_mass = sum(w * t for w, t in zip(weights, trimmed))
    for j in range(n):
        sign = np.sign(total_mass[j]) or np.sign(total_mass.sum())
        num = den = 0.0
        for w, t in zip(weights, trimmed):
            if t[j] != 0 and np.sign(t[j]) == sign:
                num += w * t[j]
                den += w
        out[j] = num / den if den else 0.0
    return out.reshape(tvs[0].shape)


def knots_literal(tvs, density, lam):
    cat = np.concatenate(tvs, axis=1)
    u, s, vt = np.linalg.svd(cat, full_matrices=False)
    keep = s > 1e-5
    u, s, vt = u[:, keep], s[keep], vt[keep]
    width = tvs[0].shape[1]
    coords = [np.diag(s) @ vt[:, i * width : (i + 1) * width] for i in range(len(tvs))]
    return lam * (u @ ties_literal(coords, density))


def test_svd_knot_tying_is_ties_in_the_joint_svd_basis():
    r = rng(8)
    base = r.normal(size=(4, 3))
    tvs = [r.normal(size=(4, 2)) @ r.normal(size=(2, 3)) for _ in range(3)]
    out = run(
        "svd_knot_tying", [base + t for t in tvs], base, params={"density": 0.5, "lambda": 0.6}
    )
    close(out, base + knots_literal(tvs, 0.5, 0.6), tol=1e-4)


def test_svd_knot_tying_reproduces_identical_updates_and_merges_biases_with_ties():
    r = rng(9)
    base, tv = r.normal(size=(3, 5)), r.normal(size=(3, 5))
    out = run("svd_knot_tying", [base + tv, base + tv], base, params={"density": 1.0})
    close(out, base + tv, tol=1e-5)
    b = np.zeros(4)
    bias = run(
        "svd_knot_tying",
        [b + np.array([1.0, -2.0, 0.1, 0.0]), b + np.array([3.0, 1.0, -0.2, 0.5])],
        b,
        params={"density": 0.5},
    )
    close(
        bias, ties_literal([np.array([1.0, -2.0, 0.1, 0.0]), np.array([3.0, 1.0, -0.2, 0.5])], 0.5)
    )


def adarank_literal(base, models, masks, lams, cart=False):
    origin = base + np.mean([m - base for m in models], axis=0) if cart else base
    out = origin.copy()
    for m, b, lam in zip(models, masks, lams):
        u, s, vt = np.linalg.svd(m - origin, full_matrices=False)
        out = out + lam * (u @ np.diag(np.asarray(b) * s) @ vt)
    return out


@pytest.mark.parametrize("mode", ["ta", "cart"])
def test_adarank_keeps_the_masked_singular_components(mode):
    r = rng(10)
    base = r.normal(size=(4, 3))
    models = [base + r.normal(size=(4, 3)) for _ in range(2)]
    masks, lams = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [0.7, 0.4]
    out = run(
        "adarank",
        models,
        base,
        params={"base_mode": mode},
        extras=[{"rank_mask": m, "coefficient": lam} for m, lam in zip(masks, lams)],
    )
    close(out, adarank_literal(base, models, masks, lams, cart=mode == "cart"), tol=1e-4)
    full = run("adarank", models, base, extras=[{"rank_mask": [1, 1, 1], "coefficient": 1.0}] * 2)
    close(full, models[0] + models[1] - base, tol=1e-4)


def test_adarank_without_masks_is_refused_naming_them():
    with pytest.raises(StrategyParamError, match="'rank_mask'"):
        run("adarank", [np.ones((2, 2))], np.zeros((2, 2)), extras=[{"coefficient": 1.0}])
    with pytest.raises(StrategyParamError, match="'coefficient'"):
        run("adarank", [np.ones((2, 2))], np.zeros((2, 2)))


def dop_subspace(tv, eps):
    u, s, vt = np.linalg.svd(tv, full_matrices=False)
    ratio = np.cumsum(s) / s.sum()
    r = int(np.sum(ratio < eps))
    return u[:, :r], s[:r], vt[:r].T


def dop_loss_torch(w, target, sub):
    u, s, v = (torch.as_tensor(x, dtype=w.dtype) for x in sub)
    d = w - target
    return torch.sum((torch.diag(s) @ u.T @ d) ** 2) + torch.sum((d @ v @ torch.diag(s)) ** 2)


def test_dual_projection_closed_form_is_the_stationary_point_of_the_weighted_losses():
    r = rng(11)
    base = r.normal(size=(5, 4))
    models = [base + r.normal(size=(5, 2)) @ r.normal(size=(2, 4)) for _ in range(2)]
    alpha = 0.7
    out = run("dual_projection", models, base, params={"solver": "closed_form", "alpha": alpha})
    subs = [dop_subspace(m - base, 0.99999) for m in models]
    w = torch.tensor(out, dtype=torch.float64, requires_grad=True)
    loss = sum(
        c * dop_loss_torch(w, torch.tensor(m), s)
        for c, m, s in zip((alpha, 1 - alpha), models, subs)
    )
    (g,) = torch.autograd.grad(loss, w)
    assert float(g.abs().max()) < 1e-3
    mean = (models[0] + models[1]) / 2

    def null_projector(blocks, dim):
        q, sv, _ = np.linalg.svd(np.hstack(blocks), full_matrices=True)
        rank = int(np.sum(sv > 1e-9))
        rest = q[:, rank:]
        return rest @ rest.T if rest.size else np.zeros((dim, dim))

    left = null_projector([s[0] for s in subs], 5)
    right = null_projector([s[2] for s in subs], 4)
    assert np.trace(left) >= 1
    close(left @ (out - mean) @ right, np.zeros((5, 4)), tol=1e-4)


def test_dual_projection_mgda_matches_a_literal_adam_mgda_loop():
    r = rng(12)
    base = r.normal(size=(4, 3))
    models = [base + r.normal(size=(4, 3)) * 0.1 for _ in range(2)]
    steps, lr, alpha, beta = 25, 1e-2, 0.8, 0.9
    out = run(
        "dual_projection",
        models,
        base,
        params={"iterations": steps, "lr": lr, "alpha": alpha, "ema_beta": beta},
    )
    subs = [dop_subspace(m - base, 0.99999) for m in models]
    targets = [torch.tensor(m, dtype=torch.float32) for m in models]
    w = ((targets[0] + targets[1]) / 2).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    ema = [alpha, 1 - alpha]
    for _ in range(steps):
        grads = []
        for t, s in zip(targets, subs):
            loss = dop_loss_torch(w, t, s)
            g = torch.autograd.grad(loss, w)[0]
            grads.append(g / float(loss.detach()))
        v11 = float((grads[0] * grads[0]).sum())
        v12 = float((grads[0] * grads[1]).sum())
        v22 = float((grads[1] * grads[1]).sum())
        if v12 >= v11:
            gamma = 0.999
        elif v12 >= v22:
            gamma = 0.001
        else:
            gamma = (v22 - v12) / (v11 + v22 - 2 * v12)
        ema = [beta * ema[0] + (1 - beta) * gamma, beta * ema[1] + (1 - beta) * (1 - gamma)]
        total = sum(c * dop_loss_torch(w, t, s) for c, t, s in zip(ema, targets, subs))
        opt.zero_grad()
        total.backward()
        opt.step()
    close(out, w.detach().numpy(), tol=1e-5)


def test_dual_projection_folds_inputs_in_order_and_averages_vectors_pairwise():
    b = np.zeros(2)
    out = run("dual_projection", [b + 1.0, b + 2.0, b + 4.0], b)
    close(out, [((1 + 2) / 2 + 4) / 2] * 2)
    single = run("dual_projection", [np.ones((2, 2)) * 3], np.zeros((2, 2)))
    close(single, np.ones((2, 2)) * 3)


# -- adaptive -----------------------------------------------------------------------------------


def test_ada_merging_applies_the_learned_coefficients():
    r = rng(13)
    base = r.normal(size=(3, 2))
    models = [base + r.normal(size=(3, 2)) for _ in range(3)]
    lams = [0.2, 0.5, 0.9]
    out = run("ada_merging", models, base, extras=[{"coefficient": lam} for lam in lams])
    close(out, base + sum(lam * (m - base) for lam, m in zip(lams, models)))
    with pytest.raises(StrategyParamError, match="'coefficient'"):
        run("ada_merging", models, base)


def test_dam_scales_columns_of_each_model():
    r = rng(14)
    models = r.normal(size=(2, 3, 4))
    cs = r.normal(size=(2, 4))
    out = run("dam", list(models), extras=[{"dam_coefficient": c} for c in cs])
    literal = np.zeros((3, 4))
    for m, c in zip(models, cs):
        for i in range(3):
            for j in range(4):
                literal[i, j] += c[j] * m[i, j]
    close(out, literal)
    tanh = run(
        "dam",
        list(models),
        params={"non_linearity": "tanh"},
        extras=[{"dam_coefficient": c} for c in cs],
    )
    close(tanh, sum(np.tanh(c) * m for c, m in zip(cs, models)))
    bias = run(
        "dam",
        [np.array([1.0, 2.0]), np.array([3.0, 4.0])],
        extras=[{"dam_coefficient": 0.25}, {"dam_coefficient": 0.5}],
    )
    close(bias, [1.75, 2.5])
    with pytest.raises(StrategyParamError, match="'dam_coefficient'"):
        run("dam", list(models))


def test_weight_scope_alignment_standardises_each_model_onto_the_fused_scope():
    r = rng(15)
    a = r.normal(0.1, 0.5, size=(4, 5))
    b = r.normal(-0.3, 2.0, size=(4, 5))
    out = run("weight_scope_alignment", [a, b], model_params=[{"weight": 3}, {"weight": 1}])
    ws = [0.75, 0.25]
    mu = [x.mean() for x in (a, b)]
    sd = [x.std() for x in (a, b)]
    mu_t = ws[0] * mu[0] + ws[1] * mu[1]
    sd_t = ws[0] * sd[0] + ws[1] * sd[1]
    literal = sum(w * (mu_t + sd_t / s * (x - m)) for w, x, m, s in zip(ws, (a, b), mu, sd))
    close(out, literal, tol=1e-5)
    assert abs(out.std() - sd_t) < 0.25 * sd_t


def rrr_literal(design_blocks, merged, targets, rank):
    """Surgery by reduced-rank regression on the data matrices themselves."""
    a = np.vstack([x @ merged.T for x in design_blocks])
    b = np.vstack([x @ t.T for x, t in zip(design_blocks, targets)])
    resp = a - b
    c_ols = np.linalg.lstsq(a, resp, rcond=None)[0]
    fitted = a @ c_ols
    v = np.linalg.svd(fitted, full_matrices=False)[2][:rank].T
    p_t = c_ols @ v @ v.T
    return (np.eye(merged.shape[0]) - p_t.T) @ merged, a, b


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_representation_surgery_is_a_reduced_rank_fit_to_each_models_outputs(rank):
    r = rng(16)
    base = r.normal(size=(3, 4))
    models = [base + r.normal(size=(3, 4)) for _ in range(2)]
    xs = [r.normal(size=(30, 4)), r.normal(size=(25, 4))]
    lam = 0.3
    merged = base + lam * sum(m - base for m in models)
    out = run(
        "representation_surgery",
        models,
        base,
        params={"rank": rank, "lambda": lam},
        extras=[{"gram": x.T @ x} for x in xs],
    )
    literal, _, _ = rrr_literal(xs, merged, models, rank)

    def objective(w):
        return sum(np.sum((x @ w.T - x @ t.T) ** 2) for x, t in zip(xs, models))

    close(objective(out), objective(literal), tol=1e-4)
    close(out, literal, tol=1e-3)
    assert objective(out) <= objective(merged) + 1e-9


def test_representation_surgery_leaves_biases_at_task_arithmetic_and_needs_grams():
    base = np.array([1.0, 1.0])
    out = run(
        "representation_surgery", [base + np.array([1.0, 0.0]), base + np.array([0.0, 2.0])], base
    )
    close(out, base + 0.3 * np.array([1.0, 2.0]))
    with pytest.raises(StrategyParamError, match="'gram'"):
        run("representation_surgery", [np.ones((2, 2))], np.zeros((2, 2)))


def gram_problem(seed: int):
    r = rng(seed)
    base = r.normal(size=(3, 4))
    models = [base + r.normal(size=(3, 4)) for _ in range(3)]
    xs = [r.normal(size=(12, 4)) for _ in range(3)]
    grams = [x.T @ x for x in xs]
    # optimum of −Σ_i tr((W−W_i)G_i(W−W_i)ᵀ) over W = base + Σ x_j τ_j, by least squares
    tvs = [m - base for m in models]
    rows_a, rows_b = [], []
    for x, m in zip(xs, models):
        rows_a.append(np.stack([(x @ t.T).reshape(-1) for t in tvs], axis=1))
        rows_b.append((x @ (m - base).T).reshape(-1))
    best = np.linalg.lstsq(np.vstack(rows_a), np.concatenate(rows_b), rcond=None)[0]
    return base, models, grams, best


def fitness_value(models, grams, w):
    num = sum(np.sum(((w - m) @ g) * (w - m)) for m, g in zip(models, grams))
    den = sum(np.sum((m @ g) * m) for m, g in zip(models, grams))
    return -num / den


@pytest.mark.parametrize("strategy", ["evolutionary_merge", "genetic_merge"])
def test_searches_find_the_fitness_optimum_for_several_seeds(strategy):
    base, models, grams, best = gram_problem(17)
    optimum = fitness_value(models, grams, base + sum(x * (m - base) for x, m in zip(best, models)))
    params = {"fitness": "gram_regression", "iterations": 60}
    if strategy == "genetic_merge":
        params.update({"lower": -1.0, "upper": 2.0, "population": 24})
    scores = []
    for seed in range(4):
        out = run(
            strategy,
            models,
            base,
            params=params,
            digest=bytes([seed]) * 8,
            extras=[{"gram": g} for g in grams],
        )
        scores.append(fitness_value(models, grams, out))
    gaps = [optimum - s for s in scores]
    assert all(g >= -1e-6 * abs(optimum) for g in gaps), gaps
    assert max(gaps) < 1e-3 * abs(optimum) + 1e-6, gaps


@pytest.mark.parametrize("strategy", ["evolutionary_merge", "genetic_merge"])
def test_searches_are_reproducible_per_seed_and_only_draw_from_the_generator(strategy):
    base, models, grams, _ = gram_problem(18)
    params = {"fitness": "gram_regression", "iterations": 5}
    extras = [{"gram": g} for g in grams]
    torch.manual_seed(123)
    a = run(strategy, models, base, params=params, extras=extras, digest=b"a")
    torch.manual_seed(456)
    b = run(strategy, models, base, params=params, extras=extras, digest=b"a")
    assert a.tobytes() == b.tobytes()
    c = run(strategy, models, base, params=params, extras=extras, digest=b"b")
    assert a.tobytes() != c.tobytes()


@register_fitness("test_closest_to_first_model")
def _closest_to_first(tm: TensorMerge, candidate: torch.Tensor) -> float:
    return -float(((candidate - tm.inputs[0]) ** 2).sum())


def test_searches_accept_a_registered_fitness_and_refuse_a_missing_one():
    r = rng(19)
    models = [r.normal(size=(2, 2)) for _ in range(2)]
    out = run(
        "evolutionary_merge",
        models,
        params={"fitness": "test_closest_to_first_model", "iterations": 40},
    )
    close(out, models[0], tol=1e-3)
    for strategy in ("evolutionary_merge", "genetic_merge"):
        with pytest.raises(StrategyParamError, match="'fitness'"):
            run(strategy, models)
        with pytest.raises(StrategyParamError, match="unknown fitness"):
            run(strategy, models, params={"fitness": "no_such_fitness"})


# -- unlearning ---------------------------------------------------------------------------------


def test_negative_merge_negates_only_sign_consistent_coordinates():
    base = np.array([1.0, 1.0, 1.0, 1.0])
    tvs = [
        np.array([0.2, -0.4, 0.3, 0.0]),
        np.array([0.4, -0.2, -0.1, 0.5]),
        np.array([0.6, -0.3, 0.2, 0.1]),
    ]
    out = run("negative_merge", [base + t for t in tvs], base, params={"lambda": 0.5})
    literal = base.copy()
    for j in range(4):
        col = [t[j] for t in tvs]
        if all(c > 0 for c in col) or all(c < 0 for c in col):
            literal[j] -= 0.5 * sum(col) / 3
    close(out, literal)
    plain = run("negative_merge", [base + t for t in tvs], base, params={"consensus": False})
    close(plain, base - sum(tvs))
    one = run("negative_merge", [base + tvs[0]], base, params={"lambda": 2.0})
    close(one, base - 2 * np.array([0.2, -0.4, 0.3, 0.0]))


@pytest.mark.parametrize("density", [0.25, 0.5, 1.0])
def test_split_unlearn_merge_is_ties_on_the_unlearned_models(density):
    r = rng(20)
    base = r.normal(size=(2, 4))
    tvs = [r.normal(size=(2, 4)) for _ in range(3)]
    out = run(
        "split_unlearn_merge",
        [base + t for t in tvs],
        base,
        params={"density": density, "lambda": 0.8},
    )
    close(out, base + 0.8 * ties_literal(tvs, density), tol=1e-5)
    same = run("split_unlearn_merge", [base + tvs[0], base + tvs[0]], base, params={"density": 1.0})
    close(same, base + tvs[0])
    ta = run(
        "split_unlearn_merge",
        [base + t for t in tvs],
        base,
        params={"merge": "task_arithmetic", "lambda": 0.5},
    )
    close(ta, base + 0.5 * sum(tvs))


def safe_literal(base, ft, safe, v, tau, s):
    c = v @ v.T / np.linalg.norm(v)
    d_ft, d_safe = ft - base, safe - base
    rho = torch.nn.functional.cosine_similarity(
        torch.tensor(c @ d_ft).reshape(1, -1), torch.tensor(d_ft).reshape(1, -1), dim=1
    ).item()
    return (base + (1 - s) * d_ft + s * d_safe) if rho < tau else ft, rho


def test_safe_merge_merges_only_layers_that_leave_the_safety_subspace():
    r = rng(21)
    base = r.normal(size=(4, 3))
    col = r.normal(size=(4, 1))
    v = col @ r.normal(size=(1, 3))
    inside = base + 0.5 * v + 0.05 * r.normal(size=(4, 3))
    off = np.eye(4) - col @ col.T / (col.T @ col).item()
    outside = base + off @ r.normal(size=(4, 3)) + 0.05 * v
    safe = base + r.normal(size=(4, 3)) * 0.1
    for ft in (inside, outside):
        out = run(
            "safe_merge",
            [ft, safe],
            base,
            model_params=[{"safety": False}, {"safety": True}],
            extras=[{"alignment": v}, {"alignment": v}],
        )
        literal, _ = safe_literal(base, ft, safe, v, 0.35, 0.2)
        close(out, literal, tol=1e-5)
    assert safe_literal(base, inside, safe, v, 0.35, 0.2)[1] > 0.35
    assert safe_literal(base, outside, safe, v, 0.35, 0.2)[1] < 0.35


def test_safe_merge_needs_a_safety_model_and_one_alignment_direction():
    base = np.zeros((2, 2))
    v = np.ones((2, 2))
    with pytest.raises(StrategyParamError, match="safety=true"):
        run(
            "safe_merge",
            [np.ones((2, 2)), 2 * np.ones((2, 2))],
            base,
            extras=[{"alignment": v}] * 2,
        )
    with pytest.raises(StrategyParamError, match="differs"):
        run(
            "safe_merge",
            [np.ones((2, 2)), 2 * np.ones((2, 2))],
            base,
            model_params=[{}, {"safety": True}],
            extras=[{"alignment": v}, {"alignment": 2 * v}],
        )
    with pytest.raises(StrategyParamError, match="'alignment'"):
        run(
            "safe_merge",
            [np.ones((2, 2)), 2 * np.ones((2, 2))],
            base,
            model_params=[{}, {"safety": True}],
        )


def led_literal(base, models, imps, base_imps, densities, weights, lam):
    flat_n = base.size
    elected = []
    for imp, bimp, r in zip(imps, base_imps, densities):
        keep = int(r * flat_n)

        def top(scores, keep=keep):
            s = sorted(scores.reshape(-1), reverse=True)
            return scores >= s[keep - 1] if keep > 0 else np.zeros_like(scores, bool)

        elected.append(top(imp) & top(bimp))
    out = base.copy()
    for i, (m, w) in enumerate(zip(models, weights)):
        others = np.zeros_like(base, bool)
        for j, e in enumerate(elected):
            if j != i:
                others |= e
        out = out + lam * w * (elected[i] & ~others) * (m - base)
    return out


def test_led_merge_elects_by_both_scores_and_drops_shared_neurons():
    r = rng(22)
    base = r.normal(size=(3, 4))
    models = [base + r.normal(size=(3, 4)) for _ in range(3)]
    imps = [r.uniform(size=(3, 4)) for _ in range(3)]
    bimps = [r.uniform(size=(3, 4)) for _ in range(3)]
    dens, ws = [0.5, 0.25, 0.75], [1.0, 0.5, 2.0]
    out = run(
        "led_merge",
        models,
        base,
        params={"lambda": 0.9},
        model_params=[{"density": d, "weight": w} for d, w in zip(dens, ws)],
        extras=[{"importance": i, "base_importance": b} for i, b in zip(imps, bimps)],
    )
    close(out, led_literal(base, models, imps, bimps, dens, ws, 0.9))
    with pytest.raises(StrategyParamError, match="'base_importance'"):
        run("led_merge", models, base, extras=[{"importance": i} for i in imps])


# -- contract -----------------------------------------------------------------------------------


def sample_extras(name: str, shape: tuple[int, ...], k: int, r: np.random.Generator):
    rows = []
    for _ in range(k):
        x = r.normal(size=(6, shape[-1]))
        rows.append({
            "fisher": r.uniform(0.1, 1, size=shape), "gram": x.T @ x,
            "rank_mask": np.array([1.0, 0.0, 1.0][: min(shape)]), "coefficient": 0.4,
            "dam_coefficient": r.uniform(size=shape[-1]), "alignment": np.ones(shape),
            "importance": r.uniform(size=shape), "base_importance": r.uniform(size=shape),
        })  # fmt: skip
    return rows


@pytest.mark.parametrize("name", H3)
def test_paper_strategies_are_deterministic_and_return_float32_of_the_input_shape(name):
    r = rng(23)
    shape = (3, 4)
    base = r.normal(size=shape)
    models = [base + r.normal(size=shape) * 0.3 for _ in range(3)]
    params: dict[str, Any] = {}
    mp: list[dict[str, Any]] = [{}, {}, {}]
    if name in ("evolutionary_merge", "genetic_merge"):
        params = {"fitness": "gram_regression", "iterations": 3}
    if name == "dual_projection":
        params = {"iterations": 5}
    if name == "safe_merge":
        mp = [{}, {}, {"safety": True}]
    extras = sample_extras(name, shape, 3, r)
    outs = [
        run(name, models, base, params=params, model_params=mp, extras=extras) for _ in range(2)
    ]
    assert outs[0].tobytes() == outs[1].tobytes()
    assert np.isfinite(outs[0]).all()


# -- learning loops -----------------------------------------------------------------------------


def test_learn_adamerging_recovers_coefficients_of_a_quadratic_target():
    r = rng(24)
    base = {"a": torch.tensor(r.normal(size=(3, 2))), "b": torch.tensor(r.normal(size=2))}
    models = [
        {n: t + torch.tensor(r.normal(size=tuple(t.shape))) for n, t in base.items()}
        for _ in range(2)
    ]
    want = {"a": (0.6, 0.2), "b": (0.1, 0.9)}
    target = {
        n: (base[n] + sum(w * (m[n] - base[n]) for w, m in zip(want[n], models))).float()
        for n in base
    }

    def loss(merged):
        return sum(((merged[n] - target[n]) ** 2).sum() for n in merged)

    coefs = learn_adamerging(base, models, loss, steps=400, lr=0.02, clamp=None)
    for i in range(2):
        for n in base:
            assert abs(float(coefs[i][n]) - want[n][i]) < 0.02
    clamped = learn_adamerging(base, models, loss, steps=50, lr=0.05, layer_wise=False)
    assert all(0.0 <= float(c[n]) <= 1.0 for c in clamped for n in base)
    assert float(clamped[0]["a"]) == float(clamped[0]["b"])
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    assert float(entropy_loss(logits)) < math.log(2)


def test_learn_adarank_and_learn_dam_return_extras_of_the_right_shape():
    r = rng(25)
    base = {"w": torch.tensor(r.normal(size=(4, 3)), dtype=torch.float32)}
    models = [
        {"w": base["w"] + torch.tensor(r.normal(size=(4, 3)), dtype=torch.float32)}
        for _ in range(2)
    ]

    def loss(merged):
        return ((merged["w"] - models[0]["w"]) ** 2).sum()

    masks, coefs = learn_adarank(base, models, loss, steps=30, lr=0.05, temperature=1.0)
    assert masks[0]["w"].shape == (3,)
    assert set(masks[0]["w"].tolist()) <= {0.0, 1.0}
    assert coefs[0]["w"].shape == ()
    dam_coefs = learn_dam(models, loss, steps=200, lr=0.05)
    assert dam_coefs[0]["w"].shape == (3,)
    tm = tensor_merge(
        "dam",
        [m["w"].numpy() for m in models],
        extras=[{"dam_coefficient": c["w"].numpy()} for c in dam_coefs],
    )
    merged = get("dam").fn(tm)
    assert float(((merged - models[0]["w"]) ** 2).sum()) < float(
        ((0.5 * (models[0]["w"] + models[1]["w"]) - models[0]["w"]) ** 2).sum()
    )


# -- through the model merge engine -------------------------------------------------------------


def test_regression_mean_through_model_merge_reads_each_contributions_gram_in_any_order():
    from crdtd.model import Contribution, ModelMerge

    r = rng(26)
    models = [
        {"l.weight": torch.tensor(r.normal(size=(3, 4))), "l.bias": torch.tensor(r.normal(size=3))}
        for _ in range(3)
    ]
    xs = [r.normal(size=(10, 4)) for _ in range(3)]
    grams = [{"l.weight": torch.tensor(x.T @ x)} for x in xs]
    outs = set()
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0, 1]):
        items = [Contribution(models[i], extras={"gram": grams[i]}) for i in order]
        res = ModelMerge("regression_mean").merge(items)
        outs.add(res.tensor["l.weight"].numpy().tobytes() + res.tensor["l.bias"].numpy().tobytes())
        design = np.vstack(xs)
        target = np.vstack([x @ m["l.weight"].numpy().T for x, m in zip(xs, models)])
        close(res.tensor["l.weight"], np.linalg.lstsq(design, target, rcond=None)[0].T, tol=1e-4)
        close(res.tensor["l.bias"], np.mean([m["l.bias"].numpy() for m in models], axis=0))
    assert len(outs) == 1
    with pytest.raises(StrategyParamError, match="'gram'"):
        ModelMerge("regression_mean").merge(models)
