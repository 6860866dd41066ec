"""kill -9 a daemon in the middle of catching up: every entry it had acknowledged is still
there after the restart, it resumes where it stopped, and fsck is clean.

"Acknowledged" for a receiving node means committed: batched apply (E4State.apply_many,
`apply_batch` entries per durable transaction) reports an entry as applied (to a peer in an
Offer/Push reply, to a client listing entries, in the Merkle root it answers with) only
after the COMMIT of its batch returned. Here a client lists the node's entries mid catch-up,
then the node is killed; what that client was shown must survive.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from crdtd.crypto import federation as fedmod
from crdtd.crypto.node_config import load_node_config
from crdtd.node.config import DAEMON_SECTIONS
from crdtd.state import E4State
from crdtd.state.testing import bulk_contributions
from crdtd.store.fsck import fsck
from tests.node_support import Daemon, federation

COUNT = 12_000
NAMESPACE = "blobs/raw"


def committed(data_dir: Path) -> int:
    """Entries a reader of the store file sees (committed ones only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


@pytest.mark.slow
def test_kill_9_mid_catch_up_keeps_what_was_acknowledged_and_resumes(tmp_path: Path) -> None:
    path_a, path_b = federation(tmp_path, 2)  # site-b bootstraps from site-a
    cfg_a, cfg_b = (load_node_config(p, extra_sections=DAEMON_SECTIONS) for p in (path_a, path_b))
    state = E4State.open(cfg_a.data_dir, cfg_a.federation.admin, cfg_a.federation.policy)
    for entry in fedmod.Federation.load(tmp_path / "fed").admin_entries():
        state.apply(entry)
    source = set(bulk_contributions(state, cfg_a.load_key(), COUNT, NAMESPACE))
    base = state.store.entry_count() - COUNT
    state.close()

    a, b = Daemon(path_a).start(), Daemon(path_b)
    try:
        b.start()
        deadline = time.monotonic() + 120
        while committed(cfg_b.data_dir) < base + COUNT // 5:
            assert time.monotonic() < deadline, "catch-up did not start"
            time.sleep(0.02)
        with b.client() as client:
            acknowledged = {e.id for e in client.list(NAMESPACE)}
        assert b.stop(signal.SIGKILL) == -signal.SIGKILL
        assert 0 < len(acknowledged) < COUNT, "caught up before the kill: raise COUNT"
        assert acknowledged <= source

        b.start()
        with b.client() as client:
            after_restart = {e.id for e in client.list(NAMESPACE)}
            assert acknowledged <= after_restart
            deadline = time.monotonic() + 180
            while len(after_restart) < COUNT:
                assert time.monotonic() < deadline, f"resumed to {len(after_restart)} of {COUNT}"
                time.sleep(0.5)
                after_restart = {e.id for e in client.list(NAMESPACE)}
            assert after_restart == source
            with a.client() as other:
                assert client.status().state_root == other.status().state_root
    finally:
        for d in (b, a):
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
    report = fsck(cfg_b.data_dir)
    assert report.ok, [str(p) for p in report.problems]
