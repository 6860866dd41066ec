"""Anti-entropy figures, two nodes over real gRPC (mutual TLS) on loopback, baselines in-run.

1. digest: n entries on both nodes, d differing (half on each side), for each d in `--ds`:
   Merkle descent and rateless IBLT side by side over gRPC, each cold (no encoding cached):
   bytes both ways, Digest round trips, CPU ms of both sides, and `bytes_vs_full_list` =
   digest bytes / (32 * n), the cost of a naive exchange of all ids (targets at d = 10:
   <= 0.001 and <= 2 round trips). Then one whole push-pull session at `--d` (the method
   negotiated in the handshake): `session_round_trips`, `session_bytes_exchanged` (every
   message, handshake and entries included).
2. transfer: one payload of `--gib` GiB pulled over gRPC; the same chunks then sent over a
   plain loopback TCP socket to a receiver that hashes and stores them the same way
   (`put_chunk` into a fresh store, same write window). Prints `transfer_MBps`,
   `raw_socket_MBps` and `transfer_vs_socket` (target >= 0.5).
3. fine-tune: both nodes hold a safetensors base; a fine-tune that changed 10 % of the
   tensors is pulled. Prints `bytes_sent_vs_payload` (target <= 0.12).
4. `--compare-apis`: raw gRPC server-stream throughput, grpc.aio vs the threaded server, with
   the same hashing/writing receiver (how the aio choice was made).

    python benchmarks/bench_sync.py [--n 100000] [--ds 1,10,100,1000,10000] [--d 10] [--gib 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import numpy as np

from crdtd.state.entry import make_contribution
from crdtd.store.chunks import BytesSource, FileSource, chunk_bytes, manifest_of
from crdtd.store.sqlite import LIVE
from crdtd.store.store import NodeStore
from crdtd.sync.config import SyncConfig
from crdtd.sync.node import SyncNode
from crdtd.sync.testing import SyncFederation

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
CONFIG = SyncConfig(rpc_timeout=600.0, stream_idle_timeout=600.0)


def federation() -> SyncFederation:
    tf = SyncFederation("fed-bench")
    tf.add("a")
    tf.add("b")
    return tf


async def start_pair(tf: SyncFederation, root: Path) -> tuple[SyncNode, SyncNode]:
    a = tf.make_node("a", root / "a", CONFIG)
    b = tf.make_node("b", root / "b", CONFIG)
    await b.start("127.0.0.1:0", gossip=False)
    return a, b


async def stop_pair(a: SyncNode, b: SyncNode) -> None:
    for node in (a, b):
        await node.stop()
        node.state.close()


# -- 1. digest ---------------------------------------------------------------------------------


def fill(tf: SyncFederation, root: Path, n: int) -> None:
    """n signed contributions by member a, written straight into the store in one transaction
    (setup, not measured: the entries are valid, so E4State's checks are skipped here)."""
    state = tf.open_state(root / "a")
    key = tf.members["a"].key
    empty = manifest_of(chunk_bytes(b""))
    state.store.put_manifest(empty)
    seq, prev = state.chain_next(key.key_id)
    with state.store.transaction():
        for i in range(n):
            e = make_contribution(key, seq, prev, "bench/many", empty.digest, 0, metadata={"i": i})
            state.store.insert_entry(e, LIVE)
            seq, prev = seq + 1, e.id
    state.close()
    shutil.copytree(root / "a", root / "b")


def extra_entries(tf: SyncFederation, who: str, state_dir: Path, count: int) -> list:
    """`count` more signed contributions by `who`, continuing its chain in the store at
    `state_dir` (not written anywhere: each run inserts the prefix it needs)."""
    state = tf.open_state(state_dir)
    key = tf.members[who].key
    empty = manifest_of(chunk_bytes(b""))
    seq, prev = state.chain_next(key.key_id)
    state.close()
    out = []
    for i in range(count):
        e = make_contribution(key, seq, prev, "bench/diff", empty.digest, 0, metadata={"i": i})
        out.append(e)
        seq, prev = seq + 1, e.id
    return out


def insert(node: SyncNode, entries: list) -> None:
    """Commit entries straight into a running node's store (its change journal sees them)."""
    store = node.state.store
    with store.transaction():
        for e in entries:
            store.insert_entry(e, LIVE)


async def measure_exchange(a: SyncNode, b: SyncNode, method: str, cold: bool) -> dict[str, object]:
    """One digest exchange of `method` from a to b: bytes both ways, Digest calls, CPU of both
    sides (one process), what it found. `cold`: neither side has an encoding cached."""
    from crdtd.sync.reconcile import MerkleDescent, RatelessReconciliation
    from crdtd.sync.reconcile.rateless import cache_for

    conn = a._connection(b.address)
    await conn.ensure()
    if cold:
        cache_for(a.state.store).forget()
        cache_for(b.state.store).forget()
    exchange = MerkleDescent(CONFIG) if method == "merkle" else RatelessReconciliation(CONFIG)
    stats = conn.client.stats
    calls, moved = stats.calls, stats.bytes_total
    cpu = time.process_time()
    diff = await exchange.reconcile(a.state.store, conn.client.digest)
    return {
        "method": diff.method + (" cold" if cold else ""),
        "bytes": stats.bytes_total - moved,
        "round_trips": stats.calls - calls,
        "cpu_ms": 1000 * (time.process_time() - cpu),
        "diff": diff,
    }


async def bench_digest(n: int, ds: list[int], session_d: int, root: Path) -> None:
    """Merkle descent and rateless IBLT side by side at n shared entries and each d (half
    the differences on each side), then one whole session at `session_d`.

    The d entries are committed into running nodes whose encodings were built before, so
    "riblt" is the usual case (encodings brought up to date by the change journal); "riblt
    cold" rebuilds both encodings from every id (a node that just started)."""
    from crdtd.sync.reconcile.rateless import SALT, cache_for

    tf = federation()
    t0 = time.perf_counter()
    fill(tf, root, n)
    more_a = extra_entries(tf, "a", root / "a", max(ds) // 2 + 1)
    more_b = extra_entries(tf, "b", root / "b", max(ds) // 2 + 1)
    print(f"setup_seconds: {time.perf_counter() - t0:.1f}  (n={n} entries, signed and stored)")
    naive = 32 * n
    print(f"naive_full_list_bytes: {naive}  (cpu_ms: both sides, one process)")
    header = ("d", "method", "found", "bytes", "round_trips", "cpu_ms", "bytes_vs_full_list")
    print("  ".join(f"{h:>18}" for h in header))
    for d in ds:
        here = root / f"d{d}"
        shutil.rmtree(here, ignore_errors=True)
        shutil.copytree(root / "a", here / "a")
        shutil.copytree(root / "b", here / "b")
        only_a, only_b = more_a[: d // 2], more_b[: d - d // 2]
        a, b = await start_pair(tf, here)
        try:
            for node in (a, b):
                cache = cache_for(node.state.store)
                with cache.lock:
                    cache.current(node.state.store, SALT)[1].extend(64)
            insert(a, only_a)
            insert(b, only_b)
            for method, cold in (("merkle", False), ("riblt", False), ("riblt", True)):
                r = await measure_exchange(a, b, method, cold)
                diff = r["diff"]
                assert diff.missing_here == sorted(e.id for e in only_b), method  # type: ignore[attr-defined]
                assert diff.missing_there == sorted(e.id for e in only_a), method  # type: ignore[attr-defined]
                row = (
                    d,
                    r["method"],
                    len(diff.missing_here) + len(diff.missing_there),  # type: ignore[attr-defined]
                    r["bytes"],
                    r["round_trips"],
                    f"{r['cpu_ms']:.0f}",
                    f"{r['bytes'] / naive:.5f}",  # type: ignore[operator]
                )
                print("  ".join(f"{x!s:>18}" for x in row))
            if d == session_d:
                result = await a.sync_with(b.address)
                assert a.state.merkle_root() == b.state.merkle_root(), "roots differ"
                print(f"session_d: {d}  digest_method: {result.digest_method}")
                print(f"session_differences_found: {len(result.pulled) + len(result.pushed)}")
                print(f"session_digest_rounds: {result.digest_rounds}")
                print(f"session_round_trips: {result.stats.calls}  (session token already held)")
                print(f"session_digest_bytes: {result.digest_bytes}")
                print(f"session_bytes_exchanged: {result.stats.bytes_total}")
                print(f"session_bytes_vs_full_list: {result.stats.bytes_total / naive:.4f}")
        finally:
            await stop_pair(a, b)
            shutil.rmtree(here, ignore_errors=True)


# -- 2. transfer -------------------------------------------------------------------------------


def socket_baseline(chunks: list[bytes], dest: Path, window: int) -> float:
    """Seconds to send `chunks` over loopback TCP to a receiver that stores each with
    put_chunk (hash + durable write) off the receiving thread, `window` in flight."""
    store = NodeStore.open(dest)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    sizes = [len(c) for c in chunks]

    def send() -> None:
        conn, _ = srv.accept()
        with conn:
            for c in chunks:
                conn.sendall(c)

    sender = threading.Thread(target=send)
    sender.start()
    cl = socket.create_connection(("127.0.0.1", port))
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(window) as pool:
        pending: list[futures.Future[bytes]] = []
        for size in sizes:
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                k = cl.recv_into(view[got:], min(MiB, size - got))
                if k == 0:
                    raise ConnectionError("sender closed early")
                got += k
            pending.append(pool.submit(store.put_chunk, bytes(buf), None))
            if len(pending) >= window:
                pending.pop(0).result()
        for f in pending:
            f.result()
    seconds = time.perf_counter() - started
    sender.join()
    cl.close()
    srv.close()
    store.close()
    return seconds


def start_runner(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real node process (crdtd.sync.node_runner); returns once it prints READY."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "crdtd.sync.node_runner", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"node_runner did not start: {line!r}")
    return proc


async def bench_transfer(gib: float, root: Path, plaintext: bool) -> None:
    """Node b runs as its own process (as in a deployment); node a pulls from it."""
    from crdtd.crypto import federation as fedmod
    from crdtd.state.e4 import E4State
    from crdtd.sync.handshake import Identity
    from crdtd.sync.transport import GrpcTransport

    size = int(gib * 1024 * MiB)
    root.mkdir(parents=True, exist_ok=True)
    fed_dir = root / "fed"
    fedmod.init(fed_dir, "fed-bench")
    cfg_a, cfg_b = fedmod.add_node(fed_dir, "a"), fedmod.add_node(fed_dir, "b")
    admin_entries = fedmod.Federation.load(fed_dir).admin_entries()
    path = root / "payload.bin"
    with path.open("wb") as f:
        left = size
        while left:
            step = min(left, 64 * MiB)
            f.write(os.urandom(step))
            left -= step
    state_b = E4State.open(cfg_b.data_dir, cfg_b.federation.admin, cfg_b.federation.policy)
    for entry in admin_entries:
        state_b.apply(entry)
    source = FileSource(path)
    m = source.manifest
    e = make_contribution(cfg_b.load_key(), 1, None, "bench/big", m.digest, m.size)
    state_b.apply(e, source)
    state_b.close()
    path.unlink()

    store_b = NodeStore.open(cfg_b.data_dir)
    chunks = [store_b.read_chunk(c.digest) for c in m.chunks]
    store_b.close()
    # the baseline runs before and after the gRPC transfer; their mean cancels slow drift.
    # Each phase starts with the previous phase's written copy deleted, so all three write
    # into page cache the previous one freed (on a VM, never-used pages cost ~2x to fill;
    # before this, only the first baseline reused pages, those the payload file freed).
    before = await asyncio.to_thread(socket_baseline, chunks, root / "sock1", CONFIG.write_window)
    shutil.rmtree(root / "sock1")

    env = {"CRDTD_PEER_PLAINTEXT_LOOPBACK": "true"} if plaintext else {}
    proc = start_runner(cfg_b.path, env)
    state_a = E4State.open(cfg_a.data_dir, cfg_a.federation.admin, cfg_a.federation.policy)
    for entry in admin_entries:
        state_a.apply(entry)
    identity = Identity(
        cfg_a.load_key(),
        cfg_a.membership_bytes(),
        cfg_a.federation.id,
        cfg_a.federation.admin,
        cfg_a.federation.policy,
    )
    tls = None if plaintext else cfg_a.tls_material()
    a = SyncNode(state_a, identity, GrpcTransport(tls, CONFIG), CONFIG)
    try:
        started = time.perf_counter()
        result = await a.sync_with(cfg_b.advertise)
        seconds = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        await a.stop()
        state_a.close()
    assert result.pulled == [e.id], result.rejected
    transfer = size / seconds / 1e6
    shutil.rmtree(cfg_a.data_dir)

    after = await asyncio.to_thread(socket_baseline, chunks, root / "sock2", CONFIG.write_window)
    raw = size / ((before + after) / 2) / 1e6
    mode = "plain text" if plaintext else "mutual TLS"
    print(f"payload_bytes: {size}  chunks: {len(m.chunks)}  session_calls: {result.stats.calls}")
    print(f"transfer_seconds: {seconds:.2f}  ({mode}, sender in its own process)")
    print(f"transfer_MBps: {transfer:.0f}")
    print(f"raw_socket_seconds: {before:.2f} before, {after:.2f} after the transfer")
    print(f"raw_socket_MBps: {raw:.0f}")
    print(f"transfer_vs_socket: {transfer / raw:.2f}")


# -- 3. fine-tune ------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return bytes(save(tensors))


async def bench_finetune(total_mb: int, root: Path) -> None:
    tf = federation()
    rng = np.random.default_rng(0)
    count = 20
    per = max(1, total_mb * MiB // count // 4)
    base = {f"layers.{i}.weight": rng.standard_normal(per, dtype=np.float32) for i in range(count)}
    tuned = dict(base)
    for i in range(0, count, 10):  # 10 % of the tensors change
        tuned[f"layers.{i}.weight"] = base[f"layers.{i}.weight"] * 1.01
    base_b, tuned_b = safetensors_bytes(base), safetensors_bytes(tuned)
    a, b = await start_pair(tf, root)
    e_base = tf.fed.contribute("b", base_b, "bench/model", payload_kind="safetensors")
    await b.add_local(e_base, BytesSource(base_b))
    await a.sync_with(b.address)
    e_tuned = tf.fed.contribute(
        "b", tuned_b, "bench/model", payload_kind="safetensors", base_id=e_base.id
    )
    await b.add_local(e_tuned, BytesSource(tuned_b))
    result = await a.sync_with(b.address)
    assert result.pulled == [e_tuned.id]
    moved = result.stats.bytes_total
    print(f"finetune_payload_bytes: {len(tuned_b)}  chunks_fetched: {result.chunks_fetched}")
    print(f"bytes_sent: {moved}")
    print(f"bytes_sent_vs_payload: {moved / len(tuned_b):.3f}")
    await stop_pair(a, b)


# -- 4. grpc.aio vs threaded -------------------------------------------------------------------


def compare_apis(total: int, root: Path) -> None:
    import grpc

    chunk = os.urandom(4 * MiB)
    ident = lambda b: b  # noqa: E731
    opts = CONFIG.grpc_options()

    def pieces():
        for i in range(total // len(chunk)):
            unique = i.to_bytes(8, "big") + chunk[8:]  # distinct chunks: each is written
            for off in range(0, len(unique), MiB):
                yield unique[off : off + MiB]

    def receive(it, store: NodeStore) -> None:
        parts, n, pending = [], 0, []
        with futures.ThreadPoolExecutor(CONFIG.write_window) as pool:
            for m in it:
                parts.append(m)
                n += len(m)
                if n == len(chunk):
                    pending.append(pool.submit(store.put_chunk, b"".join(parts), None))
                    if len(pending) > CONFIG.write_window:
                        pending.pop(0).result()
                    parts, n = [], 0
            for f in pending:
                f.result()

    server = grpc.server(futures.ThreadPoolExecutor(4), options=opts)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "b.B",
                {"S": grpc.unary_stream_rpc_method_handler(lambda r, c: pieces(), ident, ident)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
        store = NodeStore.open(root / "threaded")
        t = time.perf_counter()
        receive(
            ch.unary_stream("/b.B/S", request_serializer=ident, response_deserializer=ident)(b""),
            store,
        )
        threaded = total / (time.perf_counter() - t) / 1e6
        store.close()
    server.stop(0)

    async def aio() -> float:
        server = grpc.aio.server(options=opts)

        async def handler(req, ctx):
            for p in pieces():
                yield p

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "b.B", {"S": grpc.unary_stream_rpc_method_handler(handler, ident, ident)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        store = NodeStore.open(root / "aio")
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
            call = ch.unary_stream("/b.B/S", request_serializer=ident, response_deserializer=ident)
            t = time.perf_counter()
            parts, n, pending = [], 0, []
            async for m in call(b""):
                parts.append(m)
                n += len(m)
                if n == len(chunk):
                    pending.append(
                        loop.run_in_executor(None, store.put_chunk, b"".join(parts), None)
                    )
                    parts, n = [], 0
                    if len(pending) >= CONFIG.write_window:
                        await pending.pop(0)
            await asyncio.gather(*pending)
            rate = total / (time.perf_counter() - t) / 1e6
        await server.stop(0)
        store.close()
        return rate

    rate_aio = asyncio.run(aio())
    print(f"api_stream_aio_MBps: {rate_aio:.0f}")
    print(f"api_stream_threaded_MBps: {threaded:.0f}")
    print(f"aio_vs_threaded: {rate_aio / threaded:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="entries on both nodes")
    parser.add_argument("--d", type=int, default=10, help="differences for the whole session")
    parser.add_argument(
        "--ds", default="1,10,100,1000,10000", help="differences for the digest table"
    )
    parser.add_argument("--gib", type=float, default=1.0, help="payload size for the transfer")
    parser.add_argument("--ft-mb", type=int, default=80, help="fine-tune checkpoint size (MB)")
    parser.add_argument("--only", choices=["digest", "transfer", "finetune"], default=None)
    parser.add_argument("--compare-apis", action="store_true", help="also time aio vs threaded")
    parser.add_argument(
        "--plaintext", action="store_true", help="transfer over plain-text loopback, not TLS"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_sync-") as tmp:
        root = Path(tmp)
        if args.only in (None, "digest"):
            ds = [int(x) for x in args.ds.split(",")]
            asyncio.run(bench_digest(args.n, ds, args.d, root / "digest"))
        if args.only in (None, "finetune"):
            asyncio.run(bench_finetune(args.ft_mb, root / "finetune"))
        if args.compare_apis:
            compare_apis(int(args.gib * 1024) * MiB, root / "apis")
        if args.only in (None, "transfer"):
            asyncio.run(bench_transfer(args.gib, root / "transfer", args.plaintext))
    return 0


if __name__ == "__main__":
    sys.exit(main())
