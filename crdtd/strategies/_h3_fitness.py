"""Fitness functions for the evolutionary strategies, behind a small name registry.

A fitness scores one candidate tensor for one `TensorMerge` (higher is better). It must be
pure: the same candidate and inputs give the same score. Register yours with
`@register_fitness("name")` and select it with the strategy parameter `fitness`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crdtd.errors import StrategyParamError
from crdtd.strategies._h3_common import as_matrix, check_shape, need_extra
from crdtd.strategies.base import TensorMerge

FitnessFn = Callable[[TensorMerge, torch.Tensor], float]

_FITNESS: dict[str, FitnessFn] = {}


def register_fitness(name: str) -> Callable[[FitnessFn], FitnessFn]:
    """Decorator: make `fn(tm, candidate) -> float` selectable as `fitness=name`."""

    def deco(fn: FitnessFn) -> FitnessFn:
        if name in _FITNESS:
            raise ValueError(f"fitness {name!r} registered twice")
        _FITNESS[name] = fn
        return fn

    return deco


def get_fitness(name: str, strategy: str) -> FitnessFn:
    """The fitness registered as `name`, or a `StrategyParamError` listing the known ones."""
    if name in _FITNESS:
        return _FITNESS[name]
    known = ", ".join(sorted(_FITNESS)) or "none"
    hint = "set parameter 'fitness'" if not name else f"unknown fitness {name!r}"
    raise StrategyParamError(
        f"strategy {strategy!r}: {hint} to a registered fitness function (known: {known}); "
        "register one with crdtd.strategies.adaptive.register_fitness"
    )


def fitness_names() -> list[str]:
    """Registered fitness names, sorted."""
    return sorted(_FITNESS)


@register_fitness("gram_regression")
def gram_regression(tm: TensorMerge, candidate: torch.Tensor) -> float:
    """−Σ_i ‖X_i (W − W_i)ᵀ‖² / Σ_i ‖X_i W_iᵀ‖²: how well W reproduces every model's outputs.

    Needs extra `gram` (G_i = X_iᵀX_i, `[in, in]`, or its diagonal) for tensors of rank >= 2,
    exactly as `regression_mean`. Tensors of rank < 2 have no input statistics; they are
    scored with G = I (relative squared distance to every model).
    """
    w = candidate.to(torch.float64)
    if tm.inputs.dim() < 3:
        diffs = [float(((w - x.double()) ** 2).sum()) for x in tm.inputs]
        scale = sum(float((x.double() ** 2).sum()) for x in tm.inputs) or 1.0
        return -sum(diffs) / scale
    wm = as_matrix(w)
    num = 0.0
    den = 0.0
    for i in range(tm.k):
        g = need_extra(tm, i, "gram", "gram_regression fitness").to(torch.float64)
        width = wm.shape[1]
        what = f"fitness gram_regression: extra 'gram' of model {i}, tensor {tm.name!r}"
        full = torch.diag(g) if g.dim() == 1 else g
        check_shape(full, (width, width), what)
        wi = as_matrix(tm.inputs[i]).to(torch.float64)
        diff = wm - wi
        num += float(((diff @ full) * diff).sum())
        den += float(((wi @ full) * wi).sum())
    return -num / (den or 1.0)
