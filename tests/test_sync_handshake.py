"""The handshake: both sides prove their Ed25519 key; outsiders and revoked keys are refused."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from crdtd.crypto.keys import NodeKey
from crdtd.errors import HandshakeError, PeerRefusedError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import E4State
from crdtd.state.entry import make_membership
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import (
    NONCE_SIZE,
    HandshakeServer,
    Identity,
    client_hello,
    verify_server_hello,
)
from tests.sync_support import SyncFederation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> tuple[SyncFederation, E4State, E4State, HandshakeServer, Clock]:
    tf = SyncFederation()
    for name in ("server", "client"):
        tf.add(name)
    s_state = tf.open_state(tmp_path / "s")
    c_state = tf.open_state(tmp_path / "c")
    clock = Clock()
    server = HandshakeServer(tf.identity("server"), s_state, SyncConfig(), clock)
    return tf, s_state, c_state, server, clock


def shake(
    server: HandshakeServer,
    client: Identity,
    view: E4State,
    tls_key_id: bytes | None = None,
) -> bytes:
    hello = client_hello(client, secrets.token_bytes(NONCE_SIZE), [])
    reply = server.hello(hello, tls_key_id)
    _, proof = verify_server_hello(client, hello, reply, view, "server:1")
    return server.prove(proof, tls_key_id).token


def test_members_complete_the_handshake_and_get_a_session(world) -> None:
    tf, _, c_state, server, _ = world
    client = tf.identity("client")
    token = shake(server, client, c_state, tls_key_id=client.key_id)
    session = server.session(token, client.key_id)
    assert session.peer.key_id == client.key_id
    assert "merkle/1" in session.peer.capabilities


def test_peer_of_another_federation_is_refused(world) -> None:
    tf, _, c_state, server, _ = world
    from dataclasses import replace

    stranger = replace(tf.identity("client"), federation_id="fed-other")
    with pytest.raises(PeerRefusedError, match="fed-other"):
        shake(server, stranger, c_state)


def test_other_protocol_version_is_refused(world) -> None:
    tf, _, _, server, _ = world
    hello = client_hello(tf.identity("client"), secrets.token_bytes(NONCE_SIZE), [])
    hello.protocol_version = 99
    with pytest.raises(PeerRefusedError, match="protocol version 99"):
        server.hello(hello, None)


def test_key_without_admin_signed_membership_is_refused(world) -> None:
    tf, _, c_state, server, _ = world
    outsider = NodeKey.generate()
    fake_admin = NodeKey.generate()
    forged = make_membership(fake_admin, 1, None, outsider.public_keys, "outsider")
    ident = Identity(
        outsider,
        forged.to_bytes(),
        tf.federation_id,
        tf.fed.admin.public_keys,
        tf.identity("client").policy,
    )
    with pytest.raises(PeerRefusedError, match="not this federation's admin"):
        shake(server, ident, c_state)
    bare = Identity(outsider, b"", tf.federation_id, tf.fed.admin.public_keys, ident.policy)
    with pytest.raises(PeerRefusedError, match="not a member"):
        shake(server, bare, c_state)


def test_revoked_key_is_refused_and_its_live_session_cut(world) -> None:
    tf, s_state, c_state, server, _ = world
    client = tf.identity("client")
    token = shake(server, client, c_state)
    s_state.apply(tf.fed.revoke("admin", client.key_id))
    with pytest.raises(PeerRefusedError, match="revoked"):
        server.session(token, None)
    with pytest.raises(PeerRefusedError, match="revoked"):
        shake(server, client, c_state)


def test_tls_certificate_must_name_the_signing_key(world) -> None:
    tf, _, c_state, server, _ = world
    client = tf.identity("client")
    other = tf.identity("server").key_id
    with pytest.raises(HandshakeError, match="TLS certificate names key"):
        shake(server, client, c_state, tls_key_id=other)


def test_forged_client_signature_is_rejected(world) -> None:
    tf, _, c_state, server, _ = world
    client = tf.identity("client")
    hello = client_hello(client, secrets.token_bytes(NONCE_SIZE), [])
    reply = server.hello(hello, None)
    _, proof = verify_server_hello(client, hello, reply, c_state, "server:1")
    proof.signature = bytes(64)
    with pytest.raises(HandshakeError, match="does not verify"):
        server.prove(proof, None)


def test_proof_cannot_be_replayed(world) -> None:
    tf, _, c_state, server, _ = world
    client = tf.identity("client")
    hello = client_hello(client, secrets.token_bytes(NONCE_SIZE), [])
    reply = server.hello(hello, None)
    _, proof = verify_server_hello(client, hello, reply, c_state, "server:1")
    server.prove(proof, None)
    with pytest.raises(HandshakeError, match="no outstanding challenge"):
        server.prove(proof, None)


def test_client_rejects_a_server_that_cannot_sign_for_its_key(world) -> None:
    tf, _, c_state, server, _ = world
    client = tf.identity("client")
    hello = client_hello(client, secrets.token_bytes(NONCE_SIZE), [])
    reply = server.hello(hello, None)
    reply.signature = bytes(64)
    with pytest.raises(HandshakeError, match="signature does not verify"):
        verify_server_hello(client, hello, reply, c_state, "server:1")


def test_sessions_expire(world) -> None:
    tf, _, c_state, server, clock = world
    token = shake(server, tf.identity("client"), c_state)
    clock.now += SyncConfig().session_ttl + 1
    with pytest.raises(HandshakeError, match="expired"):
        server.session(token, None)
    with pytest.raises(HandshakeError, match="no session token"):
        server.session(None, None)


def test_peer_exchange_travels_in_the_handshake(world) -> None:
    tf, _, c_state, server, _ = world
    client = tf.identity("client")
    server.known_peers = lambda: [("127.0.0.1:7001", b"\x01" * 32)]
    hello = client_hello(
        client, secrets.token_bytes(NONCE_SIZE), [("127.0.0.1:7002", b"\x02" * 32)]
    )
    reply = server.hello(hello, None)
    peer, _ = verify_server_hello(client, hello, reply, c_state, "server:1")
    assert peer.peers == (("127.0.0.1:7001", b"\x01" * 32),)
    assert [p.address for p in hello.peers] == ["127.0.0.1:7002"]
    assert isinstance(reply, pb.HandshakeResponse)


def test_an_oversized_advertised_address_is_refused_without_echoing_it(world) -> None:
    tf, _, _, server, _ = world
    hello = client_hello(tf.identity("client"), secrets.token_bytes(NONCE_SIZE), [])
    hello.advertise = "h" * 100_000
    with pytest.raises(HandshakeError, match="100000 characters") as info:
        server.hello(hello, None)
    assert len(str(info.value)) < 600
