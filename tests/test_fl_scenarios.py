"""Federated rounds on in-process nodes (simulations/federated.py): what issue 11 asked for."""

from __future__ import annotations

import pytest

from crdtd.fl.tasks import make_task
from simulations.federated import SimConfig, run

TASK = make_task("digits", sites=10, alpha=0.1, seed=1)


def test_sign_flippers_are_gated_in_three_rounds_and_honest_roots_agree() -> None:
    r = run(SimConfig(alpha=0.1, seed=1, attack="sign_flip", rounds=4), TASK)
    assert r.rounds_to_gate is not None and r.rounds_to_gate <= 3
    assert r.honest_gated == []
    assert r.roots_agree and r.sha_agree  # gating decides what is merged, not replicated


def test_honest_non_iid_sites_are_never_gated_and_the_default_learns() -> None:
    r = run(SimConfig(alpha=0.1, seed=1, attack="clean", rounds=4), TASK)
    assert r.honest_gated == []
    assert r.curve[-1] > r.curve[0] and r.curve[-1] > 0.7
    assert r.counts.get("removal_live", 0) == 0  # rounds supersede: no tombstones pile up


@pytest.mark.slow
def test_the_default_resists_label_flipping_where_fedavg_does_not() -> None:
    task = make_task("digits", sites=10, alpha=0.5, seed=0)
    default = run(SimConfig(attack="label_flip", rounds=10), task)
    fedavg = run(SimConfig(attack="label_flip", rounds=10, rule="fedavg"), task)
    assert default.accuracy > fedavg.accuracy + 0.2
    assert default.honest_gated == []
