"""Robust strategies meet trust: which aggregator a namespace uses, with which weights.

`plan_materialisation` is pure. It gates the namespace's contributions, then weighs each
accepted contribution i of author a by

    w_i ∝ t(a) · n_i / c_a

t(a) the author's trust (when the namespace is trust-weighted, else 1), n_i its declared
`num_examples` (when example-weighted, else 1), c_a the number of a's accepted contributions
in the namespace (so copies gain an author nothing). Weights are exact fractions summing to
1; the strategy receives them as its per-model weight parameter (`num_examples` for FedAvg,
`weight` for geometric median and the linear family). A stale round update's weight is also
multiplied by its `factor`, 1/(1 + s) (crdtd.kinds.rounds). Order-statistic aggregators (median,
trimmed mean, Krum, Multi-Krum, Bulyan, centered clipping) take no weights: trust acts on
them through gating only. Their Byzantine count `f`, unless the policy fixes it, is the
largest the rule supports for k inputs, capped at ⌊(k−1)/3⌋; with too few inputs for even
f = 0 the plan falls back to the coordinate-wise median.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from crdtd.errors import StrategyParamError
from crdtd.trust.gating import Exclusion, NamespacePolicy, Revocations, gate
from crdtd.trust.scores import SCALE, TrustScores

__all__ = [
    "ROBUST_STRATEGIES",
    "MaterialisePlan",
    "WeightedInput",
    "plan_materialisation",
    "robust_params",
]

ROBUST_STRATEGIES = (
    "bulyan",
    "centered_clip",
    "fedavg",
    "geometric_median",
    "krum",
    "median",
    "multi_krum",
    "trimmed_mean",
)
"""The Byzantine-robust aggregators a namespace may select (crdtd.strategies.robust)."""

_F_FACTOR = {"krum": 2, "multi_krum": 2, "bulyan": 4}  # needs k >= factor·f + 3
_INT_WEIGHT_SCALE = 1 << 40


@dataclass(frozen=True)
class WeightedInput:
    """A visible contribution of the namespace: content id, author, declared examples, and
    a factor its weight is multiplied by (a stale round update's 1/(1 + s))."""

    content_id: bytes
    author: bytes
    num_examples: int | None = None
    factor: Fraction = Fraction(1)


@dataclass(frozen=True)
class MaterialisePlan:
    """What crdtd.model should merge: strategy, params, inputs in order, and their weights."""

    strategy: str
    params: Mapping[str, Any]
    content_ids: tuple[bytes, ...]
    authors: tuple[bytes, ...]
    weights: tuple[Fraction, ...]
    model_params: tuple[Mapping[str, Any], ...]
    excluded: tuple[Exclusion, ...]
    notes: tuple[str, ...] = field(default=())

    def schema(self) -> dict[str, Any]:
        """A `ModelMergeSchema` mapping: this strategy and params for every tensor."""
        return {"default": {"strategy": self.strategy, "params": dict(self.params)}}

    def float_weights(self) -> tuple[float, ...]:
        """The weights as correctly rounded floats (for display and float-typed params)."""
        return tuple(float(w) for w in self.weights)


def _weight_param(strategy: str) -> tuple[str, type] | None:
    """The per-model weight parameter `strategy` declares, if any."""
    if strategy == "fedavg":
        return ("num_examples", int)
    if strategy in ROBUST_STRATEGIES and strategy != "geometric_median":
        return None
    try:
        from crdtd.strategies import registry
    except ImportError:  # the model extra (torch) is not installed
        return ("weight", float) if strategy == "geometric_median" else None
    for p in registry.get(strategy).per_model_params():
        if p.name == "weight" and p.kind is float:
            return ("weight", float)
    return None


def robust_params(
    strategy: str, k: int, given: Mapping[str, Any]
) -> tuple[str, dict[str, Any], str]:
    """(strategy, params, note) with `f` chosen for k inputs when the policy did not fix it."""
    params = dict(given)
    factor = _F_FACTOR.get(strategy)
    if factor is None:
        return strategy, params, ""
    if "f" in params:
        return strategy, params, ""
    most = (k - 3) // factor
    if most < 0:
        return "median", {}, f"{strategy} needs at least 3 inputs, got {k}: median instead"
    f = min(most, max(0, (k - 1) // 3))
    params["f"] = f
    return strategy, params, f"{strategy} with f={f} for {k} inputs"


def plan_materialisation(
    inputs: Iterable[WeightedInput],
    scores: TrustScores,
    revocations: Revocations,
    policy: NamespacePolicy,
) -> MaterialisePlan:
    """Gate the inputs and weigh the survivors; contributions sorted by content id."""
    items = sorted({i.content_id: i for i in inputs}.values(), key=lambda i: i.content_id)
    accepted, excluded = gate(scores, revocations, policy, {i.author for i in items})
    ok = set(accepted)
    kept = [i for i in items if i.author in ok]
    per_author = Counter(i.author for i in kept)
    raw: list[Fraction] = []
    for i in kept:
        t = scores.score(i.author, policy.dimensions) if policy.trust_weighted else SCALE
        n = i.num_examples if policy.example_weighted and i.num_examples is not None else 1
        if n < 0:
            raise StrategyParamError(
                f"contribution {i.content_id.hex()[:16]}: num_examples {n} is negative"
            )
        raw.append(Fraction(t * n, per_author[i.author]) * i.factor)
    total = sum(raw, Fraction(0))
    weights = tuple(w / total for w in raw) if total > 0 else tuple(Fraction(0) for _ in raw)
    strategy, params, note = robust_params(policy.strategy, len(kept), policy.strategy_params)
    notes = (note,) if note else ()
    wp = _weight_param(strategy)
    model_params: tuple[Mapping[str, Any], ...]
    if wp is None:
        model_params = tuple({} for _ in kept)
    elif wp[1] is int:
        model_params = tuple({wp[0]: int(w * _INT_WEIGHT_SCALE)} for w in weights)
    else:
        model_params = tuple({wp[0]: float(w)} for w in weights)
    return MaterialisePlan(
        strategy=strategy,
        params=params,
        content_ids=tuple(i.content_id for i in kept),
        authors=tuple(i.author for i in kept),
        weights=weights,
        model_params=model_params,
        excluded=excluded,
        notes=notes,
    )
