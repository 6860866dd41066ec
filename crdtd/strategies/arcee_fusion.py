"""Arcee Fusion: keep the base except where a change is both large and distribution-shifting."""

from __future__ import annotations

import math

import torch

from crdtd.strategies._common import require_base
from crdtd.strategies._select import kth_smallest
from crdtd.strategies.base import TensorMerge
from crdtd.strategies.registry import register


def fusion_importance(params: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|θ − θ_base| · KL(softmax(θ) ‖ softmax(θ_base)) with the softmax over the last dim."""
    eps = 1e-8
    p = torch.softmax(params.to(torch.float64), dim=-1) + eps
    q = torch.softmax(base.to(torch.float64), dim=-1) + eps
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return ((params - base).abs().to(torch.float64) * kl).to(torch.float32)


def quantile_floor(flat: torch.Tensor, q: float) -> torch.Tensor:
    """The order statistic at index ⌊q·(n−1)⌋ (0-based) of a 1-D tensor, without sorting."""
    return kth_smallest(flat, math.floor(q * (flat.numel() - 1)) + 1)


@register(
    "arcee_fusion",
    params=(),
    family="standard",
    paper="Arcee AI, Meet MergeKit v0.1: Arcee Fusion, arcee.ai blog 2025; "
    "Goddard et al., Arcee's MergeKit, EMNLP Industry 2024",
    formula="s = |θ_1 − θ_base| · KL(softmax θ_1 ‖ softmax θ_base); "
    "τ = median(s) + 1.5 (Q3(s) − Q1(s)); θ = θ_base + (θ_1 − θ_base) · [s ≥ τ]",
    needs_base=True,
    min_inputs=1,
    max_inputs=1,
)
def arcee_fusion(tm: TensorMerge) -> torch.Tensor:
    """Fuse the input's changes whose importance passes the IQR outlier threshold (exact quantiles)."""
    base = require_base(tm, "arcee_fusion")
    other = tm.inputs[0]
    if other.numel() == 0:
        return base.clone()
    scores = fusion_importance(other, base)
    flat = scores.reshape(-1)
    q1, med, q3 = (quantile_floor(flat, q) for q in (0.25, 0.5, 0.75))
    mask = scores >= med + 1.5 * (q3 - q1)
    return base + (other - base) * mask
