"""Merges for forgetting and safety: NegMerge negation, SPUNGE, SafeMERGE and LED-Merging.

All work on task vectors τ_i = θ_i − θ_base and need a base. Safety statistics (an alignment
direction, gradient importance scores) come from data and arrive as extras.
"""

from __future__ import annotations

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
    ties_merge,
    top_fraction_mask,
)
from crdtd.strategies.base import Param, TensorMerge
from crdtd.strategies.registry import register

_FAMILY = "papers"


@register(
    "negative_merge",
    params=(
        Param("weight", float, 1.0, "per-model weight", per_model=True),
        Param("lambda", float, 1.0, "negation scale"),
        Param("consensus", bool, True, "keep only sign-consistent coordinates (NegMerge)"),
    ),
    family=_FAMILY,
    paper="Kim et al. 2025, NegMerge: Sign-Consensual Weight Merging for Machine Unlearning "
    "(ICML); Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR)",
    formula="θ = θ_0 − λ · [all sign(τ_i) equal] ⊙ Σ_i w_i τ_i / Σ_i w_i",
    needs_base=True,
)
def negative_merge(tm: TensorMerge) -> torch.Tensor:
    """Unlearning by negating task vectors fine-tuned on the data to forget.

    With `consensus` (NegMerge), the inputs are models fine-tuned on the forget set under
    different hyperparameters: only coordinates where every task vector has the same
    (non-zero) sign are kept, their weighted mean is negated. With `consensus=false` this is
    task-vector negation (Ilharco et al.): θ_0 − λ Σ_i w_i τ_i. Both agree for one input.
    """
    base = need_base(tm, "negative_merge")
    tv = tm.task_vectors()
    w = model_vector(tm, "weight")
    lam = float(tm.params["lambda"])
    if not tm.params["consensus"]:
        return base - lam * combine(w, tv)
    agree = (tv > 0).all(dim=0) | (tv < 0).all(dim=0)
    mean = combine(normalized(w, "negative_merge"), tv)
    return base - lam * torch.where(agree, mean, torch.zeros_like(mean))


@register(
    "split_unlearn_merge",
    params=(
        Param("weight", float, 1.0, "per-model weight", per_model=True),
        Param(
            "merge",
            str,
            "ties",
            "how the unlearned models are merged",
            choices=("ties", "task_arithmetic"),
        ),
        Param(
            "density", float, 0.2, "TIES top-k fraction kept per model", minimum=0.0, maximum=1.0
        ),
        Param("lambda", float, 1.0, "scale of the merged task vector"),
    ),
    family=_FAMILY,
    paper="Kadhe et al. 2024, Split, Unlearn, Merge: Leveraging Data Attributes for More "
    "Effective Unlearning in LLMs (SPUNGE)",
    formula="θ = θ_0 + λ · TIES(τ_1..τ_k), τ_i = θ_unlearned,i − θ_0",
    needs_base=True,
)
def split_unlearn_merge(tm: TensorMerge) -> torch.Tensor:
    """SPUNGE's merge step: the inputs are copies of the base each unlearned on one data split.

    The split and unlearning steps happen before (they need data); this merges the unlearned
    models' task vectors relative to the original model with TIES-Merging (trim to
    `density`, elect sign, disjoint mean), the merge the paper uses, or with plain task
    arithmetic (θ_0 + λ Σ w_i τ_i).
    """
    base = need_base(tm, "split_unlearn_merge")
    tv = tm.task_vectors()
    w = model_vector(tm, "weight")
    lam = float(tm.params["lambda"])
    if tm.params["merge"] == "task_arithmetic":
        return base + lam * combine(w, tv)
    return base + lam * ties_merge(tv, float(tm.params["density"]), w)


def _cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> float:
    """cos(a, b) as torch's `cosine_similarity`: a·b / (max(‖a‖, ε) max(‖b‖, ε))."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    na = max(float(torch.linalg.vector_norm(a)), eps)
    nb = max(float(torch.linalg.vector_norm(b)), eps)
    return float((a * b).sum()) / (na * nb)


def safety_cosine(delta: torch.Tensor, alignment: torch.Tensor) -> float:
    """SafeLoRA/SafeMERGE's measure: cos(C Δ, Δ) with C = V Vᵀ / ‖V‖_F (V = aligned − unaligned).

    Matrices of rank > 2 are read as `[shape[0], rest]`; vectors as one column. C is never
    formed: C Δ = V (Vᵀ Δ) / ‖V‖_F.
    """
    d = as_matrix(delta) if delta.dim() >= 2 else delta.reshape(-1, 1)
    v = as_matrix(alignment) if alignment.dim() >= 2 else alignment.reshape(-1, 1)
    v, d = v.double(), d.double()
    norm = float(torch.linalg.matrix_norm(v))
    projected = torch.zeros_like(d) if norm < 1e-9 else v @ (v.T @ d) / norm
    return _cosine(projected, d)


@register(
    "safe_merge",
    params=(
        Param("weight", float, 1.0, "per-model weight within its group", per_model=True),
        Param("safety", bool, False, "marks the safety-aligned model(s)", per_model=True),
        Param("threshold", float, 0.35, "merge a layer when its safety cosine is below this"),
        Param(
            "safety_weight",
            float,
            0.2,
            "share of the safety model in a merged layer",
            minimum=0.0,
            maximum=1.0,
        ),
    ),
    family=_FAMILY,
    paper="Djuhera et al. 2025, SafeMERGE: Preserving Safety Alignment in Fine-Tuned Large "
    "Language Models via Selective Layer-Wise Model Merging",
    formula="ρ = cos(CΔ_ft, Δ_ft); θ = θ_0 + (ρ < τ ? (1−s)Δ_ft + sΔ_safe : Δ_ft)",
    needs_base=True,
    min_inputs=2,
    needs_extras=("alignment",),
)
def safe_merge(tm: TensorMerge) -> torch.Tensor:
    """SafeMERGE: fall back towards a safety model only in layers that left the safety subspace.

    Inputs: fine-tuned model(s) and safety model(s) (per-model `safety=true`), all relative
    to the base. Extra `alignment` is V = W_aligned − W_unaligned for this tensor (e.g. chat
    minus pre-trained weights); every input carrying it must carry the same tensor. When the
    fine-tuned update Δ_ft leaves the subspace C = VVᵀ/‖V‖_F (cosine below `threshold`), the
    layer becomes (1 − s) Δ_ft + s Δ_safe (the paper's linear merge, here on full updates);
    otherwise Δ_ft is kept. Several models in a group are averaged by `weight`.
    """
    base = need_base(tm, "safe_merge")
    flags = [bool(mp["safety"]) for mp in tm.model_params]
    ft = [i for i in range(tm.k) if not flags[i]]
    safe = [i for i in range(tm.k) if flags[i]]
    if not safe or not ft:
        raise StrategyParamError(
            f"safe_merge (tensor {tm.name!r}): needs at least one model with per-model "
            f"safety=true and one without; got {len(safe)} safety and {len(ft)} fine-tuned"
        )
    alignment = need_extra(tm, 0, "alignment", "safe_merge")
    check_shape(
        alignment,
        tuple(tm.inputs.shape[1:]),
        f"safe_merge: extra 'alignment' of tensor {tm.name!r}",
    )
    for i in range(1, tm.k):
        other = need_extra(tm, i, "alignment", "safe_merge")
        if other.shape != alignment.shape or not torch.equal(other, alignment):
            raise StrategyParamError(
                f"safe_merge: extra 'alignment' of tensor {tm.name!r} differs between "
                f"model 0 and model {i}; it must be the same V for all inputs"
            )
    tv = tm.task_vectors()
    w = model_vector(tm, "weight")
    d_ft = combine(normalized(w[ft], "safe_merge"), tv[ft])
    d_safe = combine(normalized(w[safe], "safe_merge"), tv[safe])
    rho = safety_cosine(d_ft, alignment)
    if rho < float(tm.params["threshold"]):
        s = float(tm.params["safety_weight"])
        return base + (1.0 - s) * d_ft + s * d_safe
    return base + d_ft


@register(
    "led_merge",
    params=(
        Param("weight", float, 1.0, "per-model weight", per_model=True),
        Param(
            "density",
            float,
            0.1,
            "fraction of neurons elected per model",
            per_model=True,
            minimum=0.0,
            maximum=1.0,
        ),
        Param("lambda", float, 1.0, "scale of the merged task vector"),
    ),
    family=_FAMILY,
    paper="Ma et al. 2025, LED-Merging: Mitigating Safety-Utility Conflicts in Model Merging "
    "with Location-Election-Disjoint (ACL)",
    formula="M_i = top_r(I_base,i) ∧ top_r(I_i); M̂_i = M_i ∧ ¬∨_{j≠i} M_j; "
    "θ = θ_0 + λ Σ_i w_i M̂_i ⊙ τ_i",
    needs_base=True,
    needs_extras=("importance", "base_importance"),
)
def led_merge(tm: TensorMerge) -> torch.Tensor:
    """LED-Merging: keep the neurons each task both needs and owns alone, then add them up.

    Location (gradient attribution, e.g. SNIP |θ ⊙ ∇L| on each task's data) needs data, so
    the scores arrive as extras: `importance` (fine-tuned model i on task i's data) and
    `base_importance` (base model on task i's data), both of the tensor's shape. Election
    keeps the top-`density` fraction under both scores (ties at the cut kept); Disjoint
    drops neurons elected by more than one task; the masked task vectors are summed.
    """
    base = need_base(tm, "led_merge")
    shape = tuple(tm.inputs.shape[1:])
    elected = []
    for i in range(tm.k):
        score = need_extra(tm, i, "importance", "led_merge").to(torch.float32)
        base_score = need_extra(tm, i, "base_importance", "led_merge").to(torch.float32)
        check_shape(score, shape, f"led_merge: extra 'importance' of model {i}, tensor {tm.name!r}")
        check_shape(
            base_score,
            shape,
            f"led_merge: extra 'base_importance' of model {i}, tensor {tm.name!r}",
        )
        r = float(tm.model_params[i]["density"])
        elected.append(top_fraction_mask(score, r) & top_fraction_mask(base_score, r))
    masks = torch.stack(elected)
    count = masks.sum(dim=0)
    owned = masks & (count == 1).unsqueeze(0)
    w = model_vector(tm, "weight")
    tv = tm.task_vectors() * owned
    return base + float(tm.params["lambda"]) * combine(w, tv)
