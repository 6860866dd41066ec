"""The convergence simulator runs the daemon's gossip state machine and meets Serf's model.

Small federations (tens of nodes, a few simulated minutes at most) so the default suite
stays quick; `python simulations/convergence.py` prints the N = 100 and 1000 figures.
"""

from __future__ import annotations

import math

import pytest

from crdtd.sync.config import SyncConfig
from crdtd.sync.protocol import GossipProtocol
from simulations.convergence import (
    Scenario,
    Simulation,
    Wire,
    main,
    measure,
    measure_partition,
    merkle_cost,
    riblt_cost,
    serf_infected,
    serf_kbit_per_s,
    serf_rounds,
)


def test_serf_model_figures_match_the_published_ones() -> None:
    assert serf_rounds(1000, 3, 0.01, 0.9999) == 6  # "about 6 gossip intervals"
    assert serf_infected(1000, 3, 0.0, 0) == pytest.approx(1000 / 1002)
    assert round(serf_kbit_per_s(0.2, 3), 1) == 328.1  # serf.io's estimate at the defaults
    assert serf_rounds(1000, 3, 0.01, 0.9999, contact=0.5) == 11  # serf.io's drawn curve


def test_every_simulated_node_runs_the_daemons_gossip_protocol() -> None:
    sim = Simulation(5, wire=Wire.measure())
    assert all(type(n.protocol) is GossipProtocol for n in sim.nodes)
    assert all(len(n.protocol.table) == 4 for n in sim.nodes)


def test_a_new_entry_reaches_every_node_within_serfs_bound_at_one_percent_loss() -> None:
    sc = Scenario(60, loss=0.01, seed=3, steady=1.0, trials=3, dead_window=20.0)
    r = measure(sc)
    assert all(math.isfinite(t) for t in r.reach_9999)
    assert r.worst <= r.bound, f"{r.reach_9999} > {r.bound}"
    # a crashed node is declared dead about one suspicion timeout after the first probe that
    # reached it failed (about a probe interval after the crash: N nodes probe one peer in N
    # each per interval), then re-probed once per interval as a suspect
    cfg = sc.config
    timeout = cfg.suspicion_timeout(sc.n - 1)
    assert r.dead_first is not None
    assert r.dead_first <= timeout + cfg.probe_timeout + 4 * cfg.probe_interval
    assert r.steady_bytes_per_node_s * 8 / 1024 < serf_kbit_per_s(0.2, 3)


def test_a_cold_federation_learns_every_member_from_three_bootstrap_peers() -> None:
    sc = Scenario(40, established=False, warmup=10.0, steady=1.0, trials=1, dead_window=1.0)
    r = measure(sc)
    assert r.peers_known == 39
    assert r.worst <= r.bound


def test_both_halves_of_a_partition_converge_after_it_heals() -> None:
    heal, side = measure_partition(Scenario(40, seed=2), split=20.0)
    assert side == 20  # each write reached its whole half while split
    assert heal < 10.0


def test_merkle_cost_follows_the_documented_descent() -> None:
    cfg = SyncConfig()
    assert merkle_cost(100_000, 0, cfg)[0] == 1
    rounds, req, rep = merkle_cost(100_000, 10, cfg)
    assert rounds == 3 and 15_000 < req + rep < 25_000  # docs/sync.md: ~19 KB
    assert merkle_cost(1000, 1, cfg)[0] == 2


def test_riblt_cost_follows_the_measured_decoding_rate() -> None:
    cfg, wire = SyncConfig(), Wire.measure()
    assert [riblt_cost(d, cfg, wire)[0] for d in (0, 10, 100, 1000, 10_000)] == [1, 1, 4, 7, 10]
    _, req, rep = riblt_cost(10, cfg, wire)
    assert 1200 < req + rep < 1700  # docs/sync.md: 1,463 bytes at d = 10
    assert riblt_cost(60_000, cfg, wire) is None  # past the budget: the descent runs


def test_the_cli_prints_the_table_and_exits_zero_within_target(capsys) -> None:
    assert main(["--nodes", "30", "--trials", "1", "--dead-window", "5"]) == 0
    out = capsys.readouterr().out
    assert "entry_to_99.99%_seconds" in out and "within_target: yes" in out
    assert "serf_estimate_kbit_per_s: 328.1" in out
