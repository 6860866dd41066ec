"""Byzantine-robust aggregators for federations: median, trimmed mean, geometric median,
Krum, Multi-Krum, Bulyan, centered clipping and FedAvg.

They aggregate the inputs themselves (a base, if given, is ignored). Distance-based rules
flatten each contribution's tensor to one vector; as every strategy here they run per tensor
name, so Krum may pick different contributions for different tensors. Ties between equal
scores are broken by the lexicographic order of the contributions' values, so the result
never depends on input order.
"""

from __future__ import annotations

import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies._common import per_model, weighted_sum
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

F_BYZ = Param("f", int, 1, "number of Byzantine contributions tolerated", 0, None)


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over dim 0 (mean of the two middle values when k is even)."""
    k = x.shape[0]
    s = torch.sort(x, dim=0).values
    if k % 2 == 1:
        return s[k // 2].clone()
    return (s[k // 2 - 1] + s[k // 2]) / 2


def _lex_less(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when flat vector `a` precedes `b` lexicographically (first differing entry)."""
    diff = torch.nonzero(a != b)
    if diff.numel() == 0:
        return False
    j = int(diff[0, 0])
    return bool(a[j] < b[j])


def _argmin(scores: list[float], candidates: list[int], flat: torch.Tensor) -> int:
    """Candidate with the lowest score; exact ties go to the lexicographically smallest row."""
    best = min(scores[c] for c in candidates)
    tied = [c for c in candidates if scores[c] == best]
    pick = tied[0]
    for c in tied[1:]:
        if _lex_less(flat[c], flat[pick]):
            pick = c
    return pick


def pairwise_sq_distances(flat: torch.Tensor) -> torch.Tensor:
    """`[k, k]` float64 matrix of ‖x_i − x_j‖² (differences in float32, sums in float64)."""
    k = flat.shape[0]
    d = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            diff = (flat[i] - flat[j]).to(torch.float64)
            d[i, j] = d[j, i] = float(torch.dot(diff, diff))
    return d


def krum_scores(d: torch.Tensor, members: list[int], f: int, clamp: bool = False) -> list[float]:
    """Krum score of each member: Σ of its (r − f − 2) smallest squared distances in `members`."""
    r = len(members)
    m = r - f - 2
    if clamp:
        m = max(1, min(m, r - 1))
    scores = [0.0] * d.shape[0]
    for i in members:
        others = sorted(float(d[i, j]) for j in members if j != i)
        scores[i] = sum(others[: max(m, 0)])
    return scores


def _check_krum(tm: TensorMerge, strategy: str, f: int, need: int) -> None:
    if tm.k < need:
        raise StrategyParamError(
            f"strategy {strategy!r} on tensor {tm.name!r}: parameter 'f'={f} needs at least "
            f"{need} inputs, got {tm.k}"
        )


@register(
    "median",
    family="robust",
    paper="Yin et al., Byzantine-Robust Distributed Learning: Towards Optimal Statistical "
    "Rates, ICML 2018",
    formula="θ[j] = median_i θ_i[j] (mean of the two middle values for even k)",
)
def median(tm: TensorMerge) -> torch.Tensor:
    """Coordinate-wise median: each entry is the median of the contributions' entries."""
    return coordinate_median(tm.inputs)


@register(
    "trimmed_mean",
    params=(Param("beta", float, 0.1, "fraction trimmed from each end", 0.0, 0.5),),
    family="robust",
    paper="Yin et al., Byzantine-Robust Distributed Learning: Towards Optimal Statistical "
    "Rates, ICML 2018",
    formula="b = min(⌊βk⌋, ⌊(k−1)/2⌋); θ[j] = mean of the sorted θ_i[j] without b lowest and b highest",
)
def trimmed_mean(tm: TensorMerge) -> torch.Tensor:
    """Coordinate-wise β-trimmed mean (beta=0.1): drop the b smallest and b largest per entry."""
    k = tm.k
    b = min(int(float(tm.params.get("beta", 0.1)) * k + 1e-9), (k - 1) // 2)
    s = torch.sort(tm.inputs, dim=0).values
    return s[b : k - b].mean(dim=0)


def weiszfeld(
    flat: torch.Tensor, w: torch.Tensor, eps: float, max_iter: int, tol: float
) -> torch.Tensor:
    """Smoothed Weiszfeld iteration for argmin_z Σ w_i ‖x_i − z‖, in float64, from the mean."""
    a = w / float(w.sum())
    z = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
    for i in range(flat.shape[0]):
        z += float(a[i]) * flat[i].to(torch.float64)
    for _ in range(max_iter):
        dist = torch.stack(
            [torch.linalg.vector_norm(flat[i].to(torch.float64) - z) for i in range(flat.shape[0])]
        )
        beta = a / dist.cpu().clamp(min=eps)
        beta = beta / float(beta.sum())
        new = torch.zeros_like(z)
        for i in range(flat.shape[0]):
            new += float(beta[i]) * flat[i].to(torch.float64)
        step = float(torch.linalg.vector_norm(new - z))
        z = new
        if step <= tol * max(1.0, float(torch.linalg.vector_norm(z))):
            break
    return z


@register(
    "geometric_median",
    params=(
        Param("weight", float, 1.0, "per-model weight α_i", 0.0, None, per_model=True),
        Param("eps", float, 1e-8, "smoothing floor ν on distances", 0.0, None),
        Param("max_iter", int, 100, "maximum Weiszfeld iterations", 1, 100_000),
        Param("tol", float, 1e-7, "stop when ‖z⁺ − z‖ ≤ tol · max(1, ‖z‖)", 0.0, None),
    ),
    family="robust",
    paper="Pillutla, Kakade & Harchaoui, Robust Aggregation for Federated Learning, IEEE TSP "
    "2022 (RFA); Weiszfeld, Tohoku Math. J. 1937",
    formula="z ← Σ β_i x_i / Σ β_i, β_i = α_i / max(ν, ‖x_i − z‖), from z = Σ α_i x_i / Σ α_i",
)
def geometric_median(tm: TensorMerge) -> torch.Tensor:
    """Geometric median by smoothed Weiszfeld (eps=1e-8, max_iter=100, tol=1e-7) in float64."""
    w = per_model(tm, "weight", 1.0)
    if float(w.sum()) <= 0:
        raise StrategyParamError(
            f"strategy 'geometric_median' on tensor {tm.name!r}: parameter 'weight' sums to zero"
        )
    flat = tm.inputs.reshape(tm.k, -1)
    z = weiszfeld(
        flat,
        w,
        float(tm.params.get("eps", 1e-8)),
        int(tm.params.get("max_iter", 100)),
        float(tm.params.get("tol", 1e-7)),
    )
    return z.to(torch.float32).reshape(tm.inputs.shape[1:])


@register(
    "krum",
    params=(F_BYZ,),
    family="robust",
    paper="Blanchard et al., Machine Learning with Adversaries: Byzantine Tolerant Gradient "
    "Descent, NeurIPS 2017",
    formula="s(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖², N_i the k−f−2 nearest others; θ = x_{argmin s}; "
    "needs k ≥ 2f+3",
)
def krum(tm: TensorMerge) -> torch.Tensor:
    """Krum (f=1): return the contribution closest to its k−f−2 nearest neighbours."""
    f = int(tm.params.get("f", 1))
    _check_krum(tm, "krum", f, 2 * f + 3)
    flat = tm.inputs.reshape(tm.k, -1)
    members = list(range(tm.k))
    scores = krum_scores(pairwise_sq_distances(flat), members, f)
    return tm.inputs[_argmin(scores, members, flat)].clone()


@register(
    "multi_krum",
    params=(
        F_BYZ,
        Param("m", int, 0, "how many contributions to average (0 means k − f)", 0, None),
    ),
    family="robust",
    paper="Blanchard et al., Machine Learning with Adversaries: Byzantine Tolerant Gradient "
    "Descent, NeurIPS 2017 (Multi-Krum); El Mhamdi et al., ICML 2018",
    formula="average of the m contributions with the lowest Krum scores s(i); needs k ≥ 2f+3",
)
def multi_krum(tm: TensorMerge) -> torch.Tensor:
    """Multi-Krum (f=1, m=k−f): mean of the m contributions with the best Krum scores."""
    f = int(tm.params.get("f", 1))
    _check_krum(tm, "multi_krum", f, 2 * f + 3)
    m = int(tm.params.get("m", 0)) or tm.k - f
    if m > tm.k:
        raise StrategyParamError(
            f"strategy 'multi_krum' on tensor {tm.name!r}: parameter 'm'={m} exceeds the "
            f"{tm.k} inputs"
        )
    flat = tm.inputs.reshape(tm.k, -1)
    scores = krum_scores(pairwise_sq_distances(flat), list(range(tm.k)), f)
    remaining = list(range(tm.k))
    chosen: list[int] = []
    for _ in range(m):
        pick = _argmin(scores, remaining, flat)
        chosen.append(pick)
        remaining.remove(pick)
    return tm.inputs[sorted(chosen)].mean(dim=0)


@register(
    "bulyan",
    params=(F_BYZ,),
    family="robust",
    paper="El Mhamdi, Guerraoui & Rouault, The Hidden Vulnerability of Distributed Learning "
    "in Byzantium, ICML 2018",
    formula="S = k−2f picks of Krum on the remaining set; β = |S| − 2f; θ[j] = mean of the β "
    "values of S[·][j] closest to median_S[j]; needs k ≥ 4f+3",
)
def bulyan(tm: TensorMerge) -> torch.Tensor:
    """Bulyan (f=1): recursive Krum selection, then a coordinate-wise trimmed mean around the median."""
    f = int(tm.params.get("f", 1))
    _check_krum(tm, "bulyan", f, 4 * f + 3)
    flat = tm.inputs.reshape(tm.k, -1)
    d = pairwise_sq_distances(flat)
    remaining = list(range(tm.k))
    selected: list[int] = []
    for _ in range(tm.k - 2 * f):
        scores = krum_scores(d, remaining, f, clamp=True)
        pick = _argmin(scores, remaining, flat)
        selected.append(pick)
        remaining.remove(pick)
    s = tm.inputs[selected]
    beta = len(selected) - 2 * f
    med = coordinate_median(s)
    order = torch.sort((s - med.unsqueeze(0)).abs(), dim=0, stable=True).indices[:beta]
    return torch.gather(s, 0, order).mean(dim=0)


@register(
    "centered_clip",
    params=(
        Param("tau", float, 1.0, "clipping radius τ", 0.0, None),
        Param("iterations", int, 3, "clipping iterations L", 1, 10_000),
    ),
    family="robust",
    paper="Karimireddy, He & Jaggi, Learning from History for Byzantine Robust Optimization, "
    "ICML 2021",
    formula="v_0 = coordinate-wise median; v ← v + (1/k) Σ_i (x_i − v) min(1, τ/‖x_i − v‖)",
)
def centered_clip(tm: TensorMerge) -> torch.Tensor:
    """Centered clipping (tau=1.0, iterations=3) started from the coordinate-wise median."""
    tau = float(tm.params.get("tau", 1.0))
    flat = tm.inputs.reshape(tm.k, -1)
    v = coordinate_median(flat).to(torch.float64)
    for _ in range(int(tm.params.get("iterations", 3))):
        step = torch.zeros_like(v)
        for i in range(tm.k):
            diff = flat[i].to(torch.float64) - v
            norm = float(torch.linalg.vector_norm(diff))
            scale = 1.0 if norm <= tau else tau / norm
            step += scale * diff
        v = v + step / tm.k
    return v.to(torch.float32).reshape(tm.inputs.shape[1:])


@register(
    "fedavg",
    params=(
        Param(
            "num_examples",
            int,
            1,
            "training examples behind each contribution",
            0,
            None,
            per_model=True,
        ),
    ),
    family="robust",
    paper="McMahan et al., Communication-Efficient Learning of Deep Networks from "
    "Decentralized Data, AISTATS 2017",
    formula="θ = Σ_i n_i θ_i / Σ_i n_i, n_i = num_examples",
    elementwise=True,
    uses_base=False,
    propagates_nonfinite=True,
    raw_inputs=True,
)
def fedavg(tm: TensorMerge) -> torch.Tensor:
    """FedAvg: mean of the contributions weighted by their `num_examples` (default 1 each)."""
    n = per_model(tm, "num_examples", 1.0)
    total = float(n.sum())
    if total <= 0:
        raise StrategyParamError(
            f"strategy 'fedavg' on tensor {tm.name!r}: parameter 'num_examples' sums to zero"
        )
    return weighted_sum(n / total, tm.inputs, tm.out, tm.raw)
