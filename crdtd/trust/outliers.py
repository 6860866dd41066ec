"""Model-dimension evidence: contributions that are statistical outliers in their namespace.

For each contribution x_i (a task vector: the tensors minus the base when one is given,
flattened in sorted tensor-name order, float64), with r_i the coordinate-wise median of the
OTHER contributions:

- norm ratio `‖x_i‖ / ‖r_i‖` — large-norm noise and boosted updates stand out;
- cosine `⟨x_i, r_i⟩ / (‖x_i‖‖r_i‖)` — sign flips and unrelated updates stand out;
- collusion similarity: the largest cosine between x_i − m and x_j − m over contributions
  of other authors (m = median of all). Honest deviations are nearly orthogonal; colluders
  sending the same crafted update ("a little is enough", FoolsGold's observation) are ~1.

Deterministic on every platform: inputs sorted by content id, element-wise float64 ops,
and every reduction through `math.fsum` (correctly rounded, independent of SIMD or BLAS).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crdtd.errors import ConfigError, TensorMismatchError
from crdtd.trust.evidence import WEIGHT_UNIT, Observation

__all__ = [
    "ContributionStats",
    "ModelContribution",
    "Observation",
    "OutlierParams",
    "model_outliers",
    "outlier_observations",
]


@dataclass(frozen=True)
class OutlierParams:
    """Flag thresholds. `sybil_cosine=None` turns the collusion check off."""

    max_norm_ratio: float = 3.0
    min_norm_ratio: float = 0.0
    min_cosine: float = 0.0
    sybil_cosine: float | None = 0.99
    min_contributions: int = 3

    def __post_init__(self) -> None:
        if not (self.max_norm_ratio > 1.0 and 0.0 <= self.min_norm_ratio < 1.0):
            raise ConfigError("outlier norm ratios need 0 <= min_norm_ratio < 1 < max_norm_ratio")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"outlier min_cosine {self.min_cosine} is outside [-1, 1]")
        if self.sybil_cosine is not None and not 0.0 < self.sybil_cosine <= 1.0:
            raise ConfigError(f"outlier sybil_cosine {self.sybil_cosine} is outside (0, 1]")
        if self.min_contributions < 3:
            raise ConfigError("outlier detection needs min_contributions >= 3")

    @classmethod
    def for_federation(cls, members: int, **kw: Any) -> OutlierParams:
        """Thresholds that flag nothing until k ≥ 2L + 2 contributions are visible, L = ⌊(N−1)/3⌋.

        With at most L adversarial contributions among them, the others of any honest
        contribution are then a majority of honest ones, so its reference median is honest.
        """
        limit = max(0, (members - 1) // 3)
        return cls(min_contributions=max(3, 2 * limit + 2), **kw)


@dataclass(frozen=True)
class ModelContribution:
    """One contribution to a namespace: content id, author key id, tensors by name."""

    content_id: bytes
    author: bytes
    tensors: Mapping[str, Any]


@dataclass(frozen=True)
class ContributionStats:
    """The statistics of one contribution and the flags they raised (empty = fine)."""

    content_id: bytes
    author: bytes
    norm_ratio: float
    cosine: float
    similarity: float
    flags: tuple[str, ...]

    @property
    def outlier(self) -> bool:
        """True when any flag was raised."""
        return bool(self.flags)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return math.fsum(np.multiply(a, b).tolist())


def _norm(a: np.ndarray) -> float:
    return math.sqrt(_dot(a, a))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = _norm(a), _norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, _dot(a, b) / na / nb))


def _flatten(
    c: ModelContribution,
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    base: Mapping[str, Any] | None,
) -> np.ndarray:
    parts = []
    if sorted(c.tensors) != names:
        missing = sorted(set(names) ^ set(c.tensors))
        raise TensorMismatchError(
            f"contribution {c.content_id.hex()[:16]}: tensors differ from the others ({missing[0]!r})"
        )
    for name in names:
        arr = np.asarray(c.tensors[name], dtype=np.float64)
        if arr.shape != shapes[name]:
            raise TensorMismatchError(
                f"contribution {c.content_id.hex()[:16]}: tensor {name!r} has shape "
                f"{arr.shape}, expected {shapes[name]}"
            )
        if base is not None:
            arr = arr - np.asarray(base[name], dtype=np.float64)
        parts.append(arr.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def model_outliers(
    contributions: Sequence[ModelContribution],
    base: Mapping[str, Any] | None = None,
    params: OutlierParams | None = None,
) -> tuple[ContributionStats, ...]:
    """Stats for every contribution, sorted by content id (none flagged below the minimum count)."""
    params = params or OutlierParams()
    ordered = sorted(contributions, key=lambda c: c.content_id)
    if not ordered:
        return ()
    names = sorted(ordered[0].tensors)
    shapes = {n: tuple(np.asarray(ordered[0].tensors[n]).shape) for n in names}
    if base is not None:
        for n in names:
            if n not in base:
                raise TensorMismatchError(f"base model has no tensor {n!r}")
    x = np.stack([_flatten(c, names, shapes, base) for c in ordered])
    k = len(ordered)
    enough = k >= params.min_contributions
    centre = np.median(x, axis=0)
    dev = x - centre
    out = []
    for i, c in enumerate(ordered):
        others = np.delete(x, i, axis=0)
        ref = np.median(others, axis=0) if len(others) else np.zeros_like(x[i])
        n_ref, n_x = _norm(ref), _norm(x[i])
        ratio = (math.inf if n_x > 0 else 1.0) if n_ref == 0.0 else n_x / n_ref
        cos = _cosine(x[i], ref)
        sim = max(
            (_cosine(dev[i], dev[j]) for j in range(k) if ordered[j].author != c.author),
            default=0.0,
        )
        flags: list[str] = []
        if enough:
            if ratio > params.max_norm_ratio:
                flags.append("norm_high")
            if ratio < params.min_norm_ratio:
                flags.append("norm_low")
            if cos < params.min_cosine:
                flags.append("cosine")
            if params.sybil_cosine is not None and sim >= params.sybil_cosine:
                flags.append("collusion")
        out.append(ContributionStats(c.content_id, c.author, ratio, cos, sim, tuple(flags)))
    return tuple(out)


def outlier_observations(
    stats: Sequence[ContributionStats], namespace: str, weight: int = -WEIGHT_UNIT
) -> list[Observation]:
    """One model-dimension accusation per flagged contribution, sorted by content id."""
    out = []
    for s in sorted(stats, key=lambda s: s.content_id):
        if not s.outlier:
            continue
        reason = (
            f"model outlier in {namespace[:200]}: contribution {s.content_id.hex()[:16]} "
            f"norm_ratio={s.norm_ratio:.4g} cosine={s.cosine:.4g} similarity={s.similarity:.4g} "
            f"({', '.join(s.flags)})"
        )
        out.append(Observation(s.author, "model", weight, reason))
    return out
