"""Importance-weighted averages: uniform/weighted soups, Fisher merging and RegMean.

Fisher diagonals and Gram matrices come from data the merge never sees; they arrive per
contribution as extras (`fisher`, `gram`) and are never estimated from the weights.
"""

from __future__ import annotations

import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies._h3_common import (
    as_matrix,
    check_shape,
    combine,
    model_vector,
    need_extra,
    normalized,
    rows,
)
from crdtd.strategies._h3_linalg import psd_solve_right
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

_FAMILY = "papers"

WEIGHT = Param("weight", float, 1.0, "per-model weight", per_model=True)


@register(
    "weight_average",
    params=(
        WEIGHT,
        Param("normalize", bool, True, "divide by Σ weight (False: plain weighted sum)"),
    ),
    family=_FAMILY,
    paper="Wortsman et al. 2022, Model soups (uniform and weighted soups)",
    formula="θ = Σ_i w_i θ_i / Σ_i w_i",
    elementwise=True,
    uses_base=False,
    propagates_nonfinite=True,
)
def weight_average(tm: TensorMerge) -> torch.Tensor:
    """Weighted average of the full weights (a model soup); uniform when all weights are 1."""
    w = model_vector(tm, "weight")
    if tm.params["normalize"]:
        w = normalized(w, "weight_average")
    return combine(w, tm.inputs)


@register(
    "fisher_merge",
    params=(
        WEIGHT,
        Param("epsilon", float, 1e-6, "Fisher floor added to every diagonal entry", minimum=0.0),
        Param(
            "normalize",
            bool,
            False,
            "scale model i by 1/‖F_i‖ (normalised over models); per tensor, not per model",
        ),
    ),
    family=_FAMILY,
    paper="Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging",
    formula="θ = Σ_i λ_i (F_i+ε) θ_i / Σ_i λ_i (F_i+ε)",
    needs_extras=("fisher",),
)
def fisher_merge(tm: TensorMerge) -> torch.Tensor:
    """Per-coordinate Fisher-weighted mean; the diagonal Fishers come in as extras `fisher`.

    `normalize` reproduces the reference code's option of dividing each model's Fisher by its
    norm, but the norm here is the tensor's, because a strategy sees one tensor at a time.
    """
    shape = tuple(tm.inputs.shape[1:])
    fishers = []
    for i in range(tm.k):
        f = need_extra(tm, i, "fisher", "fisher_merge").to(torch.float32)
        check_shape(f, shape, f"fisher_merge: extra 'fisher' of model {i}, tensor {tm.name!r}")
        if bool((f < 0).any()):
            raise StrategyParamError(
                f"fisher_merge: extra 'fisher' of model {i}, tensor {tm.name!r} has negative "
                "entries; a diagonal Fisher is a mean of squared gradients"
            )
        fishers.append(f)
    eps = float(tm.params["epsilon"])
    fisher = torch.stack(fishers) + eps
    lam = model_vector(tm, "weight").to(fisher.device)
    if tm.params["normalize"]:
        norms = torch.stack([torch.linalg.vector_norm(f.double()) for f in fishers])
        inv = 1.0 / (norms + eps)
        lam = lam * inv / inv.sum()
    scaled = fisher * rows(lam.to(torch.float32), fisher.dim())
    den = scaled.sum(dim=0)
    if bool((den == 0).any()):
        raise StrategyParamError(
            f"fisher_merge: tensor {tm.name!r}: Σ λ_i (F_i+ε) is zero somewhere; "
            "use epsilon > 0 or non-zero weights"
        )
    return (scaled * tm.inputs).sum(dim=0) / den


@register(
    "regression_mean",
    params=(
        Param(
            "alpha",
            float,
            1.0,
            "scale of the off-diagonal Gram entries (RegMean's α; 1 = exact regression)",
            minimum=0.0,
            maximum=1.0,
        ),
    ),
    family=_FAMILY,
    paper="Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models",
    formula="W = (Σ_i W_i G̃_i)(Σ_i G̃_i)^-1, G̃ = αG + (1-α)diag(G); other tensors: mean",
    needs_extras=("gram",),
)
def regression_mean(tm: TensorMerge) -> torch.Tensor:
    """RegMean: the linear map minimising Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖² given G_i = X_iᵀX_i.

    Torch layout: W is `[out, in]` (y = W x) and extra `gram` is `[in, in]`. A 1-D `gram`
    of length `in` is a diagonal: the solve then reduces to a per-column weighted mean
    `W[:, j] = Σ_i G_i[j] W_i[:, j] / Σ_i G_i[j]` (RegMean with α = 0). Tensors of rank < 2
    (biases, norms) are averaged, as in the paper. Tensors of rank > 2 are read as
    `[shape[0], rest]` with a Gram over `rest`. Directions no Gram constrains stay at the plain
    mean (minimum-norm deviation from it).
    """
    if tm.inputs.dim() < 3:
        return tm.inputs.mean(dim=0)
    mats = [as_matrix(x).to(torch.float64) for x in tm.inputs]
    width = mats[0].shape[1]
    grams = []
    for i in range(tm.k):
        g = need_extra(tm, i, "gram", "regression_mean").to(torch.float64)
        what = f"regression_mean: extra 'gram' of model {i}, tensor {tm.name!r}"
        if g.dim() == 1:
            check_shape(g, (width,), what)
        else:
            check_shape(g, (width, width), what)
        grams.append(g)
    mean = torch.stack(mats).mean(dim=0)
    if all(g.dim() == 1 for g in grams):
        total = torch.stack(grams).sum(dim=0)
        num = sum(m * g.unsqueeze(0) for m, g in zip(mats, grams))
        assert isinstance(num, torch.Tensor)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        out = torch.where(total.unsqueeze(0) > 0, num / safe.unsqueeze(0), mean)
        return out.reshape(tm.inputs.shape[1:]).to(torch.float32)
    alpha = float(tm.params["alpha"])
    reduced = []
    for g in grams:
        full = torch.diag(g) if g.dim() == 1 else g
        diag = torch.diag(torch.diagonal(full))
        reduced.append(alpha * full + (1.0 - alpha) * diag)
    g_sum = torch.stack(reduced).sum(dim=0)
    rhs = sum(m @ g for m, g in zip(mats, reduced))
    assert isinstance(rhs, torch.Tensor)
    out = mean + psd_solve_right(rhs - mean @ g_sum, g_sum)
    return out.reshape(tm.inputs.shape[1:]).to(torch.float32)
