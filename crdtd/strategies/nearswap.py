"""NearSwap: take the secondary model's value where it is already close to the base."""

from __future__ import annotations

import torch

from crdtd.strategies._common import require_base
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register


@register(
    "nearswap",
    params=(Param("t", float, 1e-4, "sameness threshold (> 0)", 1e-30, None),),
    family="standard",
    paper="alchemonaut, QuartetAnemoi-70B-t0.0001 (NearSwap), Hugging Face 2024; "
    "Goddard et al., Arcee's MergeKit, EMNLP Industry 2024",
    formula="w = clamp(t / |θ_base − θ_1|, 0, 1) (w = 1 where equal); θ = w θ_1 + (1 − w) θ_base",
    needs_base=True,
    min_inputs=1,
    max_inputs=1,
)
def nearswap(tm: TensorMerge) -> torch.Tensor:
    """NearSwap (t=1e-4): per entry, interpolate towards the input by t/|Δ| clamped to [0, 1]."""
    base = require_base(tm, "nearswap")
    other = tm.inputs[0]
    t = float(tm.params.get("t", 1e-4))
    w = torch.nan_to_num(t / (base - other).abs(), nan=1.0, posinf=1.0, neginf=1.0)
    w = w.clamp(0.0, 1.0)
    return w * other + (1.0 - w) * base
