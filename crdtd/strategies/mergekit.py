"""mergekit's semantics for the methods crdtd shares with it: what a mergekit YAML means.

A config in mergekit's format (`crdtd merge --config`, unless it says `semantics: crdtd`)
selects these `mergekit.<method>` strategies. Each follows mergekit 0.1.5
(`merge_methods/` and `sparsify.py`) step by step: it computes in mergekit's compute dtype
(the config's `dtype`, else the inputs' stored dtype, so bf16 checkpoints are merged in
bf16), with the same torch operations in the same order, so the result matches mergekit's
on the same torch version. What differs from crdtd's own strategies:

* TIES keeps the `density` largest |τ| by `torch.argsort` (ties broken as torch's unstable
  sort breaks them), not crdtd's exact order statistic with later positions winning ties;
* `rescale` (DARE's default) restores each task vector's L1 norm instead of dividing by
  `density`; intermediate results are rounded to the compute dtype at every step;
* SLERP interpolates from the base (t = 0 gives the base) in float32;
* Model Stock and the task-arithmetic family never count the base as a fine-tune.

The engine still sorts inputs by content id and drops duplicates, so the result stays a
function of the input *set*; random masks come from the content-seeded generator, drawn as
mergekit draws them (one `torch.bernoulli` over the whole tensor per model, in order).
"""

from __future__ import annotations

import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies._common import per_model, require_base
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

_PAPER = (
    "Goddard et al., Arcee's MergeKit: A Toolkit for Merging Large Language Models, "
    "EMNLP Industry 2024 (mergekit 0.1.5 semantics)"
)
COMPUTE_DTYPES: dict[str, torch.dtype | None] = {
    "": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DTYPE = Param(
    "dtype",
    str,
    "",
    "compute dtype (mergekit's `dtype`); empty: the inputs' stored dtype",
    choices=tuple(COMPUTE_DTYPES),
)
WEIGHT = Param("weight", float, 1.0, "per-model weight", per_model=True)
DENSITY = Param(
    "density", float, 1.0, "fraction of each task vector kept", 0.0, 1.0, per_model=True
)
GAMMA = Param(
    "gamma", float, 0.01, "fraction of largest magnitudes removed", 0.0, 1.0, per_model=True
)
EPSILON = Param("epsilon", float, 0.15, "spread of keep probabilities", 0.0, 0.5, per_model=True)
LAMBDA = Param("lambda", float, 1.0, "scale applied to the merged task vector")
SLERP_CHUNK = 1024 * 1024  # mergekit's slerp works in pieces of this many entries


def compute_dtype(tm: TensorMerge) -> torch.dtype:
    """The dtype mergekit computes this tensor in: `dtype`, else the inputs' stored dtype."""
    return COMPUTE_DTYPES[str(tm.params.get("dtype", ""))] or tm.input_dtype


def _out(t: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """Round to the compute dtype as mergekit's result is, then hand float32 to the engine."""
    return t.to(cdt).to(torch.float32)


def _rescaled(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """mergekit's `rescaled_masked_tensor` with the L1 norm (or none)."""
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def magnitude(tensor: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the max(1, ⌊density·n⌋) largest |entries| (by `argsort`, descending)."""
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    mask[torch.argsort(w, descending=True)[:k]] = 1
    return _rescaled(tensor, mask.reshape_as(tensor), rescale)


def magnitude_outliers(
    tensor: torch.Tensor, density: float, rescale: bool, gamma: float
) -> torch.Tensor:
    """Breadcrumbs: drop the ⌊gamma·n⌋ largest |entries|, keep the next ⌊density·n⌋."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    target = int(density * n)
    n_bot = max(0, n - target - int(gamma * n))
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    order = torch.sort(w, descending=False).indices
    mask = torch.zeros(n, dtype=tensor.dtype, device=tensor.device)
    mask[order[n_bot : n_bot + target]] = 1
    return _rescaled(tensor, mask.reshape_as(tensor), rescale)


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """mergekit's dtype for random masks: bf16 stays, other CPU dtypes draw in float32."""
    return tensor.dtype if tensor.dtype == torch.bfloat16 else torch.float32


def _bernoulli(p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """`torch.bernoulli(p)` drawn from `g` (a CPU generator), on p's device."""
    return torch.bernoulli(p.cpu(), generator=g).to(p.device)


def bernoulli(
    tensor: torch.Tensor, density: float, rescale: bool, g: torch.Generator
) -> torch.Tensor:
    """DARE: keep each entry with probability `density`; L1-rescale when `rescale`."""
    if density >= 1:
        return tensor
    work = _work_dtype(tensor)
    mask = _bernoulli(torch.full_like(tensor, density, dtype=work), g)
    return _rescaled(tensor.to(work), mask, rescale).to(tensor.dtype)


def della_magprune(
    tensor: torch.Tensor, density: float, epsilon: float, rescale: bool, g: torch.Generator
) -> torch.Tensor:
    """DELLA: keep probability density ± epsilon by magnitude rank within each row."""
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise StrategyParamError(
            f"parameter 'epsilon'={epsilon}: density ± epsilon must lie in (0, 1) "
            f"(density={density})"
        )
    shape = tensor.shape
    work = _work_dtype(tensor)
    if tensor.dim() < 2:
        tensor = tensor.unsqueeze(0)
    ranks = torch.argsort(tensor.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    mask = _bernoulli((density - epsilon) + rank_norm * 2 * epsilon, g).to(work)
    return _rescaled(tensor.to(work), mask, rescale).to(tensor.dtype).reshape(shape)


def _sparsify(tm: TensorMerge, method: str, delta: torch.Tensor, i: int) -> torch.Tensor:
    density = float(per_model(tm, "density", 1.0)[i])
    rescale = bool(tm.params.get("rescale", False))
    if method == "magnitude":
        return magnitude(delta, density, rescale)
    if method == "random":
        return bernoulli(delta, density, rescale, tm.generator)
    if method == "outliers":
        return magnitude_outliers(delta, density, rescale, float(per_model(tm, "gamma", 0.01)[i]))
    epsilon = float(per_model(tm, "epsilon", 0.15)[i])
    return della_magprune(delta, density, epsilon, rescale, tm.generator)


def _mask(deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election ('sum'): entries whose sign equals that of the column sum (≥ 0: +)."""
    sign = deltas.sign()
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    return sign == majority


def _gta(tm: TensorMerge, name: str, method: str | None, consensus: bool) -> torch.Tensor:
    """mergekit's generalised task arithmetic, in the compute dtype."""
    cdt = compute_dtype(tm)
    base = require_base(tm, name).to(cdt)
    deltas = base.new_empty((tm.k, *base.shape))
    for i in range(tm.k):
        delta = tm.inputs[i].to(cdt) - base
        deltas[i] = delta if method is None else _sparsify(tm, method, delta, i)
    weights = torch.tensor(
        [float(w) for w in per_model(tm, "weight", 1.0)], dtype=cdt, device=deltas.device
    )
    while deltas.dim() > weights.dim():
        weights.unsqueeze_(-1)
    deltas.mul_(weights)
    if consensus:
        mask = _mask(deltas)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if tm.params.get("normalize", False):
        mixed /= divisor
    lam = float(tm.params.get("lambda", 1.0))
    if lam != 1:
        mixed *= lam
    return _out(base + mixed, cdt)


def _gta_params(normalize: bool, rescale: bool, *extra: Param) -> tuple[Param, ...]:
    return (
        WEIGHT,
        DENSITY,
        *extra,
        LAMBDA,
        Param("normalize", bool, normalize, "divide by the sum of (agreeing) weights"),
        Param("rescale", bool, rescale, "rescale kept entries to the task vector's L1 norm"),
        DTYPE,
    )


_DISJOINT = "γ = sgn Σ_i w_i τ̂_i (0: +); θ = θ_base + λ Σ_{sgn w_iτ̂_i=γ} w_i τ̂_i (÷ Σ w_i there)"
_SUM = "θ = θ_base + λ Σ_i w_i τ̂_i (÷ Σ_i w_i when normalize)"


def _register_gta(
    name: str, method: str | None, consensus: bool, normalize: bool, rescale: bool, *extra: Param
) -> None:
    sparsify = {
        None: "τ̂_i = τ_i",
        "magnitude": "τ̂_i = τ_i at argsort-top ⌊density·n⌋ of |τ_i|",
        "random": "τ̂_i = τ_i ⊙ Bernoulli(density)",
        "outliers": "τ̂_i = τ_i at ranks [n−⌊density·n⌋−⌊gamma·n⌋, n−⌊gamma·n⌋) of |τ_i|",
        "della": "τ̂_i = τ_i ⊙ Bernoulli(density ± epsilon by row rank)",
    }[method]

    def fn(tm: TensorMerge) -> torch.Tensor:
        return _gta(tm, f"mergekit.{name}", method, consensus)

    fn.__doc__ = f"mergekit's `{name}`: generalised task arithmetic in the compute dtype."
    register(
        f"mergekit.{name}",
        params=_gta_params(normalize, rescale, *extra),
        family="mergekit",
        paper=_PAPER,
        formula=f"{sparsify} (L1-rescaled when rescale), in the compute dtype; "
        + (_DISJOINT if consensus else _SUM),
        needs_base=True,
        stochastic=method in ("random", "della"),
    )(fn)


_register_gta("task_arithmetic", None, False, False, False)
_register_gta("ties", "magnitude", True, True, False)
_register_gta("dare_ties", "random", True, False, True)
_register_gta("dare_linear", "random", False, False, True)
_register_gta("breadcrumbs", "outliers", False, False, False, GAMMA)
_register_gta("breadcrumbs_ties", "outliers", True, False, False, GAMMA)
_register_gta("della", "della", True, True, True, EPSILON)
_register_gta("della_linear", "della", False, False, True, EPSILON)


@register(
    "mergekit.linear",
    params=(WEIGHT, Param("normalize", bool, True, "divide by the sum of weights"), DTYPE),
    family="mergekit",
    paper=_PAPER,
    formula="θ = Σ_i w_i θ_i (float32, in input order) / Σ_i w_i, rounded to the compute dtype",
)
def mergekit_linear(tm: TensorMerge) -> torch.Tensor:
    """mergekit's `linear`: float32 weighted sum, divided by Σ w, rounded to the compute dtype."""
    cdt = compute_dtype(tm)
    acc = torch.float64 if cdt == torch.float64 else torch.float32
    weight = per_model(tm, "weight", 1.0).to(acc)
    result = torch.zeros(tm.inputs.shape[1:], dtype=acc, device=tm.inputs.device)
    for i in range(tm.k):
        result.addcmul_(tm.inputs[i].to(cdt), weight[i].to(tm.inputs.device))
    if tm.params.get("normalize", True):
        result.div_(weight.sum().to(tm.inputs.device))
    return _out(result, cdt)


def mergekit_slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """mergekit's `slerp` of one tensor pair: float32 (float64 for float64 inputs), norms as
    norms of per-piece norms, lerp where |cos Ω| > 0.9995; the result in v0's dtype."""
    eps, threshold = 1e-8, 0.9995
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    tt = torch.tensor([[t]], dtype=dtype, device=a.device)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    pieces = range(0, a.shape[1], SLERP_CHUNK)
    na = torch.stack(
        [
            torch.linalg.vector_norm(a[:, s : s + SLERP_CHUNK].to(dtype), dim=1, keepdim=True)
            for s in pieces
        ]
    )
    nb = torch.stack(
        [
            torch.linalg.vector_norm(b[:, s : s + SLERP_CHUNK].to(dtype), dim=1, keepdim=True)
            for s in pieces
        ]
    )
    norm_a = torch.linalg.vector_norm(na, dim=0)
    norm_b = torch.linalg.vector_norm(nb, dim=0)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dots = [
        (
            (a[:, s : s + SLERP_CHUNK].to(dtype) / norm_a)
            * (b[:, s : s + SLERP_CHUNK].to(dtype) / norm_b)
        ).sum(dim=1, keepdim=True)
        for s in pieces
    ]
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(a)
    for s in pieces:
        x = a[:, s : s + SLERP_CHUNK].to(dtype)
        y = b[:, s : s + SLERP_CHUNK].to(dtype)
        result[:, s : s + SLERP_CHUNK] = coef_a * x + coef_b * y
    return result.reshape(v0.shape)


@register(
    "mergekit.slerp",
    params=(Param("t", float, 0.5, "interpolation factor: 0 gives the base", 0.0, 1.0), DTYPE),
    family="mergekit",
    paper=_PAPER,
    formula="θ = sin((1−t)Ω)/sin Ω · θ_base + sin(tΩ)/sin Ω · θ_1 (float32; lerp when "
    "|cos Ω| > 0.9995); exactly the base and one other input",
    needs_base=True,
    min_inputs=1,
    max_inputs=1,
)
def mergekit_slerp(tm: TensorMerge) -> torch.Tensor:
    """mergekit's `slerp`: from the base (t=0) to the one other input (t=1)."""
    cdt = compute_dtype(tm)
    base = require_base(tm, "mergekit.slerp").to(cdt)
    out = mergekit_slerp_tensors(float(tm.params.get("t", 0.5)), base, tm.inputs[0].to(cdt))
    return _out(out, cdt)


@register(
    "mergekit.model_stock",
    params=(Param("filter_wise", bool, False, "compute t per row instead of per tensor"), DTYPE),
    family="mergekit",
    paper=_PAPER + "; Jang et al., Model Stock, ECCV 2024",
    formula="cos θ = mean_{i<j} cos(θ_i − θ_0, θ_j − θ_0); t = N cos θ / (1 + (N−1) cos θ) "
    "(0 where the denominator is ~0); θ = t·mean_i θ_i + (1 − t) θ_0, in the compute dtype",
    needs_base=True,
    min_inputs=2,
)
def mergekit_model_stock(tm: TensorMerge) -> torch.Tensor:
    """mergekit's `model_stock` in the compute dtype; the base is never a fine-tune."""
    cdt = compute_dtype(tm)
    w0 = require_base(tm, "mergekit.model_stock").to(cdt)
    ws = [tm.inputs[i].to(cdt) for i in range(tm.k)]
    shape = w0.shape
    if tm.params.get("filter_wise", False):
        if w0.dim() == 1:
            w0 = w0.unsqueeze(0)
            ws = [w.unsqueeze(0) for w in ws]
    else:
        w0 = w0.reshape(-1)
        ws = [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, oa in enumerate(offsets):
        for ob in offsets[i + 1 :]:
            norms = torch.norm(oa, dim=-1) * torch.norm(ob, dim=-1)
            cosines.append(((oa * ob).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)
    average = sum(ws) / n
    return _out((t * average + (1 - t) * w0).reshape(shape), cdt)
