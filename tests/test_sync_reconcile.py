"""Set reconciliation: the rateless IBLT recovers exactly the symmetric difference, in one or
two calls for a few differences, and hands over to the Merkle descent past its budget."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.sync.config import SyncConfig
from crdtd.sync.reconcile import Difference, MerkleDescent, RatelessReconciliation
from crdtd.sync.reconcile.riblt import Decoder, Encoder, Symbols
from tests.test_sync_digest import IndexSource, any_id, ids


def decode_stream(mine: set[bytes], theirs: set[bytes], salt: int, limit: int) -> Decoder:
    """Feed `theirs`' symbols to a decoder over `mine`, 8 at a time, up to `limit` symbols."""
    remote = Encoder.of_ids(b"".join(sorted(theirs)), salt)
    decoder = Decoder(Encoder.of_ids(b"".join(sorted(mine)), salt))
    while not decoder.decoded and decoder.size < limit:
        decoder.add(remote.symbols(decoder.size, decoder.size + 8))
    return decoder


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shared=st.sets(any_id, max_size=200),
    only_a=st.sets(any_id, max_size=60),
    only_b=st.sets(any_id, max_size=60),
    salt=st.integers(0, 2**64 - 1),
)
def test_decoding_recovers_exactly_the_symmetric_difference(
    shared: set[bytes], only_a: set[bytes], only_b: set[bytes], salt: int
) -> None:
    a, b = shared | only_a, (shared | only_b) - only_a
    d = len(a ^ b)
    decoder = decode_stream(a, b, salt, limit=8 * d + 64)
    assert decoder.decoded
    assert decoder.remote_only() == sorted(b - a)
    assert decoder.local_only() == sorted(a - b)


def test_symbols_are_incremental_and_survive_the_wire() -> None:
    some = b"".join(sorted(ids(500, "w")))
    whole = Encoder.of_ids(some, 5).symbols(0, 300)
    stepwise = Encoder.of_ids(some, 5)
    parts = [stepwise.symbols(s, s + 50) for s in range(0, 300, 50)]
    for field in ("sums", "checks", "counts"):
        joined = np.concatenate([getattr(p, field) for p in parts])
        assert np.array_equal(joined, getattr(whole, field))
    again = Symbols.from_wire(0, *whole.to_wire())
    assert np.array_equal(again.sums, whole.sums) and np.array_equal(again.counts, whole.counts)
    with pytest.raises(ValueError):
        Symbols.from_wire(0, b"\x00" * 31, b"", [1])


def test_about_one_and_a_third_symbols_per_difference_at_scale() -> None:
    shared = ids(20_000, "s")
    a, b = shared | ids(500, "a"), shared | ids(500, "b")
    decoder = decode_stream(a, b, salt=11, limit=10_000)
    assert decoder.decoded and len(decoder.remote_only()) == 500
    assert decoder.size <= 1.6 * 1000  # paper: ~1.35 per difference at large d


def exchange(
    local: IndexSource, remote: IndexSource, config: SyncConfig | None = None
) -> tuple[Difference, int, int]:
    """Reconcile `local` against `remote`; returns the difference, bytes and calls."""
    client = RatelessReconciliation(config)
    server = RatelessReconciliation(config)
    moved = calls = 0

    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        nonlocal moved, calls
        reply = server.answer(remote, pb.DigestRequest.FromString(req.SerializeToString()))
        moved += req.ByteSize() + reply.ByteSize()
        calls += 1
        return reply

    return asyncio.run(client.reconcile(local, ask)), moved, calls


def test_ten_differences_of_twenty_thousand_cost_two_calls_and_two_kilobytes() -> None:
    base = ids(20_000, "base")
    a, b = base | ids(5, "only-a"), base | ids(5, "only-b")
    diff, moved, calls = exchange(IndexSource(a), IndexSource(b))
    assert diff.method == "riblt"
    assert diff.missing_here == sorted(b - a) and diff.missing_there == sorted(a - b)
    assert calls <= 2 and diff.rounds == calls
    assert moved < 3200, moved  # <= 0.001 of the 32-byte id list at n = 100k


def test_equal_replicas_settle_in_one_call_without_symbols() -> None:
    same = ids(3000, "x")
    diff, moved, calls = exchange(IndexSource(same), IndexSource(same))
    assert diff.in_sync and calls == 1 and moved < 150


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shared=st.sets(any_id, max_size=80),
    only_a=st.sets(any_id, max_size=40),
    only_b=st.sets(any_id, max_size=40),
    budget=st.sampled_from([1, 8, 32, 65_536]),
)
def test_past_the_budget_the_merkle_descent_finishes_exactly(
    shared: set[bytes], only_a: set[bytes], only_b: set[bytes], budget: int
) -> None:
    a, b = shared | only_a, (shared | only_b) - only_a
    config = SyncConfig(riblt_first_symbols=4, riblt_max_symbols=budget)
    diff, _, _ = exchange(IndexSource(a), IndexSource(b), config)
    assert diff.missing_here == sorted(b - a)
    assert diff.missing_there == sorted(a - b)
    if budget == 1 and len(a ^ b) > 1:
        assert diff.method == "riblt+merkle"


def test_an_empty_replica_goes_to_the_descent_after_one_call() -> None:
    full = ids(5000, "full")
    diff, _, _ = exchange(IndexSource(set()), IndexSource(full))
    assert diff.method == "riblt+merkle"
    assert diff.missing_here == sorted(full)


def _changing_peer(times: int) -> tuple[IndexSource, IndexSource, list[bytes], Difference]:
    """Reconcile against a peer that commits new ids before each of its first `times`
    continuation calls (so those streams go stale)."""
    base = ids(2000, "base")
    local, remote = IndexSource(base | ids(300, "a")), IndexSource(base)
    client = RatelessReconciliation(SyncConfig(riblt_first_symbols=8))
    server = RatelessReconciliation()
    added: list[bytes] = []

    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        if req.WhichOneof("method") == "riblt" and req.riblt.start > 0 and len(added) < times:
            late = hashlib.sha256(b"late-%d" % len(added)).digest()
            remote.add([late])  # a commit between two calls: the stream is stale
            added.append(late)
        return server.answer(remote, req)

    return local, remote, added, asyncio.run(client.reconcile(local, ask))


def test_a_stream_made_stale_by_a_commit_starts_again_once() -> None:
    _, _, added, diff = _changing_peer(times=1)
    assert diff.method == "riblt"
    assert diff.missing_here == sorted(added)
    assert diff.missing_there == sorted(ids(300, "a"))


def test_a_peer_that_keeps_changing_is_finished_by_the_descent() -> None:
    _, _, added, diff = _changing_peer(times=10)
    assert diff.method == "riblt+merkle"
    assert diff.missing_here == sorted(added)
    assert diff.missing_there == sorted(ids(300, "a"))


def test_encodings_follow_commits_without_rebuilding(tmp_path) -> None:
    from crdtd.state import E4State
    from crdtd.state.testing import Federation, bulk_contributions
    from crdtd.sync.reconcile.rateless import SALT, cache_for

    fed = Federation()
    state = E4State.open(tmp_path / "n", fed.admin.public_keys)
    state.apply(fed.add_member("a"))
    bulk_contributions(state, fed.keys["a"], 300)
    cache = cache_for(state.store)
    root, enc = cache.current(state.store, SALT)
    enc.extend(64)
    bulk_contributions(state, fed.keys["a"], 20, step=7)  # three more commits
    root2, enc2 = cache.current(state.store, SALT)
    assert root2 != root and cache.rebuilds == 1
    fresh = Encoder.of_ids(b"".join(state.store.all_ids()), SALT).symbols(0, 64)
    now = enc2.symbols(0, 64)
    for field in ("sums", "checks", "counts"):
        assert np.array_equal(getattr(now, field), getattr(fresh, field))
    state.close()


def _answers(reply: pb.RibltSymbols) -> None:
    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        return pb.DigestResponse(riblt=reply)

    asyncio.run(RatelessReconciliation().reconcile(IndexSource(ids(40, "l")), ask))


def test_malformed_symbol_answers_are_protocol_errors() -> None:
    bad = {
        "wrong start": pb.RibltSymbols(start=3, sums=bytes(32), checks=bytes(8), counts=[1]),
        "ragged sums": pb.RibltSymbols(sums=bytes(31), checks=bytes(8), counts=[1]),
        "no symbols": pb.RibltSymbols(),
        "too many": pb.RibltSymbols(sums=bytes(32 * 40), checks=bytes(8 * 40), counts=[0] * 40),
    }
    for label, reply in bad.items():
        with pytest.raises(ProtocolError):
            _answers(reply)
        assert label
    with pytest.raises(ProtocolError):
        asyncio.run(
            RatelessReconciliation().reconcile(IndexSource(set()), lambda req: _merkle_reply())
        )


async def _merkle_reply() -> pb.DigestResponse:
    return pb.DigestResponse(merkle=pb.MerkleNodes())


def test_server_refuses_giant_symbol_requests_and_merkle_only_nodes_refuse_riblt() -> None:
    src = IndexSource(ids(10, "s"))
    giant = pb.DigestRequest(riblt=pb.RibltRequest(start=0, count=1 << 20))
    with pytest.raises(ProtocolError):
        RatelessReconciliation().answer(src, giant)
    with pytest.raises(ProtocolError):
        MerkleDescent().answer(src, pb.DigestRequest(riblt=pb.RibltRequest(count=4)))


def test_an_empty_replica_learns_a_large_set_in_few_descent_calls() -> None:
    full = {hashlib.sha256(f"big-{i}".encode()).digest() for i in range(30_000)}
    server = MerkleDescent()
    remote = IndexSource(full)
    calls = 0

    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        nonlocal calls
        calls += 1
        return server.answer(remote, req)

    diff = asyncio.run(MerkleDescent().reconcile(IndexSource(set()), ask))
    assert diff.missing_here == sorted(full)
    assert calls <= 1 + 256 // 32 + 2  # root, then the 256 subtrees listed 32 per call


def test_a_commit_here_during_a_stream_starts_it_again_and_counts_the_new_id() -> None:
    base = ids(2000, "base")
    local, remote = IndexSource(base), IndexSource(base | ids(300, "b"))
    client = RatelessReconciliation(SyncConfig(riblt_first_symbols=8))
    server = RatelessReconciliation()
    mine = hashlib.sha256(b"committed here meanwhile").digest()

    async def ask(req: pb.DigestRequest) -> pb.DigestResponse:
        if req.WhichOneof("method") == "riblt" and req.riblt.start > 0 and mine not in local.ids:
            local.add([mine])
        return server.answer(remote, req)

    diff = asyncio.run(client.reconcile(local, ask))
    assert diff.method == "riblt"
    assert diff.missing_here == sorted(ids(300, "b"))
    assert diff.missing_there == [mine]
