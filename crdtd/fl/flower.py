"""Run an unmodified Flower client against a crdtd node instead of a Flower server.

A Flower user starts a client with

    fl.client.start_client(server_address="10.0.0.1:8080", client=FlowerClient().to_client())

and switches to coordinator-free training by changing that one line to

    crdtd.fl.flower.start_client(node="site-a.toml", namespace="model/cifar", rounds=10,
                                 client=FlowerClient().to_client())

where `node` is the site's crdtd node (its config file, as `crdtd.client.Client.from_config`
reads it, or a connected `Client`) and the namespace is a rounds namespace (docs/fl.md).
`client` may be a `flwr.client.NumPyClient` or the `flwr.client.Client` that `.to_client()`
returns. The bridge calls the client exactly as a Flower server would: `get_parameters`
once for the initial model, then every round `fit(parameters, config)` on the round's
global and `evaluate(parameters, config)` on the new global; `config` carries
`server_round`. What Flower's server would aggregate, every crdtd node builds itself
(crdtd.fl.loop). flwr is the optional extra `crdtd[fl]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crdtd.client import Client
from crdtd.errors import ConfigError
from crdtd.fl.loop import FLResult, run

__all__ = ["names_for", "start_client"]


def names_for(count: int) -> list[str]:
    """Tensor names for Flower's NDArrays list, in list order (zero-padded indices)."""
    return [f"{i:04d}" for i in range(count)]


def _as_list(params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [params[k] for k in sorted(params)]


def _as_named(arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(names_for(len(arrays)), (np.asarray(a) for a in arrays)))


class _Adapter:
    """The NumPy view of a Flower client: get_parameters, fit and evaluate on NDArrays."""

    def __init__(self, client: Any) -> None:
        from flwr.client import Client as FlowerClient
        from flwr.client import NumPyClient

        self.numpy: Any = None
        self.client: Any = None
        if isinstance(client, NumPyClient):
            self.numpy = client
        elif isinstance(client, FlowerClient):
            self.client = client
        else:
            raise ConfigError(
                f"client must be a flwr NumPyClient or flwr Client, not {type(client).__name__}"
            )

    def get_parameters(self) -> list[np.ndarray]:
        if self.numpy is not None:
            return list(self.numpy.get_parameters(config={}))
        from flwr.common import GetParametersIns, parameters_to_ndarrays

        res = self.client.get_parameters(GetParametersIns(config={}))
        return list(parameters_to_ndarrays(res.parameters))

    def fit(
        self, arrays: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, Mapping[str, Any]]:
        if self.numpy is not None:
            out, n, metrics = self.numpy.fit(arrays, config)
            return list(out), int(n), dict(metrics or {})
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

        res = self.client.fit(FitIns(ndarrays_to_parameters(arrays), config))
        return list(parameters_to_ndarrays(res.parameters)), int(res.num_examples), res.metrics

    def evaluate(
        self, arrays: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, Mapping[str, Any]]:
        if self.numpy is not None:
            loss, n, metrics = self.numpy.evaluate(arrays, config)
            return float(loss), int(n), dict(metrics or {})
        from flwr.common import EvaluateIns, ndarrays_to_parameters

        res = self.client.evaluate(EvaluateIns(ndarrays_to_parameters(arrays), config))
        return float(res.loss), int(res.num_examples), res.metrics


def start_client(
    *,
    node: str | Path | Client,
    namespace: str,
    client: Any,
    rounds: int,
    quorum: int | None = None,
    timeout: float = 120.0,
    progress: bool = True,
) -> FLResult:
    """Train `rounds` rounds of `namespace` with a Flower client against a crdtd node; returns
    the final global (tensors named by their NDArrays index, `names_for`) and the reports."""
    adapter = _Adapter(client)
    own = not isinstance(node, Client)
    c = Client.from_config(node, timeout=timeout) if not isinstance(node, Client) else node
    try:
        initial = _as_named(adapter.get_parameters())

        def fit(
            params: dict[str, np.ndarray], config: dict[str, Any]
        ) -> tuple[dict[str, np.ndarray], int, Mapping[str, Any]]:
            out, n, metrics = adapter.fit(_as_list(params), config)
            return _as_named(out), n, metrics

        def evaluate(
            params: dict[str, np.ndarray], config: dict[str, Any]
        ) -> tuple[float, int, Mapping[str, Any]]:
            return adapter.evaluate(_as_list(params), config)

        return run(
            c,
            namespace,
            initial,
            fit,
            evaluate,
            rounds=rounds,
            quorum=quorum,
            timeout=timeout,
            progress=progress,
        )
    finally:
        if own:
            c.close()
