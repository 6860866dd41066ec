"""Byzantine scenarios on real stores, signatures and trust: every attack is caught and gated."""

from __future__ import annotations

import re

import pytest

from simulations.byzantine import ATTACKS, SimConfig, main, run_scenario


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_is_detected_and_gated_without_gating_an_honest_node(attack):
    r = run_scenario(SimConfig(nodes=7, byzantine=2, seed=11, attacks=(attack,)))
    assert r.honest_gated == [], r.honest_gated
    assert all(v is not None for v in r.rounds_to_gate.values()), r.rounds_to_gate
    assert r.trust_identical and r.sha_identical
    assert r.distance == 0.0


def test_false_accusations_from_a_third_minus_one_colluders_gate_no_honest_node():
    r = run_scenario(SimConfig(nodes=10, byzantine=3, seed=5, attacks=("false_accusation",)))
    assert r.honest_gated == []
    assert r.converged
    assert r.max_rounds_to_gate is not None


def test_mixed_adversaries_below_a_third_leave_honest_nodes_converged():
    r = run_scenario(SimConfig(nodes=10, byzantine=3, seed=3))
    assert r.converged and r.honest_gated == []
    assert r.distance == 0.0 < r.distance_no_trust


def test_the_harness_ends_with_the_convergence_line(capsys):
    assert main(["--nodes", "10", "--byzantine", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"honest_converged: true, honest_gated: 0, max_rounds_to_gate: \d+", last)


def test_grpc_mode_says_plainly_which_attacks_it_cannot_play(capsys):
    assert main(["--grpc", "--nodes", "4", "--byzantine", "1", "--attacks", "praise_ring"]) == 2
    assert "--grpc plays" in capsys.readouterr().err


@pytest.mark.slow
def test_the_table_for_twenty_nodes_gates_every_adversary_below_a_third():
    from simulations.byzantine import FRACTIONS

    for pct in FRACTIONS:
        f = round(pct * 20 / 100)
        r = run_scenario(SimConfig(nodes=20, byzantine=f, seed=7))
        if 3 * f < 20:
            assert r.converged and r.honest_gated == [], (pct, r.honest_gated)
            assert r.max_rounds_to_gate is not None, r.rounds_to_gate
