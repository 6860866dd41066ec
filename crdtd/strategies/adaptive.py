"""Merges whose recipe is learned or searched: AdaMerging, DAM, weight scope alignment,
representation surgery, evolutionary (CMA-ES) and genetic merging.

What these papers learn from data (coefficients, masks, statistics) arrives as extras; the
learning loops that need a model forward live in `_h3_learning` and are re-exported here.
The searches score candidates with a registered fitness function and draw randomness only
from the strategy's content-seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable

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
)
from crdtd.strategies._h3_fitness import (
    FitnessFn,
    fitness_names,
    get_fitness,
    gram_regression,
    register_fitness,
)
from crdtd.strategies._h3_learning import (
    dam_activation,
    entropy_loss,
    learn_adamerging,
    learn_adarank,
    learn_dam,
)
from crdtd.strategies._h3_linalg import psd_solve_right, psd_sqrt, svd
from crdtd.strategies._h3_search import cma_es, genetic
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

__all__ = [
    "FitnessFn",
    "entropy_loss",
    "fitness_names",
    "gram_regression",
    "learn_adamerging",
    "learn_adarank",
    "learn_dam",
    "register_fitness",
    "surgery_projection",
]

_FAMILY = "papers"


def _scalar_extra(tm: TensorMerge, i: int, key: str, strategy: str) -> float:
    value = need_extra(tm, i, key, strategy)
    if value.numel() != 1:
        raise StrategyParamError(
            f"{strategy}: extra {key!r} of model {i}, tensor {tm.name!r} must be a scalar, "
            f"got shape {list(value.shape)}"
        )
    return float(value)


@register(
    "ada_merging",
    params=(),
    family=_FAMILY,
    paper="Yang et al. 2024, AdaMerging: Adaptive Model Merging for Multi-Task Learning (ICLR)",
    formula="θ = θ_0 + Σ_i λ_i^l τ_i^l (λ learned by test-time entropy minimisation)",
    needs_base=True,
    needs_extras=("coefficient",),
)
def ada_merging(tm: TensorMerge) -> torch.Tensor:
    """AdaMerging: task arithmetic with learned per-model, per-tensor coefficients λ_i.

    λ is what AdaMerging learns by minimising prediction entropy on unlabeled test data; it
    arrives as extra `coefficient` (a scalar per model per tensor; `learn_adamerging` produces
    them from a loss you supply). Task-wise AdaMerging is the same value for every tensor.
    """
    base = need_base(tm, "ada_merging")
    lam = torch.tensor(
        [_scalar_extra(tm, i, "coefficient", "ada_merging") for i in range(tm.k)],
        dtype=torch.float64,
    )
    return base + combine(lam, tm.task_vectors())


@register(
    "dam",
    params=(
        Param(
            "non_linearity",
            str,
            "none",
            "applied to the coefficients before merging",
            choices=("none", "tanh", "sigmoid", "relu"),
        ),
    ),
    family=_FAMILY,
    paper="Gauthier-Caron et al. 2024, Merging in a Bottle: Differentiable Adaptive Merging",
    formula="θ = Σ_i f(c_i) ⊙ θ_i, c_i one coefficient per column (last dimension)",
    needs_extras=("dam_coefficient",),
)
def dam(tm: TensorMerge) -> torch.Tensor:
    """DAM: each model's weights scaled column-wise by learned coefficients, then summed.

    The coefficients c_i (length = the tensor's last dimension, or a scalar) are trained
    against the models' outputs on data; they arrive as extra `dam_coefficient`
    (`learn_dam` trains them from a loss you supply). `non_linearity` must match training.
    """
    shape = tuple(tm.inputs.shape[1:])
    act = dam_activation(str(tm.params["non_linearity"]))
    out = tm.inputs.new_zeros(shape)
    for i in range(tm.k):
        c = need_extra(tm, i, "dam_coefficient", "dam").to(torch.float32)
        if c.numel() != 1:
            cols = shape[-1] if shape else 1
            check_shape(
                c.reshape(-1),
                (cols,),
                f"dam: extra 'dam_coefficient' of model {i}, tensor {tm.name!r}",
            )
            c = c.reshape(-1)
        else:
            c = c.reshape(())
        out = out + act(c) * tm.inputs[i]
    return out


@register(
    "weight_scope_alignment",
    params=(Param("weight", float, 1.0, "per-model weight", per_model=True),),
    family=_FAMILY,
    paper="Xu et al. 2024, Weight Scope Alignment: A Frustratingly Easy Method for Model "
    "Merging (ECAI)",
    formula="θ = Σ_i w_i [μ* + (σ*/σ_i)(θ_i − μ_i)], μ* = Σ w_i μ_i, σ* = Σ w_i σ_i",
)
def weight_scope_alignment(tm: TensorMerge) -> torch.Tensor:
    """Align each model's per-tensor weight scope (mean, std) to a fused scope, then average.

    WSA's main tool is a training-time regulariser pulling each layer's weight distribution
    towards a target Gaussian; a merge cannot train. This implements its merge-time part as
    documented here: each tensor's scope (μ_i, σ_i) is fused into one target (μ*, σ*) by the
    weighted mean of the scope parameters, every model is standardised onto it, and the
    aligned weights are averaged. A constant tensor (σ_i = 0) maps to μ*. Interpretation:
    the paper's exact fusion rule could not be checked; this is the plain weighted mean.
    """
    x = tm.inputs.to(torch.float64).reshape(tm.k, -1)
    w = normalized(model_vector(tm, "weight"), "weight_scope_alignment").to(x.device)
    mu = x.mean(dim=1)
    sigma = x.std(dim=1, unbiased=False) if x.shape[1] > 1 else x.new_zeros(tm.k)
    mu_t = float((w * mu).sum())
    sigma_t = float((w * sigma).sum())
    ratio = torch.where(sigma > 0, sigma_t / torch.where(sigma > 0, sigma, 1.0), 0.0)
    aligned = mu_t + ratio.unsqueeze(1) * (x - mu.unsqueeze(1))
    return (w.unsqueeze(1) * aligned).sum(dim=0).reshape(tm.inputs.shape[1:]).to(torch.float32)


def surgery_projection(
    merged: torch.Tensor, targets: list[torch.Tensor], grams: list[torch.Tensor], rank: int
) -> torch.Tensor:
    """The rank-`rank` P minimising Σ_i tr(((I−P)W − W_i) G_i ((I−P)W − W_i)ᵀ), in float64.

    With K = W G Wᵀ (G = Σ G_i) and R = Σ_i W_i G_i Wᵀ the unconstrained optimum is
    P* = I − R K⁺; the rank constraint is a reduced-rank regression: P = [P* K^½]_r K^{+½}.
    """
    w = merged.to(torch.float64)
    out = w.shape[0]
    g_sum = torch.stack([g.to(torch.float64) for g in grams]).sum(dim=0)
    k_mat = w @ g_sum @ w.T
    r_mat = sum(t.to(torch.float64) @ g.to(torch.float64) @ w.T for t, g in zip(targets, grams))
    assert isinstance(r_mat, torch.Tensor)
    p_star = torch.eye(out, dtype=torch.float64, device=w.device) - psd_solve_right(r_mat, k_mat)
    root, inv_root = psd_sqrt(k_mat)
    u, s, vh = svd(p_star @ root)
    r = min(rank, s.numel())
    return ((u[:, :r] * s[:r]) @ vh[:r]) @ inv_root


@register(
    "representation_surgery",
    params=(
        Param("lambda", float, 0.3, "task-arithmetic scale of the merge being corrected"),
        Param("rank", int, 16, "rank of the surgery correction", minimum=1),
    ),
    family=_FAMILY,
    paper="Yang et al. 2024, Representation Surgery for Multi-Task Model Merging (ICML)",
    formula="W = (I − P) W_ta, P = argmin_{rank ≤ r} Σ_i ‖X_i((I−P)W_ta − W_i)ᵀ‖²",
    needs_base=True,
    needs_extras=("gram",),
)
def representation_surgery(tm: TensorMerge) -> torch.Tensor:
    """Task arithmetic followed by a low-rank correction of the merged layer's outputs.

    The paper appends a small module z − W_up·ReLU(W_down·z) per task after the merged
    encoder, trained with an L1 loss to pull merged representations towards each model's;
    a weight merge cannot hold an extra non-linear, per-task module. This implements the
    linear, shared variant that folds into the weights: one rank-`rank` P chosen by least
    squares so that (I − P) W_ta reproduces every model's outputs W_i x on its data, given
    the input statistics as extra `gram` (G_i = X_iᵀX_i, `[in, in]`). Interpretation, not the
    paper's module. Tensors of rank < 2 (biases, norms) keep the task-arithmetic merge.
    """
    base = need_base(tm, "representation_surgery")
    merged = base + float(tm.params["lambda"]) * tm.task_vectors().sum(dim=0)
    if tm.inputs.dim() < 3:
        return merged
    w = as_matrix(merged)
    width = w.shape[1]
    grams = []
    for i in range(tm.k):
        g = need_extra(tm, i, "gram", "representation_surgery").to(torch.float64)
        full = torch.diag(g) if g.dim() == 1 else g
        check_shape(
            full,
            (width, width),
            f"representation_surgery: extra 'gram' of model {i}, tensor {tm.name!r}",
        )
        grams.append(full)
    targets = [as_matrix(x) for x in tm.inputs]
    p = surgery_projection(w, targets, grams, int(tm.params["rank"]))
    eye = torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    corrected = (eye - p) @ w.to(torch.float64)
    return corrected.reshape(tm.inputs.shape[1:]).to(torch.float32)


def _candidate_fn(tm: TensorMerge) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ θ_0 + Σ x_i τ_i with a base, Σ x_i θ_i without: the recipe the searches tune."""
    if tm.base is None:
        stack = tm.inputs
        return lambda x: combine(x, stack)
    base = tm.base
    tv = tm.task_vectors()
    return lambda x: base + combine(x, tv)


def _objective(
    tm: TensorMerge, strategy: str
) -> tuple[Callable[[torch.Tensor], float], Callable[[torch.Tensor], torch.Tensor]]:
    fitness = get_fitness(str(tm.params["fitness"]), strategy)
    build = _candidate_fn(tm)

    def objective(x: torch.Tensor) -> float:
        score = float(fitness(tm, build(x)))
        return score if score == score else float("-inf")

    return objective, build


_SEARCH_PARAMS = (
    Param("weight", float, 1.0, "per-model starting weight (normalised)", per_model=True),
    Param("fitness", str, "", "name of a registered fitness function (e.g. gram_regression)"),
    Param("iterations", int, 30, "generations", minimum=0, maximum=100_000),
)


@register(
    "evolutionary_merge",
    params=(
        *_SEARCH_PARAMS,
        Param("population", int, 0, "λ per generation (0: 4 + ⌊3 ln k⌋)", minimum=0),
        Param("sigma", float, 0.3, "initial CMA-ES step size", minimum=1e-12),
    ),
    family=_FAMILY,
    paper="Akiba et al. 2025, Evolutionary Optimization of Model Merging Recipes (Nature "
    "Machine Intelligence)",
    formula="x* = CMA-ES argmax_x fitness(θ_0 + Σ_i x_i τ_i); θ = θ_0 + Σ_i x*_i τ_i",
    stochastic=True,
)
def evolutionary_merge(tm: TensorMerge) -> torch.Tensor:
    """Parameter-space evolutionary merging: CMA-ES over per-model weights, scored by fitness.

    The paper evolves TIES/DARE recipe parameters per layer with CMA-ES against task
    accuracy; here, per tensor, CMA-ES searches the per-model weights x of
    θ_0 + Σ x_i τ_i (Σ x_i θ_i without a base), starting from the normalised `weight`s, and
    keeps the best candidate seen. The fitness is a registered function (`fitness=...`),
    e.g. the built-in `gram_regression` on supplied activation statistics; nothing is
    scored without one.
    """
    objective, build = _objective(tm, "evolutionary_merge")
    x0 = normalized(model_vector(tm, "weight"), "evolutionary_merge")
    result = cma_es(
        objective,
        x0,
        float(tm.params["sigma"]),
        int(tm.params["population"]),
        int(tm.params["iterations"]),
        tm.generator,
    )
    return build(result.x).to(torch.float32)


@register(
    "genetic_merge",
    params=(
        *_SEARCH_PARAMS,
        Param("population", int, 16, "individuals per generation", minimum=2),
        Param("lower", float, 0.0, "lower bound of each weight"),
        Param("upper", float, 1.0, "upper bound of each weight"),
    ),
    family=_FAMILY,
    paper="Minut et al. 2025, Mergenetic: a Simple Evolutionary Model Merging Library (GA "
    "with SBX crossover and polynomial mutation, as in pymoo)",
    formula="x* = GA argmax_{x ∈ [lo,hi]^k} fitness(θ_0 + Σ_i x_i τ_i)",
    stochastic=True,
)
def genetic_merge(tm: TensorMerge) -> torch.Tensor:
    """Genetic-algorithm merging: evolve per-model weights in [lower, upper] against a fitness.

    Binary tournament selection, simulated binary crossover, polynomial mutation and
    elitist (μ+λ) survival; the normalised `weight`s seed the first generation. Same
    recipe and fitness contract as `evolutionary_merge`.
    """
    lower, upper = float(tm.params["lower"]), float(tm.params["upper"])
    if upper < lower:
        raise StrategyParamError(f"genetic_merge: 'lower' ({lower}) is above 'upper' ({upper})")
    objective, build = _objective(tm, "genetic_merge")
    x0 = normalized(model_vector(tm, "weight"), "genetic_merge")
    result = genetic(
        objective,
        tm.k,
        lower,
        upper,
        int(tm.params["population"]),
        int(tm.params["iterations"]),
        tm.generator,
        seeds=(x0,),
    )
    return build(result.x).to(torch.float32)
