"""crdtd.fl: sites train rounds against their own daemons; an unmodified Flower client too."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crdtd.errors import NotMemberError
from crdtd.fl.loop import FLResult, run
from crdtd.fl.tasks import TrainConfig, evaluate, fit, init_params, make_task, param_names
from tests.node_support import InProcessNode, federation, wait_for

NS = "model/digits-mlp"
SITES = 3
TASK = make_task("digits", sites=SITES, alpha=0.5, seed=0)
TRAIN = TrainConfig(epochs=2)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[InProcessNode]]:
    configs = federation(
        tmp_path,
        SITES,
        namespaces={NS: {"rounds": True, "example_weighted": True}},
        trust={"detect_model_outliers": True},
    )
    started = [InProcessNode(c) for c in configs]
    try:
        with started[0].client() as c:
            for other in started[1:]:
                c.submit(other.daemon.config.node.membership_bytes())
        for n in started:
            wait_for(lambda n=n: len(n.core.state.members()) == SITES, 30, "memberships")
        yield started
    finally:
        for n in started:
            n.stop()


def in_threads(work: list[Callable[[], FLResult]]) -> list[FLResult]:
    out: list[Any] = [None] * len(work)
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            out[i] = work[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return out


def test_three_sites_train_rounds_and_end_on_one_global(nodes) -> None:
    def site(i: int) -> Callable[[], FLResult]:
        x, y = TASK.site_data(i)

        def fit_fn(params: dict[str, np.ndarray], config: dict[str, Any]):
            r = int(config["server_round"])
            return fit(params, x, y, TRAIN, seed=100 * r + i), len(y), {"rows": len(y)}

        def eval_fn(params: dict[str, np.ndarray], config: dict[str, Any]):
            loss, acc = evaluate(params, TASK.x_test, TASK.y_test)
            return loss, len(TASK.y_test), {"accuracy": acc}

        def work() -> FLResult:
            with nodes[i].client() as c:
                return run(c, NS, init_params(TASK, 0), fit_fn, eval_fn, rounds=3, progress=False)

        return work

    results = in_threads([site(i) for i in range(SITES)])
    assert len({r.global_id for r in results}) == 1  # every site ends on the same bytes
    reports = results[0].rounds
    assert [r.round for r in reports] == [1, 2, 3]
    assert all(r.participants == SITES for r in reports)
    assert reports[-1].evaluation["accuracy"] > 0.8
    assert reports[1].reported["accuracy"] == pytest.approx(reports[0].evaluation["accuracy"])
    # every node holds one live update per site (older ones superseded, no removal entries)
    live = nodes[0].core.state.visible(NS)
    updates = [e for e in live if e.body.metadata.get("role") != "global"]
    assert sorted(e.body.metadata["round"] for e in updates) == [3] * SITES
    counts = nodes[0].core.entry_counts()
    assert counts[("contribution", "superseded")] == SITES  # round 2: bytes kept
    assert counts[("contribution", "retired")] == SITES  # round 1: bytes reclaimed
    assert counts.get(("removal", "live"), 0) == 0
    text = _metrics(nodes[1])
    assert f'crdtd_fl_round{{namespace="{NS}"}} 3.0' in text
    assert f'crdtd_fl_participants{{namespace="{NS}"}} 3.0' in text
    assert "crdtd_fl_reported_accuracy" in text


def _metrics(node: InProcessNode) -> str:
    import urllib.request

    with node.client() as c:
        address = c.status().metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def test_an_unmodified_flower_numpy_client_trains_against_crdtd_nodes(nodes) -> None:
    flwr = pytest.importorskip("flwr")
    from crdtd.fl.flower import start_client

    class FlowerClient(flwr.client.NumPyClient):  # a Flower user's client, as written
        def __init__(self, site: int) -> None:
            self.x, self.y = TASK.site_data(site)
            self.site = site

        def get_parameters(self, config):
            p = init_params(TASK, 0)
            return [p[k] for k in param_names()]

        def fit(self, parameters, config):
            params = dict(zip(param_names(), parameters))
            out = fit(params, self.x, self.y, TRAIN, seed=int(config["server_round"]))
            return [out[k] for k in param_names()], len(self.y), {}

        def evaluate(self, parameters, config):
            loss, acc = evaluate(dict(zip(param_names(), parameters)), TASK.x_test, TASK.y_test)
            return loss, len(TASK.y_test), {"accuracy": acc}

    def site(i: int) -> Callable[[], FLResult]:
        return lambda: start_client(
            node=nodes[i].config,
            namespace=NS,
            client=FlowerClient(i).to_client(),  # the line a Flower user changes
            rounds=2,
            progress=False,
        )

    results = in_threads([site(i) for i in range(SITES)])
    assert len({r.global_id for r in results}) == 1
    assert results[0].rounds[-1].evaluation["accuracy"] > 0.7
    assert sorted(results[0].params) == ["0000", "0001", "0002", "0003"]


def _one_site_work(node: InProcessNode, timeout: float) -> Callable[[], FLResult]:
    x, y = TASK.site_data(1)

    def fit_fn(params: dict[str, np.ndarray], config: dict[str, Any]):
        return fit(params, x, y, TRAIN, seed=1), len(y), {}

    def work() -> FLResult:
        with node.client() as c:
            return run(
                c, NS, init_params(TASK, 0), fit_fn, rounds=1, quorum=1, timeout=timeout,
                progress=False,
            )  # fmt: skip

    return work


def test_a_site_whose_node_is_not_a_member_yet_waits_then_says_why(tmp_path: Path) -> None:
    configs = federation(tmp_path, 2, namespaces={NS: {"rounds": True}})
    late = InProcessNode(configs[1])  # added after node 0: its membership needs node 0's first
    try:
        with pytest.raises(NotMemberError, match="not a member of its federation after 1 s"):
            _one_site_work(late, 1.0)()
        assert late.core.state.visible(NS) == []  # nothing was pushed
    finally:
        late.stop()


def test_a_site_started_before_its_node_can_sync_trains_once_it_has(tmp_path: Path) -> None:
    configs = federation(tmp_path, 2, namespaces={NS: {"rounds": True}})
    late = InProcessNode(configs[1])
    first: InProcessNode | None = None
    try:
        done: list[FLResult] = []
        thread = threading.Thread(target=lambda: done.append(_one_site_work(late, 60.0)()))
        thread.start()  # the loop waits: the node is not a member yet
        first = InProcessNode(configs[0])
        with first.client() as c:
            c.submit(late.daemon.config.node.membership_bytes())
        thread.join(120)
        assert [r.round for r in done[0].rounds] == [1]
    finally:
        for n in (late, first):
            if n is not None:
                n.stop()
