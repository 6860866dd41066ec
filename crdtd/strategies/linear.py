"""Weighted averaging and task arithmetic: the simplest members of the standard family.

All three are elementwise (entry j of the result reads entry j of the inputs and base only),
so the engine may merge them block by block.
"""

from __future__ import annotations

import torch

from crdtd.strategies._common import nonzero_total, per_model, require_base, weighted_sum
from crdtd.strategies._gta import combine, decide_keeps
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

WEIGHT = Param("weight", float, 1.0, "per-model weight", per_model=True)


@register(
    "linear",
    params=(WEIGHT, Param("normalize", bool, True, "divide by the sum of weights")),
    family="standard",
    paper="Wortsman et al., Model soups: averaging weights of multiple fine-tuned models "
    "improves accuracy without increasing inference time, ICML 2022",
    formula="θ = Σ_i w_i θ_i / Σ_i w_i  (no division when normalize=false)",
    elementwise=True,
    uses_base=False,
    propagates_nonfinite=True,
    raw_inputs=True,
)
def linear(tm: TensorMerge) -> torch.Tensor:
    """Weighted mean θ = Σ w_i θ_i / Σ w_i (weight=1.0, normalize=true); the base is unused."""
    w = per_model(tm, "weight", 1.0)
    if tm.params.get("normalize", True):
        w = w / nonzero_total(w, "linear")
    return weighted_sum(w, tm.inputs, tm.out, tm.raw)


@register(
    "task_arithmetic",
    params=(
        WEIGHT,
        Param("lambda", float, 1.0, "scale applied to the merged task vector"),
        Param("normalize", bool, False, "divide the task-vector sum by the sum of weights"),
    ),
    family="standard",
    paper="Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
    formula="θ = θ_base + λ Σ_i w_i (θ_i − θ_base)  (÷ Σ w_i when normalize=true)",
    needs_base=True,
    elementwise=True,
    propagates_nonfinite=True,
)
def task_arithmetic(tm: TensorMerge) -> torch.Tensor:
    """θ = base + λ Σ w_i τ_i with τ_i = θ_i − base (weight=1.0, lambda=1.0, normalize=false)."""
    base = require_base(tm, "task_arithmetic")
    w = per_model(tm, "weight", 1.0)
    if tm.params.get("normalize", False):
        w = w / nonzero_total(w, "task_arithmetic")
    lam = float(tm.params.get("lambda", 1.0))
    return combine(
        tm, base, decide_keeps(tm, base, None), w, consensus=False, normalize=False, lam=lam
    )


@register(
    "passthrough",
    params=(Param("scale", float, 1.0, "multiply the single input by this factor"),),
    family="standard",
    paper="Goddard et al., Arcee's MergeKit: A Toolkit for Merging Large Language Models, "
    "EMNLP Industry 2024",
    formula="θ = scale · θ_1  (exactly one input)",
    min_inputs=1,
    max_inputs=1,
    elementwise=True,
    uses_base=False,
    propagates_nonfinite=True,
)
def passthrough(tm: TensorMerge) -> torch.Tensor:
    """Copy the single input unchanged (scale=1.0); used for layer stacking rules."""
    return tm.inputs[0] * float(tm.params.get("scale", 1.0))
