"""Twenty real daemons on one machine (mutual TLS between peers): a push at one node reaches
every node within the bound Serf's model gives for the gossip interval and fanout (plus two
intervals), and each node's Prometheus endpoint counts its gossip rounds."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest
import tomllib

from simulations.convergence import serf_rounds
from tests.node_support import Daemon, converged, federation, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

N = 20
INTERVAL_MS = 1000
FANOUT = 3
GOSSIP = {
    "interval_ms": INTERVAL_MS,
    "fanout": FANOUT,
    "probe_interval_ms": 1000,
    "probe_timeout_ms": 2000,
    "push_pull_interval_ms": 10_000,
}


def scrape(config: Path) -> dict[str, float]:
    """One scrape of the node's /metrics: sample name (with labels) -> value."""
    m = tomllib.loads(config.read_text())["metrics"]
    with urllib.request.urlopen(f"http://{m['host']}:{m['port']}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


class Arrivals:
    """Watch streams on every node: when each one applied the watched entry."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.times: dict[int, dict[bytes, float]] = {i: {} for i in range(len(daemons))}
        self.ready = threading.Barrier(len(daemons) + 1)
        self.threads = [
            threading.Thread(target=self._watch, args=(i, d), daemon=True)
            for i, d in enumerate(daemons)
        ]
        for t in self.threads:
            t.start()
        self.ready.wait(60)
        time.sleep(1.0)  # every stream is open on its server

    def _watch(self, i: int, daemon: Daemon) -> None:
        with daemon.client(timeout=None) as c:
            stream = c.watch("blobs/raw")
            self.ready.wait(60)
            for ev in stream:
                if ev.kind == "entry_applied":
                    self.times[i].setdefault(bytes(ev.entry_id), time.monotonic())

    def held_by_all(self, entry_id: bytes) -> bool:
        return all(entry_id in t for t in self.times.values())

    def last(self, entry_id: bytes) -> float:
        return max(t[entry_id] for t in self.times.values())


def test_a_push_reaches_twenty_daemons_within_serfs_bound_and_rounds_are_counted(
    tmp_path: Path,
) -> None:
    configs = federation(tmp_path, N, fast_gossip=False, gossip=GOSSIP)
    with running(configs, timeout=600) as daemons:
        wait_for(lambda: converged(daemons), 120, "twenty equal state roots")
        with daemons[0].client() as c:
            wait_for(lambda: len(c.status().peers) == N - 1, 120, "every peer known")
        before = [scrape(c)["crdtd_gossip_rounds_total"] for c in configs]
        scraped_at = time.monotonic()
        arrivals = Arrivals(daemons)

        pushed_at = time.monotonic()
        with daemons[N // 2].client() as c:
            entry = c.push("blobs/raw", b"twenty nodes " * 5000).entry_id
        wait_for(lambda: arrivals.held_by_all(entry), 60, "the entry on every node")
        spread = arrivals.last(entry) - pushed_at

        after = [scrape(c) for c in configs]
        elapsed = time.monotonic() - scraped_at
        model = serf_rounds(N, FANOUT, 0.0, 0.9999)
        bound = (model + 2) * INTERVAL_MS / 1000
        print(
            f"\n{N} daemons: push -> every node in {spread:.2f} s "
            f"(Serf model {model} rounds = {model * INTERVAL_MS / 1000:g} s, bound {bound:g} s); "
            f"RSS per daemon {max(a['process_resident_memory_bytes'] for a in after) / 2**20:.0f}"
            f" MiB max, CPU {sum(a['process_cpu_seconds_total'] for a in after):.1f} s total"
        )
        assert spread <= bound, f"{spread:.2f} s > {bound} s"
        for b, a in zip(before, after):
            rounds = a["crdtd_gossip_rounds_total"] - b
            assert 1 <= rounds <= elapsed * 1000 / INTERVAL_MS + 2, (rounds, elapsed)
