"""Node store figures, each with a baseline measured in the same run.

- small-entry inserts/s: signed contributions applied one durable commit each, against bare
  SQLite (same WAL + synchronous=FULL settings) committing one row of the same size each;
- signature verifications/s: `Entry.verify_signatures` against bare Ed25519 verify;
- payload ingest MB/s for a generated safetensors file: `NodeStore.ingest_file` + `apply`,
  against sha256 + write + fsync of the same bytes into one file;
- chunk dedup: a fine-tune that changed 10 % of the base's tensors, new bytes stored / size;
- Merkle descent: bytes a sync descent moves for n ids and d differences, against the full
  id list (the LEAF_DEPTH argument in docs/store.md);
- catch-up (`--only catchup`): a fresh node pulls `--catchup` small signed entries (~100-byte
  payloads) from a peer running as its own process (`crdtd.sync.node_runner`) over real gRPC
  with mutual TLS, every entry verified and validated; the baseline inserts the same entry
  rows straight into a fresh store's `entries` table in batches of 1,000, one durable commit
  per batch, just before and just after the pull (the faster is kept). Prints
  `catchup_entries_per_s`, `sqlite_batched_inserts_per_s` and their ratio, and the pulling
  process's CPU time per entry (all its threads; it moves far less with the machine's load).

    python benchmarks/bench_store.py --ingest-mb 1024      # the reported 1 GB run
    python benchmarks/bench_store.py --only catchup --catchup 100000

The last line is `ingest_MBps: ...` (or `catchup_vs_sqlite: ...` with `--only catchup`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import verify_ed25519
from crdtd.state import E4State
from crdtd.state.entry import Entry, make_contribution, make_membership
from crdtd.state.testing import bulk_contributions
from crdtd.store import sqlite as db
from crdtd.store.chunks import CHUNK_SIZE, BytesSource
from crdtd.store.merkle import FANOUT, ID_SIZE, LEAF_DEPTH, MerkleIndex
from crdtd.store.store import NodeStore


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# -- small entries --------------------------------------------------------------------------


def bench_inserts(work: Path, count: int, rounds: int) -> tuple[float, float, list[Entry], NodeKey]:
    """Best-of-rounds rates, alternating ours and the bare-SQLite baseline so that load from
    other processes hits both alike."""
    admin, key = NodeKey.generate(), NodeKey.generate()
    state = E4State.open(work / "inserts", admin.public_keys)
    state.apply(make_membership(admin, 1, None, key.public_keys, "bench"))
    conn = sqlite3.connect(work / "bare.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id BLOB PRIMARY KEY, raw BLOB) WITHOUT ROWID")
    entries: list[Entry] = []
    prev = None
    ours = bare = 0.0
    per_round = max(1, count // rounds)
    for _ in range(rounds):
        batch = []
        t0 = time.perf_counter()
        for _ in range(per_round):
            seq = len(entries) + 1
            data = f"record {seq:08d} ".encode() * 6
            src = BytesSource(data)
            m = src.manifest
            e = make_contribution(key, seq, prev, "bench/records", m.digest, m.size)
            state.apply(e, src)
            entries.append(e)
            batch.append(e)
            prev = e.id
        ours = max(ours, rate(per_round, time.perf_counter() - t0))
        t0 = time.perf_counter()
        for e in batch:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, ?)", (e.id, e.to_bytes()))
            conn.execute("COMMIT")
        bare = max(bare, rate(per_round, time.perf_counter() - t0))
    state.close()
    conn.close()
    return ours, bare, entries, key


def bench_verify(
    entries: list[Entry], key: NodeKey, count: int, rounds: int
) -> tuple[float, float]:
    """Best-of-rounds verification rates, ours and bare Ed25519 alternating."""
    pool = (entries * (count // max(1, len(entries)) + 1))[: max(1, count // rounds)]
    keys = key.public_keys
    msgs = [(e.signing_message, e.signatures[0].value) for e in pool]
    pub = key.public_bytes
    ours = bare = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for e in pool:
            e.verify_signatures(keys)
        ours = max(ours, rate(len(pool), time.perf_counter() - t0))
        t0 = time.perf_counter()
        for msg, sig in msgs:
            assert verify_ed25519(pub, msg, sig)
        bare = max(bare, rate(len(pool), time.perf_counter() - t0))
    return ours, bare


# -- payloads --------------------------------------------------------------------------------


def tensor_bytes(seed: int, i: int, n_floats: int, changed: bool) -> bytes:
    rng = np.random.default_rng([seed, i])
    t = rng.standard_normal(n_floats, dtype=np.float32)
    if changed:
        t += np.float32(0.01)
    return t.tobytes()


def write_model(path: Path, size_mb: int, tensors: int, seed: int, changed: set[int]) -> int:
    """Stream a safetensors file of `tensors` float32 tensors totalling ~size_mb MiB."""
    n_floats = size_mb * 1024 * 1024 // 4 // tensors
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i in range(tensors):
        begin = i * n_floats * 4
        header[f"model.layers.{i:03d}.weight"] = {
            "dtype": "F32",
            "shape": [n_floats],
            "data_offsets": [begin, begin + n_floats * 4],
        }
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for i in range(tensors):
            f.write(tensor_bytes(seed, i, n_floats, i in changed))
    return path.stat().st_size


def read_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while piece := f.read(CHUNK_SIZE):
            yield piece


def baseline_hash_write(src: Path, dst: Path) -> float:
    """sha256 of every 4 MiB piece + one sequential write + fsync: the floor for ingest."""
    t0 = time.perf_counter()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for piece in read_pieces(src):
            hashlib.sha256(piece).digest()
            os.write(fd, piece)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def bench_ingest(work: Path, size_mb: int, tensors: int) -> dict[str, float]:
    admin, key = NodeKey.generate(), NodeKey.generate()
    base = work / "base.safetensors"
    size = write_model(base, size_mb, tensors, seed=1, changed=set())
    os.sync()  # both runs start with no writeback in flight and the source in page cache
    baseline_s = baseline_hash_write(base, work / "baseline.out")
    (work / "baseline.out").unlink()
    os.sync()

    state = E4State.open(work / "ingest", admin.public_keys)
    state.apply(make_membership(admin, 1, None, key.public_keys, "bench"))
    t0 = time.perf_counter()
    m = state.store.ingest_file(base)
    e = make_contribution(key, 1, None, "model/bench", m.digest, m.size, payload_kind="safetensors")
    state.apply(e)
    ingest_s = time.perf_counter() - t0
    stored_base = state.store.chunk_bytes_stored()

    changed = set(random.Random(7).sample(range(tensors), max(1, round(tensors / 10))))
    tuned = work / "tuned.safetensors"
    write_model(tuned, size_mb, tensors, seed=1, changed=changed)
    base.unlink()
    m2 = state.store.ingest_file(tuned)
    e2 = make_contribution(
        key, 2, e.id, "model/bench", m2.digest, m2.size, payload_kind="safetensors", base_id=e.id
    )
    state.apply(e2)
    new_bytes = state.store.chunk_bytes_stored() - stored_base
    state.close()
    return {
        "size_mb": size / 1e6,
        "chunks": len(m.chunks),
        "ingest_MBps": size / 1e6 / ingest_s,
        "baseline_MBps": size / 1e6 / baseline_s,
        "changed_fraction": len(changed) / tensors,
        "new_fraction": new_bytes / size,
    }


# -- Merkle descent --------------------------------------------------------------------------


def bench_descent(work: Path, n: int, d: int) -> tuple[int, int]:
    """(bytes a descent moves, bytes of the full id list) for n shared ids and d extra ones."""
    rng = random.Random(11)
    common = [rng.randbytes(ID_SIZE) for _ in range(n)]
    extra = [rng.randbytes(ID_SIZE) for _ in range(d)]
    sides = []
    for name, ids in (("a", common), ("b", common + extra)):
        conn = sqlite3.connect(work / f"merkle-{name}.sqlite", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE ids (id BLOB PRIMARY KEY) WITHOUT ROWID")
        conn.execute(MerkleIndex.schema("nodes"))
        ix = MerkleIndex(conn, "ids", "nodes")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in ids])
        ix.update(ids)
        conn.execute("COMMIT")
        sides.append(ix)
    a, b = sides
    moved, frontier, found = 0, [b""], set()
    while frontier:
        prefix = frontier.pop()
        if len(prefix) == LEAF_DEPTH:
            theirs = b.ids_under(prefix)
            moved += ID_SIZE * len(theirs)
            found |= set(theirs) - set(a.ids_under(prefix))
            continue
        mine, theirs_h = a.children(prefix), b.children(prefix)
        moved += ID_SIZE * FANOUT
        frontier += [prefix + bytes([i]) for i in range(FANOUT) if mine[i] != theirs_h[i]]
    assert found == set(extra)
    for ix in sides:
        ix.conn.close()
    return moved, ID_SIZE * (n + d)


# -- catch-up ---------------------------------------------------------------------------------


def sqlite_batched(rows: list[tuple[object, ...]], path: Path, batch: int = 1000) -> float:
    """Seconds to insert `rows` into a fresh store's entries table, `batch` per commit."""
    conn = db.connect(path)
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO entries (id, author, seq, kind, prev, namespace, payload_digest, "
            "status, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows[i : i + batch],
        )
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


async def pull_everything(
    work: Path, count: int, after_setup: Callable[[Path], object] | None = None
) -> tuple[float, int, int]:
    """(seconds, sessions, entries) for a fresh node to pull `count` entries from a peer
    process over gRPC with mutual TLS; `after_setup(peer data dir)` runs before the pull."""
    from bench_sync import start_runner

    from crdtd.crypto import federation as fedmod
    from crdtd.sync.config import SyncConfig
    from crdtd.sync.handshake import Identity
    from crdtd.sync.node import SyncNode
    from crdtd.sync.transport import GrpcTransport

    fed_dir = work / "fed"
    fedmod.init(fed_dir, "fed-catchup")
    cfg_a, cfg_b = fedmod.add_node(fed_dir, "a"), fedmod.add_node(fed_dir, "b")
    admin_entries = fedmod.Federation.load(fed_dir).admin_entries()
    states = []
    for cfg in (cfg_a, cfg_b):
        st = E4State.open(cfg.data_dir, cfg.federation.admin, cfg.federation.policy)
        for entry in admin_entries:
            st.apply(entry)
        states.append(st)
    state_a, state_b = states
    t0 = time.perf_counter()
    bulk_contributions(state_b, cfg_b.load_key(), count)
    state_b.close()
    print(f"catchup_setup_seconds: {time.perf_counter() - t0:.1f}  ({count} entries signed)")
    if after_setup is not None:
        after_setup(cfg_b.data_dir)
    proc = start_runner(cfg_b.path, {})
    config = SyncConfig(rpc_timeout=600.0, stream_idle_timeout=600.0)
    identity = Identity(
        cfg_a.load_key(),
        cfg_a.membership_bytes(),
        cfg_a.federation.id,
        cfg_a.federation.admin,
        cfg_a.federation.policy,
    )
    node = SyncNode(state_a, identity, GrpcTransport(cfg_a.tls_material(), config), config)
    before = state_a.store.entry_count()
    sessions = 0
    try:
        started, cpu = time.perf_counter(), time.process_time()
        while True:
            result = await node.sync_with(cfg_b.advertise)
            sessions += 1
            print(
                f"  session {sessions}: {result.digest_method} digest in {result.digest_rounds} "
                f"calls, pulled {len(result.pulled)}, held {len(result.held)}, "
                f"deferred {len(result.deferred)}, "
                f"refused {len(result.refused)}, rejected {len(result.rejected)}, "
                f"{result.seconds:.1f} s"
            )
            if result.in_sync or not (result.pulled or result.held):
                break
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        # every thread of the pulling process; the signature workers and the peer are not in it
        print(f"catchup_receiver_cpu_us_per_entry: {1e6 * cpu / count:.0f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        await node.stop()
    got = state_a.store.entry_count() - before
    state_a.close()
    return seconds, sessions, got


def bench_catchup(work: Path, count: int) -> dict[str, float]:
    """The catch-up rate, and the batched-insert baseline measured just before and just
    after it (the faster of the two is reported: on a shared disk one of them can meet the
    other's writes still being flushed)."""
    rates: list[float] = []

    def baseline(peer_dir: Path) -> None:
        store = NodeStore.open(peer_dir, maintenance=False)
        with store.reading() as c:
            rows = c.execute(
                "SELECT id, author, seq, kind, prev, namespace, payload_digest, status, raw "
                "FROM entries WHERE namespace = 'bench/records'"
            ).fetchall()
        store.close()
        random.Random(3).shuffle(rows)  # arrival order is not id order
        path = work / f"batched-{len(rates)}.sqlite"
        rates.append(len(rows) / sqlite_batched(rows, path))
        for p in path.parent.glob(path.name + "*"):
            p.unlink()

    seconds, sessions, got = asyncio.run(pull_everything(work / "catchup", count, baseline))
    if got != count:
        raise AssertionError(f"caught up on {got} of {count} entries")
    baseline(work / "catchup" / "fed" / "b-data")
    print(f"sqlite_batched_runs: {', '.join(f'{r:,.0f}' for r in rates)} (before, after)")
    return {
        "sessions": sessions,
        "catchup_entries_per_s": count / seconds,
        "sqlite_batched_inserts_per_s": max(rates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=300, help="small entries to insert")
    ap.add_argument("--verify", type=int, default=5000, help="signature verifications")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (best kept)")
    ap.add_argument("--ingest-mb", type=int, default=128, help="safetensors size in MiB")
    ap.add_argument("--tensors", type=int, default=100, help="tensors in the safetensors file")
    ap.add_argument("--merkle-n", type=int, default=100_000, help="ids for the descent figure")
    ap.add_argument("--merkle-d", type=int, default=10, help="differences for the descent")
    ap.add_argument("--catchup", type=int, default=100_000, help="entries for the catch-up")
    ap.add_argument("--only", choices=["catchup"], default=None, help="run one figure only")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_store-", dir=args.dir))
    try:
        if args.only in (None, "catchup"):
            r = bench_catchup(work, args.catchup)
            print(f"catchup_sessions: {r['sessions']:.0f}")
            print(f"catchup_entries_per_s: {r['catchup_entries_per_s']:,.0f}")
            print(f"sqlite_batched_inserts_per_s: {r['sqlite_batched_inserts_per_s']:,.0f}")
            ratio = r["catchup_entries_per_s"] / r["sqlite_batched_inserts_per_s"]
            print(f"catchup_vs_sqlite: {ratio:.2f}")
            if args.only:
                return
        ins, bare_ins, entries, key = bench_inserts(work, args.entries, args.rounds)
        print(f"small-entry inserts/s (signed, durable, best of {args.rounds}): {ins:,.0f}")
        print(
            f"  baseline bare SQLite durable commits/s: {bare_ins:,.0f} (ratio {ins / bare_ins:.2f})"
        )
        ver, bare_ver = bench_verify(entries, key, args.verify, args.rounds)
        print(f"signature verifications/s: {ver:,.0f}")
        print(f"  baseline bare Ed25519 verify/s: {bare_ver:,.0f} (ratio {ver / bare_ver:.2f})")
        moved, full = bench_descent(work, args.merkle_n, args.merkle_d)
        print(
            f"merkle descent n={args.merkle_n} d={args.merkle_d} LEAF_DEPTH={LEAF_DEPTH}: "
            f"{moved:,} bytes vs full id list {full:,} ({100 * moved / full:.2f} %)"
        )
        r = bench_ingest(work, args.ingest_mb, args.tensors)
        print(
            f"dedup: fine-tune changing {100 * r['changed_fraction']:.0f} % of tensors stored "
            f"{100 * r['new_fraction']:.2f} % new bytes (ratio {r['new_fraction']:.3f})"
        )
        print(
            f"payload ingest ({r['size_mb']:.0f} MB safetensors, {r['chunks']:.0f} chunks): "
            f"{r['ingest_MBps']:.0f} MB/s"
        )
        print(
            f"  baseline sha256 + write + fsync of the same bytes: {r['baseline_MBps']:.0f} MB/s "
            f"(ratio {r['ingest_MBps'] / r['baseline_MBps']:.2f})"
        )
        print(f"ingest_MBps: {r['ingest_MBps']:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
