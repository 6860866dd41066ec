"""Two real gRPC nodes on loopback: push-pull in one session, refusals, tampered headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from crdtd.crypto.keys import NodeKey
from crdtd.errors import ConfigError, HandshakeError, PeerRefusedError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import peer_pb2_grpc as pb_grpc
from crdtd.state.entry import ED25519, Entry, Signature
from crdtd.store.chunks import CHUNK_SIZE, BytesSource
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import Identity
from crdtd.sync.node import SyncNode
from crdtd.sync.peer import LocalPeer
from crdtd.sync.session import Connection
from crdtd.sync.tls import choose_security
from crdtd.sync.transport import Caller, GrpcTransport
from tests.sync_support import (
    FAST,
    SyncFederation,
    async_test,
    federation_of,
    make_node,
    push_contribution,
    snapshot,
)


@pytest.fixture
def tf() -> SyncFederation:
    return federation_of("a", "b", "c")


@async_test
async def test_one_session_pulls_and_pushes_over_mutual_tls(tf, tmp_path: Path) -> None:
    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    try:
        for who, node in (("a", a), ("a", a), ("b", b)):
            e, payload = tf.contribution(who, 50_000)
            await push_contribution(node, e, payload)
        result = await a.sync_with(b.address)
        assert len(result.pulled) == 1 and len(result.pushed) == 2
        assert not result.rejected and not result.incomplete
        assert snapshot(a) == snapshot(b)
        assert len(a.state.visible()) == 3
        again = await a.sync_with(b.address)
        assert again.in_sync and again.stats.calls == 1  # session reused: one Digest call
    finally:
        await a.stop()
        await b.stop()


class PieceRecorder:
    """Wraps a PeerClient's chunk stream to record piece sizes."""

    def __init__(self, client) -> None:
        self.client = client
        self.sizes: list[int] = []
        original = client.fetch_chunks

        async def fetch(req) -> AsyncIterator[pb.ChunkPiece]:
            async for piece in original(req):
                self.sizes.append(len(piece.data))
                yield piece

        client.fetch_chunks = fetch


@async_test
async def test_payloads_stream_in_pieces_of_at_most_one_mib(tf, tmp_path: Path) -> None:
    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    try:
        e, payload = tf.contribution("b", 2 * CHUNK_SIZE + 12345)
        await push_contribution(b, e, payload)
        recorder = PieceRecorder(a._connection(b.address).client)
        result = await a.sync_with(b.address)
        assert result.pulled == [e.id] and result.chunks_fetched == 3
        assert max(recorder.sizes) <= 1024 * 1024
        assert sum(recorder.sizes) == len(payload)
        assert a.state.store.read_payload(e.as_contribution().payload_digest) == payload
    finally:
        await a.stop()
        await b.stop()


async def _status_of_handshake(address: str, tls, identity: Identity, view) -> grpc.StatusCode:
    """Dial with raw gRPC and return the status the server answers a hello with."""
    from crdtd.sync.handshake import client_hello

    creds = tls.channel_credentials()
    async with grpc.aio.secure_channel(address, creds) as channel:
        stub = pb_grpc.PeerStub(channel)
        try:
            await stub.Handshake(client_hello(identity, b"\x00" * 32, []), timeout=20)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@async_test
async def test_outsiders_and_revoked_peers_are_refused_with_clear_status(
    tf, tmp_path: Path
) -> None:
    server = make_node(tf, "a", tmp_path / "a")
    await server.start("127.0.0.1:0", gossip=False)
    try:
        # another federation: its own CA, so TLS itself fails
        other = SyncFederation("fed-other")
        other.add("x")
        x = make_node(other, "x", tmp_path / "x")
        with pytest.raises(HandshakeError, match="TLS handshake failed") as err:
            await x.sync_with(server.address)
        assert err.value.code == "UNAVAILABLE"
        await x.stop()

        # a key with a certificate from our CA but no membership entry
        outsider_key = NodeKey.generate()
        outsider = Identity(
            outsider_key, b"", tf.federation_id, tf.fed.admin.public_keys, tf.identity("b").policy
        )
        tls = tf.tls_for(outsider_key, "outsider")
        code = await _status_of_handshake(server.address, tls, outsider, server.state)
        assert code == grpc.StatusCode.PERMISSION_DENIED

        # a certificate naming one key, a handshake signed by another
        b_ident = tf.identity("b")
        code = await _status_of_handshake(server.address, tls, b_ident, server.state)
        assert code == grpc.StatusCode.UNAUTHENTICATED

        # a revoked member
        b = make_node(tf, "b", tmp_path / "b")
        server.state.apply(tf.fed.revoke("admin", tf.members["b"].key.key_id))
        with pytest.raises(PeerRefusedError, match="revoked") as err:
            await b.sync_with(server.address)
        assert err.value.code == "PERMISSION_DENIED"
        await b.stop()

        # no handshake at all: every other call is refused
        async with grpc.aio.secure_channel(
            server.address, tf.members["c"].tls.channel_credentials()
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as rpc:
                await pb_grpc.PeerStub(channel).Digest(pb.DigestRequest(), timeout=20)
            assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop()


@async_test
async def test_wrong_federation_id_is_refused_on_plaintext_loopback(tf, tmp_path: Path) -> None:
    server = make_node(tf, "a", tmp_path / "a", tls=False)
    await server.start("127.0.0.1:0", gossip=False)
    try:
        client = make_node(tf, "b", tmp_path / "b", tls=False)
        client.identity = replace(client.identity, federation_id="fed-elsewhere")
        with pytest.raises(PeerRefusedError, match="fed-elsewhere") as err:
            await client.sync_with(server.address)
        assert err.value.code == "PERMISSION_DENIED"
        await client.stop()
        honest = make_node(tf, "c", tmp_path / "c", tls=False)
        assert (await honest.sync_with(server.address)).in_sync
        await honest.stop()
    finally:
        await server.stop()


def test_plain_text_is_refused_unless_every_address_is_loopback() -> None:
    def no_tls():
        raise AssertionError("TLS material should not be needed")

    assert choose_security(True, ["127.0.0.1:7000", "localhost:7001", "[::1]:7002"], no_tls) is None
    with pytest.raises(ConfigError, match=r"10\.0\.0\.7:7000"):
        choose_security(True, ["127.0.0.1:7000", "10.0.0.7:7000"], no_tls)
    with pytest.raises(ConfigError, match="loopback only"):
        GrpcTransport(None).connect("192.168.1.5:7000")
    loaded = []
    choose_security(False, ["10.0.0.7:7000"], lambda: loaded.append(1) or None)
    assert loaded == [1]


class TamperingPeer(LocalPeer):
    """Serves one entry with a forged signature and swaps another for an unasked entry."""

    def __init__(self, *args, forged: bytes, swapped: bytes, decoy: bytes, **kw) -> None:
        super().__init__(*args, **kw)
        self.forged, self.swapped, self.decoy = forged, swapped, decoy

    async def fetch_entries(self, caller: Caller, req) -> AsyncIterator[pb.EntryBatch]:
        async for batch in super().fetch_entries(caller, req):
            for rec in batch.records:
                e = Entry.from_bytes(rec.entry)
                if e.id == self.forged:
                    bad = Entry.from_parts(e.header_bytes, [Signature(ED25519, bytes(64))])
                    rec.entry = bad.to_bytes()
                elif e.id == self.swapped:
                    rec.entry = self.decoy
            yield batch


@async_test
async def test_tampered_headers_are_rejected_and_not_applied(tf, tmp_path: Path) -> None:
    evil_state = tf.open_state(tmp_path / "evil")
    entries = []
    for who in ("b", "b", "c"):
        e, payload = tf.contribution(who, 5000)
        evil_state.apply(e, BytesSource(payload))
        entries.append(e)
    decoy, _ = tf.contribution("c", 10)
    forged, swapped, honest = entries
    evil = TamperingPeer(
        evil_state,
        tf.identity("b"),
        FAST,
        forged=forged.id,
        swapped=swapped.id,
        decoy=decoy.to_bytes(),
    )
    transport = GrpcTransport(tf.members["b"].tls, FAST)
    listener = await transport.serve(evil, "127.0.0.1:0")
    victim = make_node(tf, "a", tmp_path / "a")
    try:
        result = await victim.sync_with(listener.address)
        reasons = dict(result.rejected)
        assert "signature does not verify" in reasons[forged.id]
        assert "not asked for" in reasons[decoy.id]
        assert result.pulled == [honest.id]
        held = {e.id for e in victim.state.visible()}
        assert honest.id in held and forged.id not in held and swapped.id not in held
        assert not victim.state.store.has_entry(forged.id)
        assert not victim.state.store.has_entry(decoy.id)
    finally:
        await victim.stop()
        await listener.stop(None)
        await transport.close()


@async_test
async def test_pushed_forgeries_are_refused_and_leave_the_server_unchanged(
    tf, tmp_path: Path
) -> None:
    server = make_node(tf, "a", tmp_path / "a")
    await server.start("127.0.0.1:0", gossip=False)
    pusher_state = tf.open_state(tmp_path / "p")
    transport = GrpcTransport(tf.members["b"].tls, FAST)
    conn = Connection(transport.connect(server.address), tf.identity("b"), pusher_state, FAST)
    try:
        await conn.ensure()
        e, _ = tf.contribution("b", 3000)
        bad = Entry.from_parts(e.header_bytes, [Signature(ED25519, bytes(64))])
        before = snapshot(server)
        reply = await conn.client.offer(
            pb.OfferRequest(records=[pb.EntryRecord(entry=bad.to_bytes())])
        )
        assert [bytes(r.id) for r in reply.rejected] == [e.id]
        assert "signature does not verify" in reply.rejected[0].reason

        async def messages() -> AsyncIterator[pb.PushMessage]:
            yield pb.PushMessage(record=pb.EntryRecord(entry=bad.to_bytes()))

        with pytest.raises(PeerRefusedError) as err:
            await conn.client.push(messages())
        assert err.value.code == "INVALID_ARGUMENT"
        assert snapshot(server) == before
    finally:
        await server.stop()
        await transport.close()
        pusher_state.close()


def test_sync_config_rejects_giant_pieces() -> None:
    with pytest.raises(ConfigError, match="1 MiB"):
        SyncConfig(piece_size=4 * 1024 * 1024)
    with pytest.raises(ConfigError, match="positive"):
        SyncConfig(fanout=0)


def test_public_names_load_lazily_from_the_package() -> None:
    import crdtd.sync as sync

    assert sync.SyncNode is SyncNode
    with pytest.raises(AttributeError, match="no attribute"):
        _ = sync.NotAThing
