"""Server optimisers: each against its paper's formula and against flwr's own strategy."""

from __future__ import annotations

import numpy as np
import pytest

from crdtd.errors import ConfigError
from crdtd.fl.optimisers import ServerOptimiser, server_step

RNG = np.random.default_rng(0)
X0 = {
    "w": RNG.normal(size=(3, 4)).astype(np.float32),
    "b": RNG.normal(size=(4,)).astype(np.float32),
}
AGGREGATES = [
    {k: (v + RNG.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in X0.items()}
    for _ in range(4)
]


def chain(opt: ServerOptimiser, rounds: int = 4) -> list[dict[str, np.ndarray]]:
    """Globals x_1..x_rounds, each round's aggregate being AGGREGATES[t] + drift of x."""
    x, state, out = dict(X0), {}, []
    for t in range(rounds):
        agg = {k: (x[k] + (AGGREGATES[t][k] - X0[k])).astype(np.float32) for k in x}
        x, state = server_step(opt, x, agg, state, t + 1)
        out.append(x)
    return out


def by_paper(name: str, eta: float, b1: float, b2: float, tau: float, correct: bool = False):
    """Reddi et al. 2021, Algorithm 2, written out with plain loops in float64."""
    x = {k: v.astype(np.float64) for k, v in X0.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(x_) for k, x_ in x.items()}
    out = []
    for t in range(4):
        nxt = {}
        for k in x:
            agg = x[k] + (AGGREGATES[t][k] - X0[k])
            d = agg - x[k]
            m[k] = b1 * m[k] + (1 - b1) * d
            if name == "fedadagrad":
                v[k] = v[k] + d * d
            elif name == "fedadam":
                v[k] = b2 * v[k] + (1 - b2) * d * d
            else:
                v[k] = v[k] - (1 - b2) * d * d * np.sign(v[k] - d * d)
            e = eta
            if correct:
                e = eta * np.sqrt(1 - b2 ** (t + 2.0)) / (1 - b1 ** (t + 2.0))
            nxt[k] = x[k] + e * m[k] / (np.sqrt(v[k]) + tau)
        x = nxt
        out.append(x)
    return out


@pytest.mark.parametrize(
    ("name", "eta", "b1", "b2", "tau"),
    [
        ("fedadagrad", 0.1, 0.0, 0.0, 1e-9),
        ("fedadam", 0.1, 0.9, 0.99, 1e-9),
        ("fedyogi", 0.01, 0.9, 0.99, 1e-3),
    ],
)
def test_adaptive_optimisers_follow_reddi_et_al_algorithm_2(name, eta, b1, b2, tau) -> None:
    got = chain(ServerOptimiser(name, bias_correction=False))
    want = by_paper(name, eta, b1, b2, tau)
    for g, w in zip(got, want):
        for k in g:
            np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=1e-6)


def test_fedadam_scales_eta_by_the_bias_correction_flower_applies() -> None:
    got = chain(ServerOptimiser("fedadam"))
    want = by_paper("fedadam", 0.1, 0.9, 0.99, 1e-9, correct=True)
    for g, w in zip(got, want):
        for k in g:
            np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=1e-6)


def test_fedavgm_follows_hsu_et_al_server_momentum() -> None:
    beta, eta = 0.9, 1.0
    x = {k: v.astype(np.float64) for k, v in X0.items()}
    buf: dict[str, np.ndarray] = {}
    want = []
    for t in range(4):
        nxt = {}
        for k in x:
            agg = x[k] + (AGGREGATES[t][k] - X0[k])
            g = x[k] - agg
            buf[k] = g if t == 0 else beta * buf[k] + g
            nxt[k] = x[k] - eta * buf[k]
        x = nxt
        want.append(x)
    got = chain(ServerOptimiser("fedavgm", momentum=beta))
    for g_, w in zip(got, want):
        for k in g_:
            np.testing.assert_allclose(g_[k], w[k], rtol=2e-5, atol=1e-6)


def test_fedavg_and_fedavgm_without_momentum_return_the_aggregate() -> None:
    for opt in (ServerOptimiser("fedavg"), ServerOptimiser("fedavgm")):
        x, _ = server_step(opt, X0, AGGREGATES[0], {}, 1)
        for k in x:
            np.testing.assert_allclose(x[k], AGGREGATES[0][k], rtol=1e-6)


def _flower(name: str, rounds: int = 4) -> list[list[np.ndarray]]:
    """flwr 1.42.0's own strategy fed the same aggregates (one client carrying each)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

    keys = sorted(X0)
    init = ndarrays_to_parameters([X0[k] for k in keys])
    cls = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad, "fedavgm": FedAvgM}
    kw = {"server_momentum": 0.9} if name == "fedavgm" else {}
    strategy = cls[name](initial_parameters=init, **kw)
    x = [X0[k] for k in keys]
    out = []
    for t in range(rounds):
        agg = [(x[i] + (AGGREGATES[t][k] - X0[k])).astype(np.float32) for i, k in enumerate(keys)]
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(agg), 1, {})
        params, _ = strategy.aggregate_fit(t + 1, [(None, res)], [])  # type: ignore[list-item]
        x = [np.asarray(a, dtype=np.float32) for a in parameters_to_ndarrays(params)]
        out.append(x)
    return out


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_each_optimiser_matches_flwrs_own_strategy_round_by_round(name: str) -> None:
    pytest.importorskip("flwr")
    got = chain(ServerOptimiser(name, momentum=0.9) if name == "fedavgm" else ServerOptimiser(name))
    want = _flower(name)
    keys = sorted(X0)
    for g, w in zip(got, want):
        for i, k in enumerate(keys):
            np.testing.assert_allclose(g[k], w[i], rtol=1e-5, atol=1e-6)


def test_bad_optimiser_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="unknown server optimiser"):
        ServerOptimiser("sgd")
    with pytest.raises(ConfigError, match="beta_1"):
        ServerOptimiser("fedadam", beta_1=1.5)
    with pytest.raises(ConfigError, match="eta"):
        ServerOptimiser("fedyogi", eta=0.0)


def test_fedprox_proximal_loss_has_li_et_al_gradient() -> None:
    torch = pytest.importorskip("torch")
    from crdtd.fl.fedprox import anchor_of, proximal_loss

    model = torch.nn.Linear(4, 3)
    anchor = anchor_of(model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    proximal_loss(model.parameters(), anchor, mu=0.2).backward()
    for p, p0 in zip(model.parameters(), anchor):
        assert torch.allclose(p.grad, 0.2 * (p.detach() - p0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="anchor has 1 tensors"):
        proximal_loss(model.parameters(), anchor[:1], mu=0.2)
