"""Helpers shared by the paper strategies: typed input checks, matrix views and TIES steps.

Every helper is a pure function of its arguments; none touches global RNG state.
"""

from __future__ import annotations

import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies.base import TensorMerge


def need_base(tm: TensorMerge, strategy: str) -> torch.Tensor:
    """The base tensor, or a `StrategyParamError` naming the strategy and the tensor."""
    if tm.base is None:
        raise StrategyParamError(f"strategy {strategy!r} needs a base model (tensor {tm.name!r})")
    return tm.base


def need_extra(tm: TensorMerge, i: int, key: str, strategy: str) -> torch.Tensor:
    """Extra `key` of contribution i, or a `StrategyParamError` naming key, model and tensor."""
    value = tm.extra(i, key)
    if value is None:
        raise StrategyParamError(
            f"strategy {strategy!r} needs extra {key!r} for tensor {tm.name!r} "
            f"from every input; model {i} has none"
        )
    return value


def check_shape(value: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    """Raise `StrategyParamError` when `value` does not have `shape`."""
    if tuple(value.shape) != tuple(shape):
        raise StrategyParamError(f"{what} has shape {list(value.shape)}, expected {list(shape)}")


def model_vector(tm: TensorMerge, key: str) -> torch.Tensor:
    """Per-model parameter `key` as a float64 vector of length k."""
    return torch.tensor([float(mp[key]) for mp in tm.model_params], dtype=torch.float64)


def normalized(weights: torch.Tensor, strategy: str) -> torch.Tensor:
    """weights / Σ weights; raises when the sum is zero (a weighted mean is then undefined)."""
    total = float(weights.sum())
    if abs(total) < 1e-12:
        raise StrategyParamError(
            f"strategy {strategy!r}: per-model 'weight' sums to zero; cannot normalise"
        )
    return weights / total


def combine(weights: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i · stack[i] in float32 (`weights` is a length-k vector)."""
    w = weights.to(device=stack.device, dtype=torch.float32)
    return torch.tensordot(w, stack.to(torch.float32), dims=1)


def rows(weights: torch.Tensor, ndim: int) -> torch.Tensor:
    """A length-k vector reshaped to broadcast over a `[k, *shape]` stack of rank `ndim`."""
    return weights.reshape(-1, *([1] * (ndim - 1)))


def as_matrix(x: torch.Tensor) -> torch.Tensor:
    """2-D view of a tensor of rank >= 2: `[shape[0], prod(rest)]`."""
    return x.reshape(x.shape[0], -1)


def top_fraction_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of entries whose score is >= the ⌊fraction·n⌋-th largest (ties at the cut kept).

    Uses an order statistic (`kthvalue`), never a full sort. A fraction keeping no entry
    gives an all-False mask.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    keep = int(fraction * n)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, n - keep + 1).values
    return scores >= threshold


def ties_merge(vectors: torch.Tensor, density: float, weights: torch.Tensor) -> torch.Tensor:
    """TIES-Merging of `[k, *shape]` task vectors (Yadav et al. 2023): trim, elect, disjoint mean.

    Trim keeps each vector's top-`density` entries by magnitude; the elected sign is that of the
    summed trimmed vectors (a zero sum takes the sign of the total mass); the result averages,
    weighted by `weights`, only the kept entries that agree with the elected sign.
    """
    trimmed = torch.stack([v * top_fraction_mask(v.abs(), density) for v in vectors])
    w = rows(weights.to(device=trimmed.device, dtype=torch.float32), trimmed.dim())
    total = (trimmed * w).sum(dim=0)
    sign = torch.sign(total)
    sign = torch.where(sign == 0, torch.sign(total.sum()), sign)
    agree = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    wsum = (w * agree).sum(dim=0)
    num = (trimmed * w * agree).sum(dim=0)
    safe = torch.where(wsum != 0, wsum, torch.ones_like(wsum))
    return torch.where(wsum != 0, num / safe, torch.zeros_like(num))
