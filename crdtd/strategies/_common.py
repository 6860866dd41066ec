"""Small shared helpers for strategy functions: per-model vectors and weighted sums."""

from __future__ import annotations

import numpy as np
import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies import _kernels as kernels
from crdtd.strategies.base import RawInputs, TensorBlocks, TensorMerge


def per_model(tm: TensorMerge | TensorBlocks, key: str, default: float) -> torch.Tensor:
    """Per-model parameter `key` as a float64 vector of length k.

    Falls back to the global value (or `default`) when the caller supplied no per-model rows.
    """
    if len(tm.model_params) == tm.k:
        return torch.tensor(
            [float(mp.get(key, tm.params.get(key, default))) for mp in tm.model_params],
            dtype=torch.float64,
        )
    return torch.full((tm.k,), float(tm.params.get(key, default)), dtype=torch.float64)


def weighted_sum(
    weights: torch.Tensor,
    stack: torch.Tensor,
    out: torch.Tensor | None = None,
    raw: RawInputs | None = None,
) -> torch.Tensor:
    """Σ_i w_i · stack[i] in float32 (`weights` is a length-k vector), into `out` if given.

    One multiply and k − 1 in-place `add_(alpha=w_i)`, in input order: every platform sums
    in the same order (a BLAS `tensordot` picks its own blocking). With `raw` (the block
    as bf16 bits, `stack` not yet filled) the fused kernel does the same operations on the
    bits widened tile by tile; without the kernels it widens them first.
    """
    w = weights.to(torch.float32).tolist()
    if raw is not None:
        if (
            kernels.enabled()
            and out is not None
            and out.dtype == torch.float32
            and out.device.type == "cpu"
            and out.is_contiguous()
        ):
            kernels.weighted_sum_block(raw.x, np.array(w, np.float32), out.numpy().reshape(-1))
            return out
        raw.widen()
    result = torch.mul(stack[0], w[0], out=out)
    for i in range(1, len(w)):
        result.add_(stack[i], alpha=w[i])
    return result


def nonzero_total(weights: torch.Tensor, strategy: str) -> float:
    """Σ w_i, raising when it is zero (a normalised weighted mean is then undefined)."""
    total = float(weights.sum())
    if abs(total) < 1e-12:
        raise StrategyParamError(
            f"strategy {strategy!r}: parameter 'weight' sums to zero; cannot normalise"
        )
    return total


def require_base(tm: TensorMerge, strategy: str) -> torch.Tensor:
    """The base tensor, or a `StrategyParamError` naming the strategy and tensor."""
    if tm.base is None:
        raise StrategyParamError(f"strategy {strategy!r} needs a base model (tensor {tm.name!r})")
    return tm.base
