"""One federated setting on real daemons: `crdtd start` processes, each site training through
`crdtd.fl` (or an unmodified Flower `NumPyClient` through `crdtd.fl.flower`).

`python benchmarks/bench_fl.py --daemon` runs this. Every site is a daemon made from
`crdtd federation add-node` configs (mutual TLS between peers on loopback, fast gossip,
`[trust] detect_model_outliers` on) holding the rounds namespace of simulations/federated.py,
and a thread of this process running the site's training loop against its own daemon with the
same local training as the in-process run (same seeds, same rows). Every node then builds the
final round; the run reports every node's sha256, which must equal the in-process result.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crdtd.crypto import federation as fed
from crdtd.fl.loop import FLResult, run
from crdtd.fl.tasks import Task, evaluate, init_params, make_task, param_names
from crdtd.node.config import load_daemon_config, render_daemon_sections
from simulations.byzantine_grpc import GOSSIP, Site, _edit
from simulations.federated import NAMESPACE, SimConfig, namespace_table, site_update


@dataclass
class DaemonRun:
    """What the daemons showed: every node's final sha256, accuracy, per-round seconds."""

    shas: dict[str, str]
    accuracy: float
    seconds: float
    results: list[FLResult]

    @property
    def identical(self) -> bool:
        return len(set(self.shas.values())) == 1


class TaskClient:
    """A plain Flower NumPyClient for one site of a Task (the bench's local training)."""

    def __new__(cls, task: Task, cfg: SimConfig, site: int) -> Any:
        from flwr.client import NumPyClient

        class DigitsClient(NumPyClient):  # type: ignore[misc]
            def get_parameters(self, config: Mapping[str, Any]) -> list[np.ndarray]:
                p = init_params(task, cfg.seed)
                return [p[k] for k in param_names()]

            def fit(
                self, parameters: list[np.ndarray], config: Mapping[str, Any]
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
                params = dict(zip(param_names(), parameters))
                out = site_update(task, cfg, site, None, params, int(config["server_round"]))
                return [out[k] for k in param_names()], len(task.sites[site]), {}

            def evaluate(
                self, parameters: list[np.ndarray], config: Mapping[str, Any]
            ) -> tuple[float, int, dict[str, Any]]:
                loss, acc = evaluate(dict(zip(param_names(), parameters)), task.x_test, task.y_test)
                return loss, len(task.y_test), {"accuracy": acc}

        return DigitsClient()


def run_daemons(
    cfg: SimConfig, task: Task | None = None, flower: bool = False, log: Any = None
) -> DaemonRun:
    """Train `cfg` (clean) on `cfg.sites` real daemons; every node builds the last round."""
    task = task or make_task(cfg.dataset, cfg.sites, cfg.alpha, cfg.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crdtd-fl-daemons-", dir=cfg.store_dir) as tmp:
        root = Path(tmp) / "fed"
        fed.init(root, federation_id="bench-fl-daemons")
        sites = [Site(i, fed.add_node(root, f"site-{i:02d}")) for i in range(cfg.sites)]
        boot = "[" + ", ".join(f'"{s.peer_address}"' for s in sites) + "]"
        for s in sites:
            text = _edit(s.path.read_text(), "peer", {"bootstrap": boot})
            text = _edit(text, "gossip", {k: str(v) for k, v in GOSSIP.items()})
            text += "\n" + render_daemon_sections(
                {NAMESPACE: namespace_table(cfg.rule)},
                trust={"auto_revoke_equivocation": True, "detect_model_outliers": True},
                limits={"max_payload": "64MiB", "drain_timeout_ms": 2000},
            )
            s.path.write_text(text)
            s.config = load_daemon_config(s.path).node
        memberships = [s.config.membership_bytes() for s in sites]
        results: list[FLResult | None] = [None] * len(sites)
        errors: list[BaseException] = []
        try:
            for s in sites:
                s.start()
            for s in sites:
                s.wait_ready(timeout=600)
            for s in sites:
                with s.client() as c:
                    for m in memberships:
                        c.submit(m)

            def train(i: int) -> None:
                try:
                    if flower:
                        from crdtd.fl.flower import start_client

                        results[i] = start_client(
                            node=sites[i].path,
                            namespace=NAMESPACE,
                            client=TaskClient(task, cfg, i),
                            rounds=cfg.rounds,
                            quorum=cfg.sites,
                            timeout=300,
                            progress=i == 0 and log is not None,
                        )
                        return
                    with sites[i].client(timeout=120) as c:

                        def fit(
                            params: dict[str, np.ndarray], config: dict[str, Any]
                        ) -> tuple[dict[str, np.ndarray], int, dict[str, Any]]:
                            r = int(config["server_round"])
                            return (
                                site_update(task, cfg, i, None, params, r),
                                len(task.sites[i]),
                                {},
                            )

                        results[i] = run(
                            c,
                            NAMESPACE,
                            init_params(task, cfg.seed),
                            fit,
                            rounds=cfg.rounds,
                            quorum=cfg.sites,
                            timeout=300,
                            progress=i == 0 and log is not None,
                        )
                except BaseException as exc:  # reported after every thread ends
                    errors.append(exc)

            threads = [threading.Thread(target=train, args=(i,)) for i in range(len(sites))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            shas = {}
            for s in sites:
                with s.client(timeout=120) as c:
                    result, _ = c.global_model(NAMESPACE, cfg.rounds)
                    shas[s.path.stem] = result.output_sha256
        finally:
            for s in sites:
                s.stop()
    done = [r for r in results if r is not None]
    final = done[0].params
    if flower:
        final = {name: final[f"{i:04d}"] for i, name in enumerate(param_names())}
    acc = evaluate(final, task.x_test, task.y_test)[1]
    return DaemonRun(shas, acc, time.perf_counter() - started, done)
