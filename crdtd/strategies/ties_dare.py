"""The TIES / DARE family: sparsify each task vector, optionally elect signs, then combine.

One engine (`_gta`) serves every method, as in the generalised task arithmetic of the
popular merge tools: τ_i = θ_i − θ_base; τ̂_i = sparsify(τ_i); with consensus, each entry's
sign is elected from Σ_i w_i τ̂_i and only agreeing entries are averaged (the disjoint
mean); θ = θ_base + λ · mix. Magnitude selection uses order statistics (`_select`), never a
full sort; random masks come only from the content-seeded `tm.generator` (DARE: through
`chunk_seed`).

`ties` is two-phase (`Strategy.prepare`): its per-model thresholds are found in one streamed
pass, after which each block is merged on its own with the same bytes. `dare_linear` and
`dare_ties` draw each model's mask chunk by chunk of the flat tensor, every chunk from its own
content-derived seed (`chunk_seed`, numpy's PCG64), so they are elementwise: a block draws what the
whole tensor draws there, with no pass before it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies._common import per_model, require_base
from crdtd.strategies._gta import (
    KEEP_ALL,
    Draws,
    Keep,
    Sparsifier,
    chunks,
    combine,
    decide_keeps,
    l1_rescaled,
    rowsum,
    task_vector_chunk,
    top_magnitude_keeps,
)
from crdtd.strategies._select import band_mask, keep_count, top_mask
from crdtd.strategies.base import Param, TensorBlocks, TensorMerge, chunk_seed
from crdtd.strategies.registry import register

WEIGHT = Param("weight", float, 1.0, "per-model weight", per_model=True)
DENSITY = Param(
    "density", float, 1.0, "fraction of each task vector kept", 0.0, 1.0, per_model=True
)
LAMBDA = Param("lambda", float, 1.0, "scale applied to the merged task vector")
GAMMA = Param(
    "gamma", float, 0.01, "fraction of largest-magnitude entries removed", 0.0, 1.0, per_model=True
)
EPSILON = Param(
    "epsilon", float, 0.15, "spread of keep probabilities around density", 0.0, 0.5, per_model=True
)


def _normalize(default: bool) -> Param:
    return Param("normalize", bool, default, "divide by the sum of (agreeing) weights")


def _rescale(default: bool) -> Param:
    return Param("rescale", bool, default, "rescale kept entries to undo the pruning")


def _ratio(a: torch.Tensor, kept_l1: float) -> float:
    """Factor restoring the L1 norm of |τ| = `a` after pruning (1.0 when either is ~0)."""
    before = float(a.sum(dtype=torch.float64))
    return before / kept_l1 if before >= 1e-8 and kept_l1 >= 1e-8 else 1.0


def _density(tm: TensorMerge, i: int) -> float:
    return float(per_model(tm, "density", 1.0)[i])


def _uniform(tm: TensorMerge, n: int, device: torch.device) -> torch.Tensor:
    """n U[0,1) draws, always from the CPU generator (identical on every device)."""
    return torch.rand(n, generator=tm.generator, dtype=torch.float32).to(device)


KeepRule = Callable[[TensorMerge, torch.Tensor], list[Keep]]


def magnitude_state(blocks: TensorBlocks) -> list[Keep]:
    """TIES trim, decided over the whole tensor: keep the top-`density` entries of each |τ_i|
    (thresholds and tied positions); L1-rescaled when `rescale`. The `prepare` of `ties`."""
    n = blocks.numel
    density = per_model(blocks, "density", 1.0)
    counts = [keep_count(float(density[i]), n) for i in range(blocks.k)]
    keeps = top_magnitude_keeps(blocks, counts)
    return l1_rescaled(blocks, keeps) if blocks.params.get("rescale", False) else keeps


def magnitude_keeps(tm: TensorMerge, base: torch.Tensor) -> list[Keep]:
    """TIES trim for `tm`: its prepared state when it is a block, else decided over `tm`."""
    return list(tm.state) if tm.state is not None else magnitude_state(TensorBlocks.of(tm))


def random_keeps(tm: TensorMerge, base: torch.Tensor) -> list[Keep]:
    """DARE's keeps for `tm` (a whole tensor or a block): each model keeps an entry with
    probability `density` (scaled by 1/density when `rescale`).

    Entry j keeps when the j-th 16-bit word of its chunk's stream is below ⌊density·2¹⁶⌋
    (so the keep probability is density to within 2⁻¹⁶); the stream is PCG64 (numpy; its
    raw output is fixed across versions) seeded with `chunk_seed(tm.generator, model,
    chunk)`, four entries per 64-bit draw. The flags are drawn chunk by chunk where
    `combine` applies them (`Draws`).
    """
    n, off = base.numel(), tm.offset
    keeps = []
    for i in range(tm.k):
        density = _density(tm, i)
        if density >= 1.0:
            keeps.append(KEEP_ALL)
            continue
        if density <= 0.0:
            keeps.append(Keep(torch.zeros(n, dtype=torch.bool, device=base.device), origin=off))
            continue
        # kept entries are multiplied by 1 and then by the factor 1/density (1 without
        # rescale), dropped ones by 0: the bytes of a 0/1 mask followed by the scale
        factor = float(np.float32(1.0 / density if tm.params.get("rescale", True) else 1.0))
        below = min(int(density * 2.0**16), 2**16 - 1)
        draws = Draws(functools.partial(chunk_seed, tm.generator, i), below)
        keeps.append(Keep(scale=factor, draws=draws))
    return keeps


def sparsify_outliers(tm: TensorMerge, tv: torch.Tensor, i: int) -> Keep:
    """Breadcrumbs: drop the `gamma` largest |τ| and the smallest, keeping `density` overall."""
    density = _density(tm, i)
    if density >= 1.0:
        return KEEP_ALL
    gamma = float(per_model(tm, "gamma", 0.01)[i])
    a = tv.abs_()
    n = a.numel()
    target = keep_count(density, n)
    n_top = min(int(gamma * n + 1e-9), n - target)
    n_bot = n - target - n_top
    mask = band_mask(a, n_bot, n - n_top)
    if not tm.params.get("rescale", False):
        return Keep(mask)
    return Keep(mask, _ratio(a, float((a * mask).sum(dtype=torch.float64))))


def della_keep_probabilities(tv: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA MAGPRUNE keep probabilities: density−ε … density+ε by magnitude rank per row."""
    rows = tv.reshape(1, -1) if tv.dim() < 2 else tv.reshape(tv.shape[0], -1)
    d = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(d, device=rows.device).expand_as(order))
    rank_norm = ranks.to(torch.float32) / (d - 1) if d > 1 else torch.full_like(rows, 0.5)
    return ((density - epsilon) + 2.0 * epsilon * rank_norm).reshape(tv.shape)


def sparsify_della(tm: TensorMerge, tv: torch.Tensor, i: int) -> Keep:
    """DELLA: drop entries with rank-dependent probability; rescale each by 1/p_keep."""
    density = _density(tm, i)
    if density >= 1.0:
        return KEEP_ALL
    if density <= 0.0:
        return Keep(torch.zeros_like(tv, dtype=torch.bool))
    epsilon = float(per_model(tm, "epsilon", 0.15)[i])
    if density - epsilon <= 0.0 or density + epsilon > 1.0:
        raise StrategyParamError(
            f"tensor {tm.name!r}, model {i}: parameter 'epsilon'={epsilon} needs "
            f"density ± epsilon within (0, 1] (density={density})"
        )
    shape = tm.inputs.shape[1:]
    p_keep = della_keep_probabilities(tv.reshape(shape), density, epsilon).reshape(-1)
    mask = _uniform(tm, tv.numel(), tv.device) < p_keep
    return Keep(mask, p_keep.reciprocal_() if tm.params.get("rescale", True) else 1.0)


def each(sparsify: Sparsifier) -> KeepRule:
    """The keep rule running a per-model `sparsify` on each whole task vector in turn."""
    return lambda tm, base: decide_keeps(tm, base, sparsify)


def _gta(tm: TensorMerge, strategy: str, keeps: KeepRule, consensus: bool) -> torch.Tensor:
    """Generalised task arithmetic: sparsify, weight, (elect sign), combine, scale, add base."""
    base = require_base(tm, strategy)
    return combine(
        tm,
        base,
        keeps(tm, base),
        per_model(tm, "weight", 1.0),
        consensus=consensus,
        normalize=bool(tm.params.get("normalize", False)),
        lam=float(tm.params.get("lambda", 1.0)),
    )


_TIES_PAPER = "Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023"
_DARE_PAPER = (
    "Yu et al., Language Models are Super Mario: Absorbing Abilities from Homologous Models "
    "as a Free Lunch, ICML 2024"
)
_BREADCRUMBS_PAPER = (
    "Davari & Belilovsky, Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse "
    "Masks, ECCV 2024"
)
_DELLA_PAPER = (
    "Deep et al., DELLA-Merging: Reducing Interference in Model Merging through "
    "Magnitude-Based Sampling, arXiv 2406.11617, 2024"
)
_DISJOINT = (
    "γ = sgn(Σ_i w_i τ̂_i); A = {i : sgn(w_i τ̂_i) = γ}; "
    "θ = θ_base + λ Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i (÷ only when normalize)"
)
_SUM = "θ = θ_base + λ Σ_i w_i τ̂_i (÷ Σ_i w_i when normalize)"


@register(
    "ties",
    params=(WEIGHT, DENSITY, LAMBDA, _normalize(True), _rescale(False)),
    paper=_TIES_PAPER,
    formula="τ̂_i = top-density(|τ_i|) of τ_i = θ_i − θ_base; " + _DISJOINT,
    needs_base=True,
    prepare=magnitude_state,
    prepare_samples=True,
    propagates_nonfinite=True,
    raw_inputs=True,
)
def ties(tm: TensorMerge) -> torch.Tensor:
    """TIES: trim to top-`density` magnitudes, elect sign, disjoint mean (normalize=true)."""
    return _gta(tm, "ties", magnitude_keeps, consensus=True)


@register(
    "dare_linear",
    params=(WEIGHT, DENSITY, LAMBDA, _normalize(False), _rescale(True)),
    paper=_DARE_PAPER,
    formula="τ̂_i = τ_i ⊙ Bernoulli(density) / density; " + _SUM,
    needs_base=True,
    stochastic=True,
    elementwise=True,
    chunk_seeded=True,
    propagates_nonfinite=True,
    raw_inputs=True,
)
def dare_linear(tm: TensorMerge) -> torch.Tensor:
    """DARE: random drop with keep-probability `density`, rescale by 1/density, then sum."""
    return _gta(tm, "dare_linear", random_keeps, consensus=False)


@register(
    "dare_ties",
    params=(WEIGHT, DENSITY, LAMBDA, _normalize(False), _rescale(True)),
    paper=_DARE_PAPER,
    formula="τ̂_i = τ_i ⊙ Bernoulli(density) / density; " + _DISJOINT,
    needs_base=True,
    stochastic=True,
    elementwise=True,
    chunk_seeded=True,
    propagates_nonfinite=True,
    raw_inputs=True,
)
def dare_ties(tm: TensorMerge) -> torch.Tensor:
    """DARE drop-and-rescale followed by TIES sign election and disjoint combination."""
    return _gta(tm, "dare_ties", random_keeps, consensus=True)


@register(
    "breadcrumbs",
    params=(WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(False), _rescale(False)),
    paper=_BREADCRUMBS_PAPER,
    formula="τ̂_i keeps |τ_i| ranks in [n(1−density−gamma), n(1−gamma)); " + _SUM,
    needs_base=True,
)
def breadcrumbs(tm: TensorMerge) -> torch.Tensor:
    """Model Breadcrumbs: drop the `gamma` largest and the small entries; keep `density`."""
    return _gta(tm, "breadcrumbs", each(sparsify_outliers), consensus=False)


@register(
    "breadcrumbs_ties",
    params=(WEIGHT, DENSITY, GAMMA, LAMBDA, _normalize(False), _rescale(False)),
    paper=_BREADCRUMBS_PAPER,
    formula="τ̂_i keeps |τ_i| ranks in [n(1−density−gamma), n(1−gamma)); " + _DISJOINT,
    needs_base=True,
)
def breadcrumbs_ties(tm: TensorMerge) -> torch.Tensor:
    """Breadcrumbs sparsification followed by TIES sign election and disjoint combination."""
    return _gta(tm, "breadcrumbs_ties", each(sparsify_outliers), consensus=True)


@register(
    "della",
    params=(WEIGHT, DENSITY, EPSILON, LAMBDA, _normalize(True), _rescale(True)),
    paper=_DELLA_PAPER,
    formula="p_keep = density − ε + 2ε·rank(|τ|)/(d−1) per row; τ̂ = τ ⊙ Bernoulli(p_keep) / p_keep; "
    + _DISJOINT,
    needs_base=True,
    stochastic=True,
)
def della(tm: TensorMerge) -> torch.Tensor:
    """DELLA: magnitude-ranked stochastic drop (MAGPRUNE), sign election, disjoint mean."""
    return _gta(tm, "della", each(sparsify_della), consensus=True)


@register(
    "della_linear",
    params=(WEIGHT, DENSITY, EPSILON, LAMBDA, _normalize(False), _rescale(True)),
    paper=_DELLA_PAPER,
    formula="p_keep = density − ε + 2ε·rank(|τ|)/(d−1) per row; τ̂ = τ ⊙ Bernoulli(p_keep) / p_keep; "
    + _SUM,
    needs_base=True,
    stochastic=True,
)
def della_linear(tm: TensorMerge) -> torch.Tensor:
    """DELLA's MAGPRUNE drop followed by a plain weighted sum (no sign election)."""
    return _gta(tm, "della_linear", each(sparsify_della), consensus=False)


@register(
    "sce",
    params=(Param("select_topk", float, 1.0, "fraction of high-variance entries kept", 0.0, 1.0),),
    paper="Wan et al., FuseChat: Knowledge Fusion of Chat Models (SCE merging), arXiv 2408.07990, 2024",
    formula="Select: keep the top select_topk of nonzero Var_i(τ_i); Calculate: "
    "w_i = mean(τ_i²)/Σ_j mean(τ_j²); Erase: A = {i : sgn τ_i = sgn Σ_j τ_j}; "
    "θ = θ_base + Σ_{i∈A} w_i τ_i / Σ_{i∈A} w_i",
    needs_base=True,
)
def sce(tm: TensorMerge) -> torch.Tensor:
    """SCE: select high-variance entries, weight models by mean τ², erase minority signs."""
    base = require_base(tm, "sce")
    n = base.numel()
    topk = float(tm.params.get("select_topk", 1.0))
    mask: torch.Tensor | None = None
    if topk < 1.0 and n > 0:
        var = torch.empty(n, dtype=torch.float32, device=base.device)
        for c0, c1 in chunks(n):
            t = task_vector_chunk(tm, base, c0, c1)
            t -= rowsum(t) / tm.k
            var[c0:c1] = rowsum(t.square_()) / tm.k
        mask = top_mask(var, int(topk * int(torch.count_nonzero(var)) + 1e-9))
    energy = torch.zeros(tm.k, dtype=torch.float64)
    for c0, c1 in chunks(n):
        t = task_vector_chunk(tm, base, c0, c1)
        if mask is not None:
            t.mul_(mask[c0:c1])
        energy += t.pow(2).sum(dim=1, dtype=torch.float64).cpu()
    total = float(energy.sum())
    w = energy / total if total > 0 else torch.full((tm.k,), 1.0 / tm.k, dtype=torch.float64)
    # Sign election uses the unweighted τ (the paper's Erase), the mean uses the weights.
    wcol = w.to(torch.float32).to(base.device).view(-1, 1)
    flat_base = base.reshape(-1)
    out = torch.empty_like(flat_base)
    for c0, c1 in chunks(n):
        t = task_vector_chunk(tm, base, c0, c1)
        if mask is not None:
            t.mul_(mask[c0:c1])
        gamma = torch.copysign(torch.ones_like(t[0]), rowsum(t))
        t.mul_(gamma).clamp_(min=0.0).mul_(wcol)
        mixed = rowsum(t)
        divisor = rowsum(t.sign_().mul_(wcol))
        divisor.masked_fill_(divisor == 0, 1.0)
        torch.addcmul(flat_base[c0:c1], mixed / divisor, gamma, out=out[c0:c1])
    return out.reshape(base.shape)
