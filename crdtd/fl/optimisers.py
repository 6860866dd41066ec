"""Server-side optimisers next to FedAvg, as Flower ships them (flwr 1.42.0).

Each round the aggregate (FedAvg of the round's contributions) and the previous global give
the pseudo-gradient Δ_t = aggregate − x_{t−1}; the optimiser turns it into the next global.
The state (momentum m, second moment v) is a deterministic function of the chain of globals
and aggregates, carried from round to round next to the global, never read from a clock:

- FedAvgM (Hsu et al., 2019): v_t = β·v_{t−1} + (x_{t−1} − aggregate) (v_1 = that
  difference), x_t = x_{t−1} − η·v_t. Flower: `server_momentum` β = 0, `server_learning_rate`
  η = 1 by default (plain FedAvg).
- FedAdagrad, FedAdam, FedYogi (Reddi et al., Adaptive Federated Optimization, ICLR 2021,
  Algorithm 2): m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t, then
  Adagrad v_t = v_{t−1} + Δ_t², Adam v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²,
  Yogi v_t = v_{t−1} − (1 − β₂)·Δ_t²·sign(v_{t−1} − Δ_t²),
  and x_t = x_{t−1} + η·m_t / (√v_t + τ). Flower's FedAdam also scales η by the bias
  correction √(1 − β₂^(t+1)) / (1 − β₁^(t+1)) (t = the round); so does this one, as flwr
  does, unless `bias_correction=False`.

Defaults are Flower's: FedAdam η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 1e−9; FedYogi η = 0.01,
τ = 1e−3; FedAdagrad η = 0.1, β₁ = 0, τ = 1e−9. Arithmetic is numpy on the tensors' own
dtype, element by element (no reductions), so every node gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from crdtd.errors import ConfigError

__all__ = ["OPTIMISERS", "ServerOptimiser", "server_step"]

OPTIMISERS = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi")

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ServerOptimiser:
    """Which server optimiser and its hyperparameters (None: Flower's default for it)."""

    name: str = "fedavg"
    eta: float | None = None
    beta_1: float | None = None
    beta_2: float | None = None
    tau: float | None = None
    momentum: float = 0.0
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.name not in OPTIMISERS:
            raise ConfigError(
                f"unknown server optimiser {self.name!r} (known: {', '.join(OPTIMISERS)})"
            )
        for key in ("eta", "tau"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"server optimiser {key} must be positive, got {value}")
        for key in ("beta_1", "beta_2", "momentum"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"server optimiser {key} must be in [0, 1), got {value}")

    def hyper(self) -> dict[str, float]:
        """The effective hyperparameters (Flower's defaults filled in)."""
        defaults = {
            "fedavg": {},
            "fedavgm": {"eta": 1.0},
            "fedadagrad": {"eta": 0.1, "beta_1": 0.0, "beta_2": 0.0, "tau": 1e-9},
            "fedadam": {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9},
            "fedyogi": {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
        }[self.name]
        out = dict(defaults)
        for key in ("eta", "beta_1", "beta_2", "tau"):
            value = getattr(self, key)
            if value is not None and key in defaults:
                out[key] = value
        if self.name == "fedavgm":
            out["momentum"] = self.momentum
        return out


def server_step(
    opt: ServerOptimiser,
    current: Arrays,
    aggregate: Arrays,
    state: Arrays,
    round_: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(next global, next state) from the previous global `current`, this round's FedAvg
    `aggregate` and the state the previous round left (`{}` before the first round).

    State keys are `m/<tensor>` and `v/<tensor>`; `round_` counts from 1.
    """
    if sorted(current) != sorted(aggregate):
        missing = sorted(set(current) ^ set(aggregate))
        raise ConfigError(f"server optimiser: aggregate and global differ in tensor {missing[0]!r}")
    h = opt.hyper()
    if opt.name == "fedavg":
        return {k: np.asarray(aggregate[k]) for k in sorted(aggregate)}, {}
    new: dict[str, np.ndarray] = {}
    nxt: dict[str, np.ndarray] = {}
    if opt.name == "fedavgm":
        for k in sorted(current):
            grad = current[k] - aggregate[k]
            if h["momentum"] > 0.0:
                prev = state.get(f"m/{k}")
                grad = grad if prev is None else h["momentum"] * prev + grad
                nxt[f"m/{k}"] = grad
            new[k] = current[k] - h["eta"] * grad
        return new, nxt
    b1, b2, eta, tau = h["beta_1"], h["beta_2"], h["eta"], h["tau"]
    if opt.name == "fedadam" and opt.bias_correction:
        eta = eta * np.sqrt(1 - np.power(b2, round_ + 1.0)) / (1 - np.power(b1, round_ + 1.0))
    for k in sorted(current):
        delta = aggregate[k] - current[k]
        m = state.get(f"m/{k}", np.zeros_like(delta))
        v = state.get(f"v/{k}", np.zeros_like(delta))
        m = np.multiply(b1, m) + (1 - b1) * delta
        sq = np.multiply(delta, delta)
        if opt.name == "fedadagrad":
            v = v + sq
        elif opt.name == "fedadam":
            v = b2 * v + (1 - b2) * sq
        else:
            v = v - (1.0 - b2) * sq * np.sign(v - sq)
        new[k] = current[k] + eta * m / (np.sqrt(v) + tau)
        nxt[f"m/{k}"], nxt[f"v/{k}"] = m, v
    return new, nxt
