"""Merges that work on task vectors in a spectral or sign subspace: EMR, STAR, KnOTS, AdaRank, DOP.

All take task vectors τ_i = θ_i − θ_base and need a base. Matrix methods read a tensor of rank
> 2 as `[shape[0], rest]`; each documents its fallback for 1-D tensors (biases, norms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies._h3_common import (
    as_matrix,
    check_shape,
    combine,
    model_vector,
    need_base,
    need_extra,
    normalized,
    ties_merge,
)
from crdtd.strategies._h3_linalg import relative_tolerance, svd
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

_FAMILY = "papers"

# -- EMR-Merging -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmrParts:
    """EMR-Merging's outputs for one tensor: unified task vector, per-task masks and rescalers."""

    unified: torch.Tensor
    masks: torch.Tensor
    rescalers: torch.Tensor


def emr_parts(task_vectors: torch.Tensor) -> EmrParts:
    """Elect, Mask, Rescale (Huang et al. 2024) on `[k, *shape]` task vectors.

    Elect: γ = sign(Σ_i τ_i) (a zero sum counts as negative, as in the reference code) and
    ε = max_i |τ_i| over the τ_i agreeing with γ, giving τ_uni = γ ⊙ ε. Mask: M_i = (τ_i ⊙ τ_uni
    > 0). Rescale: λ_i = Σ|τ_i| / Σ|M_i ⊙ τ_uni| (0 when M_i ⊙ τ_uni is empty). The paper sums
    over the whole model; here the sums run over this tensor.
    """
    tv = task_vectors.to(torch.float32)
    gamma = torch.where(tv.sum(dim=0) > 0, 1.0, -1.0)
    agree = tv * gamma.unsqueeze(0) > 0
    eps = (tv.abs() * agree).amax(dim=0)
    unified = gamma * eps
    masks = tv * unified.unsqueeze(0) > 0
    num = tv.abs().reshape(tv.shape[0], -1).double().sum(dim=1)
    den = (masks * unified.abs().unsqueeze(0)).reshape(tv.shape[0], -1).double().sum(dim=1)
    rescalers = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return EmrParts(unified, masks, rescalers.to(torch.float32))


def emr_task_tensor(tm: TensorMerge, index: int) -> torch.Tensor:
    """EMR's reconstruction of task `index` (row order of `tm.inputs`): θ_0 + λ_i M_i ⊙ τ_uni."""
    base = need_base(tm, "emr")
    parts = emr_parts(tm.task_vectors())
    return base + parts.rescalers[index] * parts.masks[index] * parts.unified


@register(
    "emr",
    params=(),
    family=_FAMILY,
    paper="Huang et al. 2024, EMR-Merging: Tuning-Free High-Performance Model Merging",
    formula="θ = θ_0 + τ_uni, τ_uni = sign(Σ τ_i) ⊙ max_i |τ_i|·[τ_i agrees]",
    needs_base=True,
)
def emr(tm: TensorMerge) -> torch.Tensor:
    """EMR-Merging's single shared model: the base plus the elected unified task vector.

    EMR serves each task with a mask and a rescaler on top of τ_uni; one merged checkpoint
    can only hold τ_uni. `emr_parts` / `emr_task_tensor` give the per-task pieces.
    """
    base = need_base(tm, "emr")
    return base + emr_parts(tm.task_vectors()).unified


# -- STAR --------------------------------------------------------------------------------------


def star_truncate(matrix: torch.Tensor, eta: float) -> torch.Tensor:
    """STAR on one matrix: keep the fewest top singular values holding η% of Σσ, rescale them
    so Σσ (the nuclear norm) is unchanged, and rebuild."""
    u, s, vh = svd(matrix)
    total = s.sum()
    if float(total) == 0.0:
        return torch.zeros_like(matrix, dtype=torch.float64)
    cum = torch.cumsum(s, dim=0)
    target = total * eta / 100.0
    r = min(int(torch.searchsorted(cum, target.reshape(1)).item()) + 1, s.numel())
    kept = s[:r] * (total / s[:r].sum())
    return (u[:, :r] * kept) @ vh[:r]


@register(
    "star",
    params=(
        Param("weight", float, 1.0, "per-model weight in the average", per_model=True),
        Param("eta", float, 40.0, "percent of the nuclear norm kept", minimum=1e-9, maximum=100.0),
    ),
    family=_FAMILY,
    paper="Lee et al. 2025, STAR: Spectral Truncation and Rescale for Model Merging (NAACL)",
    formula="θ = θ_0 + Σ_i w_i STAR_η(τ_i) / Σ_i w_i",
    needs_base=True,
)
def star(tm: TensorMerge) -> torch.Tensor:
    """Spectral truncation and nuclear-norm rescale of each task vector, then their mean.

    1-D tensors have no spectrum: their task vectors are averaged untouched.
    """
    base = need_base(tm, "star")
    w = normalized(model_vector(tm, "weight"), "star")
    tv = tm.task_vectors()
    if tv.dim() < 3:
        return base + combine(w, tv)
    eta = float(tm.params["eta"])
    shape = tuple(tv.shape[1:])
    parts = torch.stack([star_truncate(as_matrix(t), eta).reshape(shape) for t in tv])
    return base + combine(w, parts.to(torch.float32))


# -- KnOTS -------------------------------------------------------------------------------------


@register(
    "svd_knot_tying",
    params=(
        Param(
            "density",
            float,
            0.2,
            "TIES top-k fraction kept per model in the aligned space",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("lambda", float, 1.0, "scaling of the merged update"),
        Param(
            "tolerance", float, 1e-5, "singular values at or below this are dropped", minimum=0.0
        ),
    ),
    family=_FAMILY,
    paper="Stoica et al. 2025, Model merging with SVD to tie the KnOTS (ICLR)",
    formula="[τ_1..τ_k] = UΣ[V_1ᵀ..V_kᵀ]; θ = θ_0 + λ U · TIES(ΣV_1ᵀ..ΣV_kᵀ)",
    needs_base=True,
)
def svd_knot_tying(tm: TensorMerge) -> torch.Tensor:
    """KnOTS-TIES: align task updates by one joint SVD, TIES-merge their coordinates, rebuild.

    The updates are concatenated column-wise, so U Σ is a basis shared by all tasks and
    Σ V_iᵀ holds task i's coordinates in it; those are merged with TIES (top-k per task,
    elected sign, disjoint mean) and mapped back by U. The reference trims each task's
    coordinates over the whole model; here over this tensor. 1-D tensors are TIES-merged
    directly, as the reference does for parameters outside its SVD.
    """
    base = need_base(tm, "svd_knot_tying")
    tv = tm.task_vectors()
    density = float(tm.params["density"])
    lam = float(tm.params["lambda"])
    ones = torch.ones(tm.k, dtype=torch.float64)
    if tv.dim() < 3:
        return base + lam * ties_merge(tv, density, ones)
    mats = [as_matrix(t).to(torch.float64) for t in tv]
    width = mats[0].shape[1]
    u, s, vh = svd(torch.cat(mats, dim=1))
    keep = s > float(tm.params["tolerance"])
    u, s, vh = u[:, keep], s[keep], vh[keep]
    if s.numel() == 0:
        return base.clone()
    coords = torch.stack([s.unsqueeze(1) * vh[:, i * width : (i + 1) * width] for i in range(tm.k)])
    merged = ties_merge(coords.to(torch.float32), density, ones).to(torch.float64)
    update = (u @ merged).reshape(tv.shape[1:])
    return base + lam * update.to(torch.float32)


# -- AdaRank -----------------------------------------------------------------------------------


@register(
    "adarank",
    params=(
        Param(
            "base_mode",
            str,
            "ta",
            "origin: 'ta' = base, 'cart' = base + mean τ (CART)",
            choices=("ta", "cart"),
        ),
    ),
    family=_FAMILY,
    paper="Lee et al. 2025, AdaRank: Adaptive Rank Pruning for Enhanced Model Merging",
    formula="θ = θ_o + Σ_i λ_i U_i diag(B_i ⊙ σ_i) V_iᵀ",
    needs_base=True,
    needs_extras=("rank_mask", "coefficient"),
)
def adarank(tm: TensorMerge) -> torch.Tensor:
    """AdaRank: each task vector keeps only the singular components its learned mask selects.

    AdaRank learns binary masks B_i over the singular components of each task vector (and the
    coefficients λ_i) by entropy minimisation on unlabeled test data; that needs a model
    forward, so both come in as extras: `rank_mask` (length min(m, n), entries > 0.5 keep a
    component) and `coefficient` (a scalar). `learn_adarank` in `crdtd.strategies.adaptive`
    learns them from a loss you supply. With `base_mode='cart'` the origin is θ_0 + mean τ
    and task vectors are centred on it (CART). 1-D tensors: θ_o + Σ λ_i τ_i.
    """
    base = need_base(tm, "adarank")
    origin = base
    if tm.params["base_mode"] == "cart":
        origin = base + tm.task_vectors().mean(dim=0)
    tv = tm.inputs - origin.unsqueeze(0)
    out = origin.to(torch.float64).clone()
    for i in range(tm.k):
        lam = need_extra(tm, i, "coefficient", "adarank")
        if lam.numel() != 1:
            raise StrategyParamError(
                f"adarank: extra 'coefficient' of model {i}, tensor {tm.name!r} must be a "
                f"scalar, got shape {list(lam.shape)}"
            )
        if tv.dim() < 3:
            out += float(lam) * tv[i].to(torch.float64)
            continue
        u, s, vh = svd(as_matrix(tv[i]))
        mask = need_extra(tm, i, "rank_mask", "adarank")
        check_shape(
            mask, (s.numel(),), f"adarank: extra 'rank_mask' of model {i}, tensor {tm.name!r}"
        )
        keep = (mask.to(torch.float64) > 0.5).to(torch.float64)
        out += float(lam) * ((u * (keep * s)) @ vh).reshape(tv.shape[1:])
    return out.to(torch.float32)


# -- DOP (dual orthogonal projection) --------------------------------------------------------

Subspace = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _dop_subspace(tv: torch.Tensor, epsilon: float) -> Subspace:
    """Top singular triplets `(U_r, σ_r, V_r)` of a task matrix: the first r with cumulative
    share of Σσ below ε (the reference's `searchsorted(cumsum/sum, ε)`)."""
    u, s, vh = svd(tv)
    total = s.sum()
    if float(total) == 0.0:
        r = 0
    else:
        ratio = torch.cumsum(s, dim=0) / total
        r = int(torch.searchsorted(ratio, ratio.new_tensor([epsilon])).item())
    return u[:, :r], s[:r], vh[:r].T


def _dop_loss_grad(delta: torch.Tensor, sub: Subspace, space: str) -> tuple[float, torch.Tensor]:
    """L = ‖diag(σ) Uᵀ Δ‖² (+) ‖Δ V diag(σ)‖² and ∂L/∂W = 2 U σ² Uᵀ Δ (+) 2 Δ V σ² Vᵀ.

    Computed through the thin factors (4 products of size m·r·n), never the m×m or n×n
    projectors.
    """
    u, s, v = sub
    s2 = s * s
    loss = delta.new_zeros(())
    grad = torch.zeros_like(delta)
    if space in ("uv", "u"):
        left = u.T @ delta
        loss = loss + (s2.unsqueeze(1) * left * left).sum()
        grad = grad + 2 * (u @ (s2.unsqueeze(1) * left))
    if space in ("uv", "v"):
        right = delta @ v
        loss = loss + (right * right * s2.unsqueeze(0)).sum()
        grad = grad + 2 * ((right * s2.unsqueeze(0)) @ v.T)
    return float(loss), grad


def _min_norm_pair(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """Weight on g1 of the min-norm point of the segment [g2, g1] (Sener & Koltun 2018)."""
    v11, v12, v22 = float((g1 * g1).sum()), float((g1 * g2).sum()), float((g2 * g2).sum())
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return -(v12 - v22) / (v11 + v22 - 2 * v12)


def _dop_pair_mgda(
    old: torch.Tensor,
    new: torch.Tensor,
    subspaces: list[Subspace],
    params: dict[str, float | int | str],
) -> torch.Tensor:
    """DOP's optimiser: Adam on the two projected losses, weighted by EMA-smoothed MGDA.

    Per step: each loss's gradient, normalised by the loss, feeds the two-task min-norm
    solver; its EMA (started at (α, 1−α)) weights the losses whose summed gradient Adam
    follows. Gradients are analytic; float32 as in the reference.
    """
    targets = [old.to(torch.float32), new.to(torch.float32)]
    subs = [(u.float(), s.float(), v.float()) for u, s, v in subspaces]
    space = str(params["space"])
    w = ((targets[0] + targets[1]) / 2).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=float(params["lr"]))
    alpha, beta = float(params["alpha"]), float(params["ema_beta"])
    ema = [alpha, 1.0 - alpha]
    for _ in range(int(params["iterations"])):
        with torch.no_grad():
            pairs = [_dop_loss_grad(w - t, sub, space) for t, sub in zip(targets, subs)]
            normed = [g / value if value > 0 else torch.zeros_like(g) for value, g in pairs]
            gamma = _min_norm_pair(normed[0], normed[1])
            ema = [beta * ema[0] + (1 - beta) * gamma, beta * ema[1] + (1 - beta) * (1 - gamma)]
            w.grad = ema[0] * pairs[0][1] + ema[1] * pairs[1][1]
        opt.step()
    return w.detach().to(torch.float64)


def _range_eig(
    factors: list[torch.Tensor], scales: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of Σ_i F_i diag(scale_i) F_iᵀ on its range: thin basis, never the full matrix."""
    stacked = torch.cat(factors, dim=1)
    if stacked.shape[1] == 0:
        return stacked.new_zeros(0), stacked
    q, r_diag, _ = torch.linalg.svd(stacked, full_matrices=False)
    q = q[:, r_diag > r_diag.max() * max(stacked.shape) * torch.finfo(torch.float64).eps]
    small = sum((q.T @ f) * sc @ (q.T @ f).T for f, sc in zip(factors, scales))
    assert isinstance(small, torch.Tensor)
    vals, vecs = torch.linalg.eigh((small + small.T) / 2)
    return vals.clamp_min(0.0), q @ vecs


def _dop_pair_closed_form(
    old: torch.Tensor, new: torch.Tensor, subspaces: list[Subspace], alpha: float, space: str
) -> torch.Tensor:
    """Exact minimiser of α L_old + (1−α) L_new closest to the mean.

    Stationarity is the Sylvester equation P X + X Q = R for X = W − mean, with
    P = Σ c_i U_i σ_i² U_iᵀ, Q = Σ c_i V_i σ_i² V_iᵀ. It is solved blockwise on the ranges of
    P and Q (thin eigenbases) and their complements; pairs of null directions get 0.
    """
    coefs = (alpha, 1.0 - alpha)
    start = (old + new) / 2
    use_u, use_v = space in ("uv", "u"), space in ("uv", "v")
    scales = [c * s * s for c, (_, s, _) in zip(coefs, subspaces)]
    if use_u:
        pv, pe = _range_eig([u for u, _, _ in subspaces], scales)
    else:
        pv, pe = start.new_zeros(0), start.new_zeros(start.shape[0], 0)
    if use_v:
        qv, qe = _range_eig([v for _, _, v in subspaces], scales)
    else:
        qv, qe = start.new_zeros(0), start.new_zeros(start.shape[1], 0)
    rhs = torch.zeros_like(start)
    for c, target, (u, s, v) in zip(coefs, (old, new), subspaces):
        d = target - start
        if use_u:
            rhs += c * (u @ ((s * s).unsqueeze(1) * (u.T @ d)))
        if use_v:
            rhs += c * (((d @ v) * (s * s).unsqueeze(0)) @ v.T)
    tol = relative_tolerance(torch.cat([pv, qv]), max(start.shape))
    r_pe = pe.T @ rhs
    r11 = r_pe @ qe
    denom = pv.unsqueeze(1) + qv.unsqueeze(0)
    x11 = torch.where(denom > tol, r11 / torch.where(denom > tol, denom, 1.0), 0.0)
    inv_p = torch.where(pv > tol, 1.0 / torch.where(pv > tol, pv, 1.0), 0.0)
    inv_q = torch.where(qv > tol, 1.0 / torch.where(qv > tol, qv, 1.0), 0.0)
    x12 = inv_p.unsqueeze(1) * (r_pe - r11 @ qe.T)
    x21 = (rhs @ qe - pe @ r11) * inv_q.unsqueeze(0)
    return start + pe @ x11 @ qe.T + pe @ x12 + x21 @ qe.T


@register(
    "dual_projection",
    params=(
        Param(
            "solver",
            str,
            "mgda",
            "'mgda' (paper: Adam + MGDA weights) or 'closed_form'",
            choices=("mgda", "closed_form"),
        ),
        Param(
            "epsilon",
            float,
            0.99999,
            "share of Σσ spanned by each task's subspace",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "alpha",
            float,
            0.8,
            "weight of the older (merged) model: EMA start / fixed weight",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("ema_beta", float, 0.999, "EMA decay of the MGDA weights", minimum=0.0, maximum=1.0),
        Param("lr", float, 1e-4, "Adam learning rate", minimum=0.0),
        Param("iterations", int, 200, "Adam steps per merge", minimum=0),
        Param(
            "space",
            str,
            "uv",
            "project on left (u), right (v) or both (uv) subspaces",
            choices=("uv", "u", "v"),
        ),
    ),
    family=_FAMILY,
    paper="Yang et al. 2025, Continual Model Merging without Data: Dual Projections for "
    "Balancing Stability and Plasticity (NeurIPS)",
    formula="W_t = argmin_W {‖S_a U_aᵀ(W−W_a)‖² + ‖(W−W_a)V_a S_a‖², same for W_b} (MGDA)",
    needs_base=True,
)
def dual_projection(tm: TensorMerge) -> torch.Tensor:
    """DOP continual merging: fold the inputs in one at a time, in row (content-id) order.

    Each step merges the running model W_a with the next W_b: both task vectors are reduced
    to their top singular subspaces (share ε of Σσ), and W minimises the energy of W − W_a
    and W − W_b inside those subspaces. 'mgda' follows the paper (Adam from the mean, the two
    losses weighted by an EMA of the min-norm MGDA solution started at α); 'closed_form'
    solves the fixed-weight objective α L_a + (1−α) L_b exactly (the paper's non-MGDA
    variant, which it optimises with Adam). 1-D tensors are averaged pairwise at each step,
    as the reference does for non-linear modules.
    """
    base = need_base(tm, "dual_projection")
    merged = tm.inputs[0].to(torch.float64)
    if tm.inputs.dim() < 3:
        for t in range(1, tm.k):
            merged = (merged + tm.inputs[t].to(torch.float64)) / 2
        return merged.to(torch.float32)
    shape = tuple(tm.inputs.shape[1:])
    base_m = as_matrix(base).to(torch.float64)
    merged = as_matrix(merged)
    eps = float(tm.params["epsilon"])
    space = str(tm.params["space"])
    for t in range(1, tm.k):
        new = as_matrix(tm.inputs[t]).to(torch.float64)
        subs = [_dop_subspace(merged - base_m, eps), _dop_subspace(new - base_m, eps)]
        if tm.params["solver"] == "closed_form":
            merged = _dop_pair_closed_form(merged, new, subs, float(tm.params["alpha"]), space)
        else:
            merged = _dop_pair_mgda(merged, new, subs, dict(tm.params))
    return merged.reshape(shape).to(torch.float32)
