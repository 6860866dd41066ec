"""Model Stock: interpolate the base towards the fine-tunes' average by their angle."""

from __future__ import annotations

import torch

from crdtd.strategies._common import require_base
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register


def stock_ratio(offsets: torch.Tensor) -> torch.Tensor:
    """t = N cos θ / (1 + (N−1) cos θ), cos θ the mean pairwise cosine of `[N, rows, d]` offsets."""
    n = offsets.shape[0]
    norms = torch.linalg.vector_norm(offsets, dim=-1)
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            dot = (offsets[i] * offsets[j]).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1.0, 1.0))
    cos = torch.stack(cosines).mean(dim=0)
    denom = 1.0 + (n - 1) * cos
    safe = torch.where(denom.abs() < 1e-12, torch.ones_like(denom), denom)
    return torch.where(denom.abs() < 1e-12, torch.zeros_like(cos), n * cos / safe)


@register(
    "model_stock",
    params=(Param("filter_wise", bool, False, "compute t per row instead of per tensor"),),
    family="standard",
    paper="Jang et al., Model Stock: All we need is just a few fine-tuned models, ECCV 2024",
    formula="cos θ = mean_{i<j} cos(θ_i − θ_0, θ_j − θ_0); t = N cos θ / (1 + (N−1) cos θ); "
    "θ = t · mean_i θ_i + (1 − t) θ_0",
    needs_base=True,
    min_inputs=2,
)
def model_stock(tm: TensorMerge) -> torch.Tensor:
    """Model Stock (filter_wise=false): θ = t·avg(θ_i) + (1−t)·θ_0 with the paper's t."""
    base = require_base(tm, "model_stock")
    shape = base.shape
    rows = shape[0] if tm.params.get("filter_wise", False) and base.dim() >= 1 else 1
    w0 = base.reshape(rows, -1).to(torch.float64)
    ws = tm.inputs.reshape(tm.k, rows, -1).to(torch.float64)
    t = stock_ratio(ws - w0.unsqueeze(0)).unsqueeze(-1)
    out = t * ws.mean(dim=0) + (1.0 - t) * w0
    return out.to(torch.float32).reshape(shape)
