"""Learning loops for the data-driven strategies: AdaMerging, AdaRank and DAM coefficients.

These need a model forward on data, which a merge strategy never has. Each takes the
weights as name → tensor maps plus `loss_fn(merged) -> scalar`, a differentiable function you
write (e.g. `entropy_loss` of `torch.func.functional_call(model, merged, batch)` on unlabeled
test data for AdaMerging/AdaRank, or DAM's KL-to-each-model loss). They run Adam for a fixed
number of steps and return per-model maps ready to save as the strategies' extras. Given a
deterministic `loss_fn`, the result is deterministic; nothing here draws random numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of softmax(logits) over the batch: AdaMerging's surrogate loss."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def _names(
    base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]]
) -> list[str]:
    names = sorted(base)
    for i, m in enumerate(models):
        missing = [n for n in names if n not in m]
        if missing:
            raise KeyError(f"model {i} lacks tensors {missing[:3]}")
    return names


def learn_adamerging(
    base: Mapping[str, torch.Tensor],
    models: Sequence[Mapping[str, torch.Tensor]],
    loss_fn: LossFn,
    *,
    steps: int = 500,
    lr: float = 1e-3,
    init: float = 0.3,
    layer_wise: bool = True,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> list[dict[str, torch.Tensor]]:
    """AdaMerging (Yang et al. 2024): learn λ_i (per tensor, or per model) minimising `loss_fn`.

    The merge is θ = θ_0 + Σ_i λ_i τ_i with λ clamped to `clamp` as in the reference code.
    Returns, per model, tensor name → scalar λ: the `coefficient` extras of `ada_merging`.
    """
    names = _names(base, models)
    tvs = [{n: (m[n] - base[n]).detach().float() for n in names} for m in models]
    width = len(names) if layer_wise else 1
    device = base[names[0]].device
    raw = torch.full((len(models), width), float(init), device=device, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr)

    def coefficients() -> torch.Tensor:
        return raw.clamp(*clamp) if clamp is not None else raw

    for _ in range(steps):
        lam = coefficients()
        merged = {
            n: base[n].float()
            + sum(lam[i, j if layer_wise else 0] * tvs[i][n] for i in range(len(models)))
            for j, n in enumerate(names)
        }
        loss = loss_fn(merged)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = coefficients().detach()
    return [
        {n: final[i, j if layer_wise else 0].clone().reshape(()) for j, n in enumerate(names)}
        for i in range(len(models))
    ]


def learn_adarank(
    base: Mapping[str, torch.Tensor],
    models: Sequence[Mapping[str, torch.Tensor]],
    loss_fn: LossFn,
    *,
    steps: int = 500,
    lr: float = 1e-3,
    prior: float = 0.3,
    initial_rank_ratio: float = 1.0,
    temperature: float = 10.0,
    base_mode: str = "ta",
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """AdaRank (Lee et al. 2025): learn singular-component masks and coefficients.

    Mask logits start at +0.1 for the first ⌊ratio·r⌋ components and −0.1 for the rest
    (ratio 0 means 1/k), gate through sigmoid(m / temperature) with a straight-through
    hard threshold at 0.5, and λ starts at `prior`; all are trained with Adam on `loss_fn`.
    Returns `(rank_masks, coefficients)`: per model, tensor name → 0/1 vector of length
    min(m, n) for matrices (1-D tensors get none), and tensor name → scalar λ.
    """
    names = _names(base, models)
    k = len(models)
    origin = {n: base[n].float() for n in names}
    if base_mode == "cart":
        origin = {n: origin[n] + sum(m[n].float() - origin[n] for m in models) / k for n in names}
    ratio = initial_rank_ratio if initial_rank_ratio > 0 else 1.0 / k
    parts: list[dict[str, tuple[torch.Tensor, ...]]] = []
    logits: dict[tuple[int, str], torch.Tensor] = {}
    for i, m in enumerate(models):
        entry: dict[str, tuple[torch.Tensor, ...]] = {}
        for n in names:
            tv = (m[n].float() - origin[n]).detach()
            if tv.dim() >= 2:
                u, s, vh = torch.linalg.svd(tv.reshape(tv.shape[0], -1), full_matrices=False)
                entry[n] = (u, s, vh)
                init = torch.full((s.numel(),), -0.1, device=s.device)
                init[: int(s.numel() * ratio)] = 0.1
                logits[(i, n)] = init.requires_grad_(True)
            else:
                entry[n] = (tv,)
        parts.append(entry)
    lam = torch.full(
        (k, len(names)), float(prior), device=origin[names[0]].device, requires_grad=True
    )
    ordered = [logits[key] for key in sorted(logits)]
    opt = torch.optim.Adam([lam, *ordered], lr=lr)

    def task_tensor(i: int, n: str) -> torch.Tensor:
        piece = parts[i][n]
        if len(piece) == 1:
            return piece[0]
        u, s, vh = piece
        soft = torch.sigmoid(logits[(i, n)] / temperature)
        hard = (soft > 0.5).float()
        gate = soft + (hard - soft).detach()
        return ((u * (gate * s)) @ vh).reshape(origin[n].shape)

    for _ in range(steps):
        merged = {
            n: origin[n] + sum(lam[i, j] * task_tensor(i, n) for i in range(k))
            for j, n in enumerate(names)
        }
        loss = loss_fn(merged)
        opt.zero_grad()
        loss.backward()
        opt.step()
    masks = [
        {
            n: (torch.sigmoid(logits[(i, n)] / temperature) > 0.5).float().detach()
            for n in names
            if (i, n) in logits
        }
        for i in range(k)
    ]
    coefs = [
        {n: lam[i, j].detach().clone().reshape(()) for j, n in enumerate(names)} for i in range(k)
    ]
    return masks, coefs


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
}


def dam_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """DAM's optional non-linearity on the merging coefficients (none, tanh, sigmoid, relu)."""
    return _ACTIVATIONS[name]


def learn_dam(
    models: Sequence[Mapping[str, torch.Tensor]],
    loss_fn: LossFn,
    *,
    steps: int = 500,
    lr: float = 1e-3,
    init: float | None = None,
    non_linearity: str = "none",
) -> list[dict[str, torch.Tensor]]:
    """DAM (Gauthier-Caron et al. 2024): learn per-column coefficients c_i minimising `loss_fn`.

    The merge is θ = Σ_i f(c_i) ⊙ θ_i with c_i broadcast along the last dimension (one per
    input feature; a scalar for 0-D tensors), starting at `init` (default 1/k). Returns, per
    model, tensor name → raw c_i: the `dam_coefficient` extras of `dam` (use the same
    `non_linearity` there).
    """
    names = sorted(models[0])
    k = len(models)
    start = 1.0 / k if init is None else float(init)
    act = dam_activation(non_linearity)
    coefs = {
        (i, n): torch.full(
            (models[0][n].shape[-1],) if models[0][n].dim() else (),
            start,
            device=models[0][n].device,
            requires_grad=True,
        )
        for i in range(k)
        for n in names
    }
    opt = torch.optim.Adam([coefs[key] for key in sorted(coefs)], lr=lr)
    for _ in range(steps):
        merged = {
            n: sum(act(coefs[(i, n)]) * models[i][n].float() for i in range(k)) for n in names
        }
        loss = loss_fn(merged)  # type: ignore[arg-type]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [{n: coefs[(i, n)].detach().clone() for n in names} for i in range(k)]
