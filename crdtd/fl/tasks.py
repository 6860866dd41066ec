"""Small federated tasks on scikit-learn's bundled data, for the demo, benchmarks and tests.

A `Task` is a dataset split the way federated benchmarks split it: a stratified held-out
test set, features standardised with the training rows' statistics (an agreed scaler), and
the training rows dealt to `sites` by label skew: for each class, a Dirichlet(α) draw over
the sites says what share of that class each site holds (small α: each site sees few
classes). Every site first gets `min_size` random rows, so no site is empty at α = 0.1.

The model is a one-hidden-layer MLP (ReLU, softmax cross-entropy) as a dict of float32
numpy arrays named like `torch.nn.Sequential(Linear, ReLU, Linear).state_dict()`, trained by
minibatch SGD with momentum written out in numpy: no autograd graph for a model this size,
and the same bytes for the same inputs in any process on the machine. `fit` takes FedProx's
proximal coefficient `mu` (Li et al., 2020): the gradient of (μ/2)‖w − w_global‖² is added
to every step. Nothing is downloaded: the data ship inside scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from crdtd.errors import ConfigError

__all__ = [
    "DATASETS",
    "Params",
    "Task",
    "TrainConfig",
    "dirichlet_split",
    "evaluate",
    "fit",
    "init_params",
    "make_task",
    "param_names",
]

Params = dict[str, np.ndarray]
"""Model parameters by tensor name (float32 arrays)."""

DATASETS = ("digits", "breast_cancer")
HIDDEN = {"digits": 32, "breast_cancer": 16}


@dataclass(frozen=True)
class TrainConfig:
    """Local training: epochs over the site's rows per round, SGD step, batch size."""

    epochs: int = 2
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    mu: float = 0.0  # FedProx proximal coefficient; 0 is plain FedAvg local training


@dataclass(frozen=True)
class Task:
    """A dataset dealt to sites: training rows per site, a shared test set, model shape."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sites: tuple[np.ndarray, ...]
    classes: int
    hidden: int
    alpha: float
    seed: int

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])

    def site_data(self, site: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one site's training rows."""
        idx = self.sites[site]
        return self.x_train[idx], self.y_train[idx]

    def site_sizes(self) -> list[int]:
        return [len(s) for s in self.sites]


def dirichlet_split(
    y: np.ndarray, sites: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """Row indices per site: `min_size` random rows each, the rest by a per-class Dirichlet(α)."""
    if sites < 1 or alpha <= 0 or min_size < 0 or sites * min_size > len(y):
        raise ConfigError(
            f"cannot deal {len(y)} rows to {sites} sites with alpha {alpha} and min_size {min_size}"
        )
    order = rng.permutation(len(y))
    parts: list[list[int]] = [
        order[i * min_size : (i + 1) * min_size].tolist() for i in range(sites)
    ]
    rest = order[sites * min_size :]
    for c in np.unique(y):
        idx = rest[y[rest] == c]
        share = rng.dirichlet(np.full(sites, alpha))
        cuts = (np.cumsum(share) * len(idx)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def make_task(
    name: str,
    sites: int = 10,
    alpha: float = 0.5,
    seed: int = 0,
    test_size: float = 0.25,
    min_size: int = 10,
) -> Task:
    """Load a bundled scikit-learn dataset and deal it to `sites` (deterministic in `seed`)."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    loaders = {"digits": load_digits, "breast_cancer": load_breast_cancer}
    if name not in loaders:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(DATASETS)})")
    x, y = loaders[name](return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    mean = x_tr.mean(0)
    std = x_tr.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    rng = np.random.default_rng(seed)
    parts = dirichlet_split(y_tr, sites, alpha, rng, min_size)
    return Task(
        name=name,
        x_train=((x_tr - mean) / std).astype(np.float32),
        y_train=y_tr.astype(np.int64),
        x_test=((x_te - mean) / std).astype(np.float32),
        y_test=y_te.astype(np.int64),
        sites=tuple(parts),
        classes=int(y.max()) + 1,
        hidden=HIDDEN[name],
        alpha=alpha,
        seed=seed,
    )


def param_names() -> tuple[str, ...]:
    """Tensor names of the MLP, in the order Flower's NDArrays list them."""
    return ("0.weight", "0.bias", "2.weight", "2.bias")


def init_params(task: Task, seed: int) -> Params:
    """PyTorch's default Linear initialisation (uniform ±1/√fan_in), from `seed`."""
    rng = np.random.default_rng(seed)

    def uniform(fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    d, h, k = task.features, task.hidden, task.classes
    return {
        "0.weight": uniform(d, (h, d)),
        "0.bias": uniform(d, (h,)),
        "2.weight": uniform(h, (k, h)),
        "2.bias": uniform(h, (k,)),
    }


def _forward(p: Mapping[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pre = x @ p["0.weight"].T + p["0.bias"]
    hidden = np.maximum(pre, 0.0)
    return hidden, hidden @ p["2.weight"].T + p["2.bias"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    seed: int,
) -> Params:
    """Train a copy of `params` on (x, y): `config.epochs` shuffled passes of minibatch SGD
    with momentum (PyTorch's update rule), plus FedProx's proximal gradient when mu > 0."""
    rng = np.random.default_rng(seed)
    p = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}
    anchor = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in p.items()}
    lr, m, mu = np.float32(config.lr), np.float32(config.momentum), np.float32(config.mu)
    n = len(y)
    if n == 0:
        return p
    classes = p["2.bias"].shape[0]
    eye = np.eye(classes, dtype=np.float32)
    for _ in range(config.epochs):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            xb, yb = x[idx], y[idx]
            hidden, logits = _forward(p, xb)
            dz = (_softmax(logits) - eye[yb]) / np.float32(len(idx))
            dh = dz @ p["2.weight"]
            dh[hidden <= 0.0] = 0.0
            grads = {
                "2.weight": dz.T @ hidden,
                "2.bias": dz.sum(axis=0),
                "0.weight": dh.T @ xb,
                "0.bias": dh.sum(axis=0),
            }
            for k, g in grads.items():
                if mu > 0:
                    g = g + mu * (p[k] - anchor[k])
                velocity[k] = m * velocity[k] + g
                p[k] -= lr * velocity[k]
    return p


def evaluate(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on (x, y)."""
    p = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    _, logits = _forward(p, x)
    probs = _softmax(logits.astype(np.float64))
    loss = float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean())
    return loss, float((logits.argmax(axis=1) == y).mean())
