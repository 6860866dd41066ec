"""FedProx's proximal term (Li et al., Federated Optimization in Heterogeneous Networks, 2020).

A site's local objective becomes F_k(w) + (μ/2)·‖w − w_global‖²: local steps are pulled back
toward the round's global, which bounds client drift on non-IID data. Add `proximal_loss` to
the loss of every local step of a torch training loop (its gradient is μ·(w − w_global));
`crdtd.fl.tasks.fit` does the same for the bundled numpy MLP (`TrainConfig(mu=...)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["anchor_of", "proximal_loss"]


def anchor_of(parameters: Iterable[Any]) -> list[Any]:
    """Detached copies of the parameters at the start of the round (the global w_global)."""
    return [p.detach().clone() for p in parameters]


def proximal_loss(parameters: Iterable[Any], anchor: Iterable[Any], mu: float) -> Any:
    """(μ/2)·Σ‖w − w_global‖² over the model's parameters (a torch scalar)."""
    import torch

    params, fixed = list(parameters), list(anchor)
    if len(params) != len(fixed):
        from crdtd.errors import ConfigError

        raise ConfigError(f"FedProx anchor has {len(fixed)} tensors, the model {len(params)}")
    total = torch.zeros((), dtype=torch.float32)
    for w, w0 in zip(params, fixed):
        total = total + ((w - w0) ** 2).sum()
    return 0.5 * mu * total
