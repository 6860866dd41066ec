"""RAM: average parameters that several agents changed, keep the ones only one agent changed."""

from __future__ import annotations

import torch

from crdtd.strategies._common import require_base
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

_PAPER = (
    "Yuan et al., Behavior Knowledge Merge in Reinforced Agentic Models (Reinforced Agent "
    "Merging), arXiv 2601.13572, 2026"
)
EPSILON = Param("epsilon", float, 1e-5, "|τ| above which an entry counts as changed", 0.0, None)


def _ram(tm: TensorMerge, strategy: str, r: float, alpha: float) -> torch.Tensor:
    """Shared entries get the mean of the contributors; unique entries get λ_i·τ_i."""
    base = require_base(tm, strategy)
    eps = float(tm.params.get("epsilon", 1e-5))
    tvs = (tm.inputs - base.unsqueeze(0)).reshape(tm.k, -1)
    changed = tvs.abs() > eps
    counts = changed.sum(dim=0)
    shared = counts > 1
    unique = counts == 1
    tvs = tvs * changed
    shared_mean = (tvs * shared).sum(dim=0) / counts.clamp(min=1)
    if r == 0.0:
        scale = torch.ones(tm.k, dtype=torch.float64, device=tvs.device)
    else:
        n_shared = (changed & shared).sum(dim=1).to(torch.float64)
        n_unique = (changed & unique).sum(dim=1).to(torch.float64)
        rho = n_shared / n_unique.clamp(min=eps)
        scale = 1.0 + r * rho.clamp(0.0, alpha)
    unique_part = (tvs * unique * scale.to(torch.float32).to(tvs.device).unsqueeze(1)).sum(dim=0)
    return base + (shared_mean + unique_part).reshape(base.shape)


@register(
    "ram",
    params=(EPSILON,),
    family="standard",
    paper=_PAPER,
    formula="τ_i = θ_i − θ_base, c = #{i : |τ_i| > ε}; θ = θ_base + Σ_{c=1} τ_i + Σ_{c>1} τ_i / c",
    needs_base=True,
)
def ram(tm: TensorMerge) -> torch.Tensor:
    """RAM (epsilon=1e-5): mean over agents on shared entries, unique entries kept whole."""
    return _ram(tm, "ram", 0.0, 0.0)


@register(
    "ramplus_tl",
    params=(
        Param("r", float, 0.1, "rescaling strength for unique entries", 0.0, None),
        Param("alpha", float, 0.2, "cap on the overlap ratio ρ", 0.0, None),
        EPSILON,
    ),
    family="standard",
    paper=_PAPER,
    formula="ρ_i = #shared_i / #unique_i; λ_i = 1 + r · clamp(ρ_i, 0, α); "
    "θ = θ_base + Σ_{c=1} λ_i τ_i + Σ_{c>1} τ_i / c  (tensor-local counts)",
    needs_base=True,
)
def ramplus_tl(tm: TensorMerge) -> torch.Tensor:
    """RAM+ tensor-local (r=0.1, alpha=0.2): unique entries rescaled by 1 + r·min(ρ, α)."""
    return _ram(
        tm, "ramplus_tl", float(tm.params.get("r", 0.1)), float(tm.params.get("alpha", 0.2))
    )
