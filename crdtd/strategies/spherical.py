"""Spherical interpolation: SLERP, NuSLERP, Multi-SLERP and the Karcher mean.

Angles and norms are computed in float64 on the flattened tensor (or per row/column where
a method says so); results are float32 of the input shape. SLERP is two-phase (a streamed
pass finds the norms and angle in float64, then each block is mixed alone in float32), so it
merges in blocks.
"""

from __future__ import annotations

import math

import torch

from crdtd.errors import StrategyError, StrategyParamError
from crdtd.strategies._common import nonzero_total, per_model
from crdtd.strategies._gta import chunks
from crdtd.strategies.base import Param, TensorBlocks, TensorMerge
from crdtd.strategies.registry import register

WEIGHT = Param("weight", float, 1.0, "per-model weight", per_model=True)


SlerpState = tuple[str, float, float]


def _ends(tm: TensorMerge) -> tuple[torch.Tensor, torch.Tensor]:
    """SLERP's endpoints: two inputs in content-id order, or the base and the one input."""
    if tm.k == 2:
        return tm.inputs[0], tm.inputs[1]
    if tm.base is None:
        raise StrategyParamError(
            f"strategy 'slerp' on tensor {tm.name!r}: needs two inputs, or one input and a base"
        )
    return tm.base, tm.inputs[0]


def slerp_state(blocks: TensorBlocks) -> SlerpState:
    """How each entry is mixed, decided over the whole tensor in one streamed pass: ("copy",
    …) at t = 0 or 1, ("lerp", 1−t, t), or ("slerp", s0, s1) with the spherical weights.
    |v0|², |v1|² and v0·v1 are summed in float64 per chunk of the `BLOCK_ALIGN` grid, then
    over chunks in order, so whole tensors and blocks agree. The `prepare` of `slerp`."""
    t = float(blocks.params.get("t", 0.5))
    thr = float(blocks.params.get("dot_threshold", 0.9995))
    if t in (0.0, 1.0):
        return ("copy", 1.0 - t, t)

    def partial_sums(block: TensorMerge) -> list[torch.Tensor]:
        v0, v1 = _ends(block)
        out = []
        for c0, c1 in chunks(v0.numel(), block.offset):
            a = v0[c0 - block.offset : c1 - block.offset].to(torch.float64)
            b = v1[c0 - block.offset : c1 - block.offset].to(torch.float64)
            out.append(torch.stack([torch.dot(a, a), torch.dot(b, b), torch.dot(a, b)]).cpu())
        return out

    sums = torch.zeros(3, dtype=torch.float64)
    for part in blocks.map(partial_sums):
        for chunk_sums in part:
            sums += chunk_sums
    na, nb = math.sqrt(float(sums[0])), math.sqrt(float(sums[1]))
    if na < 1e-12 or nb < 1e-12:
        return ("lerp", 1.0 - t, t)
    dot = float(sums[2]) / (na * nb)
    if abs(dot) > thr:
        return ("lerp", 1.0 - t, t)
    omega = math.acos(max(-1.0, min(1.0, dot)))
    sin = math.sin(omega)
    return ("slerp", math.sin((1.0 - t) * omega) / sin, math.sin(t * omega) / sin)


def slerp_mix(state: SlerpState, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Apply a `slerp_state` entrywise in float32: a copy, or s0·v0 + s1·v1 (the weights
    of the lerp or of the slerp, found in float64)."""
    kind, s0, s1 = state
    if kind == "copy":
        return (v0 if s0 == 1.0 else v1).clone()
    return torch.mul(v0, s0).add_(v1, alpha=s1)


def slerp_vectors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float
) -> torch.Tensor:
    """SLERP of two tensors treated as flat vectors; lerp when |cos Ω| > `dot_threshold`."""
    pair = torch.stack([v0.reshape(-1), v1.reshape(-1)]).to(torch.float32)
    tm = TensorMerge(
        "", pair, None, {"t": t, "dot_threshold": dot_threshold}, (), torch.Generator()
    )
    state = slerp_state(TensorBlocks.of(tm))
    return slerp_mix(state, pair[0], pair[1]).reshape(v0.shape)


@register(
    "slerp",
    params=(
        Param("t", float, 0.5, "interpolation factor: 0 gives the first endpoint", 0.0, 1.0),
        Param("dot_threshold", float, 0.9995, "|cos Ω| above which lerp is used", 0.0, 1.0),
    ),
    family="standard",
    paper="Shoemake, Animating Rotation with Quaternion Curves, SIGGRAPH 1985",
    formula="Ω = arccos(v0·v1/(|v0||v1|)); θ = sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1 "
    "(lerp when |cos Ω| > dot_threshold)",
    min_inputs=1,
    max_inputs=2,
    prepare=slerp_state,
)
def slerp(tm: TensorMerge) -> torch.Tensor:
    """SLERP (t=0.5): two inputs v0→v1 in content-id order, or base→input with one input."""
    v0, v1 = _ends(tm)
    state = tm.state if tm.state is not None else slerp_state(TensorBlocks.of(tm))
    return slerp_mix(state, v0, v1)


def _nuslerp_pair(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-batched SLERP over the last dim of `[rows, d]` float64 tensors; lerp if sin Ω < eps."""
    n0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    n1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (n0 * n1).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    colinear = sin.abs() < eps
    safe = torch.where(colinear, torch.ones_like(sin), sin)
    curved = (torch.sin((1.0 - t) * omega) * v0 + torch.sin(t * omega) * v1) / safe
    straight = (1.0 - t) * v0 + t * v1
    return torch.where(colinear, straight, curved)


@register(
    "nuslerp",
    params=(
        WEIGHT,
        Param("nuslerp_flatten", bool, True, "treat the whole tensor as one vector"),
        Param("nuslerp_row_wise", bool, False, "when not flattened: SLERP rows, else columns"),
    ),
    family="standard",
    paper="Goddard et al., Arcee's MergeKit: A Toolkit for Merging Large Language Models, "
    "EMNLP Industry 2024 (NuSLERP)",
    formula="t = w_2/(w_1+w_2) (0.5 if Σw≈0); θ = base + slerp(t, θ_1−base, θ_2−base) "
    "(no base: slerp(t, θ_1, θ_2)); lerp where sin Ω < 1e-8",
    min_inputs=2,
    max_inputs=2,
)
def nuslerp(tm: TensorMerge) -> torch.Tensor:
    """NuSLERP: weight-ratio SLERP of two inputs (or their task vectors when a base is given)."""
    w = per_model(tm, "weight", 1.0)
    total = float(w.sum())
    t = 0.5 if abs(total) < 1e-6 else float(w[1]) / total
    base = tm.base
    v0 = tm.inputs[0].to(torch.float64)
    v1 = tm.inputs[1].to(torch.float64)
    if base is not None:
        v0 = v0 - base.to(torch.float64)
        v1 = v1 - base.to(torch.float64)
    shape = v0.shape
    if tm.params.get("nuslerp_flatten", True) or v0.dim() < 2:
        out = _nuslerp_pair(t, v0.reshape(1, -1), v1.reshape(1, -1), 1e-8).reshape(shape)
    elif tm.params.get("nuslerp_row_wise", False):
        rows = (v0.reshape(shape[0], -1), v1.reshape(shape[0], -1))
        out = _nuslerp_pair(t, *rows, 1e-8).reshape(shape)
    else:
        cols = (v0.reshape(shape[0], -1).T, v1.reshape(shape[0], -1).T)
        out = _nuslerp_pair(t, *cols, 1e-8).T.reshape(shape)
    if base is not None:
        out = out + base.to(torch.float64)
    return out.to(torch.float32)


@register(
    "multislerp",
    params=(
        WEIGHT,
        Param("normalize_weights", bool, True, "divide weights by their sum"),
        Param("eps", float, 1e-8, "numerical floor for norms", 0.0, 1.0),
    ),
    family="standard",
    paper="Goddard, Multi-SLERP (barycentric interpolation on the hypersphere), "
    "goddard.blog 2025; Buss & Fillmore, Spherical Averages, ACM TOG 2001",
    formula="u_i = x_i/|x_i| (x_i = θ_i − base if base); m = Σ w_i u_i / |Σ w_i u_i|; "
    "v = Σ w_i (u_i − (u_i·m) m); θ = (Σ w_i|x_i|)(m cos|v| + v sin|v|/|v|) (+ base)",
    min_inputs=1,
)
def multislerp(tm: TensorMerge) -> torch.Tensor:
    """Multi-SLERP: weighted mean on the unit sphere via one tangent-space step, norm restored."""
    if tm.k == 1 or tm.inputs[0].numel() == 0:
        return tm.inputs[0].clone()
    eps = float(tm.params.get("eps", 1e-8))
    w = per_model(tm, "weight", 1.0)
    if tm.params.get("normalize_weights", True):
        w = w / nonzero_total(w, "multislerp")
    x = tm.inputs.reshape(tm.k, -1).to(torch.float64)
    w = w.to(x.device)
    base = None if tm.base is None else tm.base.reshape(-1).to(torch.float64)
    if base is not None:
        x = x - base
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    units = x / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = float(torch.linalg.vector_norm(mean))
    if mean_norm < eps:
        if tm.k == 2:
            out = w[0] * x[0] + w[1] * x[1]
            return (
                (out if base is None else out + base).to(torch.float32).reshape(tm.inputs.shape[1:])
            )
        raise StrategyError(
            f"strategy 'multislerp' on tensor {tm.name!r}: the weighted mean direction is zero "
            "(antipodal inputs with balancing weights); change the weights"
        )
    mean = mean / mean_norm
    tangents = units - (units @ mean).unsqueeze(1) * mean
    v = (tangents * w.view(-1, 1)).sum(0)
    vn = float(torch.linalg.vector_norm(v)) + eps
    out = mean * math.cos(vn) + v * (math.sin(vn) / vn)
    out = out * float((norms.squeeze(1) * w).sum())
    if base is not None:
        out = out + base
    return out.to(torch.float32).reshape(tm.inputs.shape[1:])


def karcher_mean(x: torch.Tensor, w: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """Weighted Karcher (Fréchet) mean of the rows of float64 `x` on the sphere, times Σ w|x|."""
    norms = torch.linalg.vector_norm(x, dim=1)
    w = w.to(x.device) / float(w.sum())
    valid = norms > tol
    if not bool(valid.any()):
        return torch.zeros_like(x[0])
    units = x[valid] / norms[valid].unsqueeze(1)
    a = w[valid] / float(w[valid].sum())
    mean = (units * a.view(-1, 1)).sum(0)
    mn = float(torch.linalg.vector_norm(mean))
    mean = units[0].clone() if mn < tol else mean / mn
    for _ in range(max_iter):
        cos = (units @ mean).clamp(-1.0, 1.0)
        theta = torch.acos(cos)
        active = theta >= tol
        coef = torch.where(active, a * theta / torch.sin(theta).clamp(min=1e-300), 0.0)
        tangent = (coef.unsqueeze(1) * (units - cos.unsqueeze(1) * mean)).sum(0)
        tn = float(torch.linalg.vector_norm(tangent))
        if tn < tol:
            break
        mean = math.cos(tn) * mean + math.sin(tn) * (tangent / tn)
        mean = mean / torch.linalg.vector_norm(mean)
    return mean * float((w * norms).sum())


@register(
    "karcher",
    params=(
        WEIGHT,
        Param("max_iter", int, 10, "maximum Riemannian gradient steps", 1, 10_000),
        Param("tol", float, 1e-5, "stop when the tangent step norm is below this", 0.0, 1.0),
    ),
    family="standard",
    paper="Karcher, Riemannian center of mass and mollifier smoothing, CPAM 1977; "
    "Goddard et al., Arcee's MergeKit, EMNLP Industry 2024",
    formula="m ← exp_m(Σ a_i log_m(u_i)) with u_i = θ_i/|θ_i|, log_m(u) = θ/sinθ (u − cosθ m); "
    "θ = (Σ a_i|θ_i|) m, a_i = w_i/Σw",
    min_inputs=1,
)
def karcher(tm: TensorMerge) -> torch.Tensor:
    """Karcher mean on the hypersphere (max_iter=10, tol=1e-5), rescaled to the mean norm."""
    if tm.k == 1:
        return tm.inputs[0].clone()
    w = per_model(tm, "weight", 1.0)
    nonzero_total(w, "karcher")
    x = tm.inputs.reshape(tm.k, -1).to(torch.float64)
    out = karcher_mean(x, w, int(tm.params.get("max_iter", 10)), float(tm.params.get("tol", 1e-5)))
    return out.to(torch.float32).reshape(tm.inputs.shape[1:])
