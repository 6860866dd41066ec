"""The mutual handshake: federation id, protocol version, key ids, capabilities, signed nonces.

Both sides prove they hold the Ed25519 key they claim by signing one transcript that binds
the federation, the protocol version, both key ids and both nonces (the client's and the
server's challenge). With mutual TLS the server also checks that the client certificate's
`crdtd:node:<key id>` SAN names the key that signs; since the server's signature covers the
client's key id, a relaying member cannot splice two authenticated halves together
(docs/sync.md, "Handshake"). A peer is accepted only when an admin-signed membership entry
names its key (presented in the hello, or already in our state) and our state has not
revoked it.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import PublicKeys, SignaturePolicy, verify_ed25519
from crdtd.errors import HandshakeError, MalformedEntryError, PeerRefusedError, SignatureError, echo
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.entry import Entry, Kind
from crdtd.sync.config import CAPABILITIES, PROTOCOL_VERSION, SyncConfig

NONCE_SIZE = 32
TRANSCRIPT_DOMAIN = b"crdtd/handshake/v1\x00"
MAX_ADVERTISE = 300  # host:port of a peer; longer is refused, not echoed or gossiped


class MembershipView(Protocol):
    """What the handshake asks the local state (E4State satisfies it)."""

    def members(self) -> dict[bytes, PublicKeys]: ...

    def is_revoked(self, key_id: bytes) -> bool: ...


@dataclass(frozen=True)
class Identity:
    """Who we are in a handshake: our key, membership entry and the federation's roots."""

    key: NodeKey
    membership: bytes
    federation_id: str
    admin: PublicKeys
    policy: SignaturePolicy
    advertise: str = ""

    @property
    def key_id(self) -> bytes:
        """Our Ed25519 key id."""
        return self.key.key_id


@dataclass(frozen=True)
class PeerIdentity:
    """A peer whose handshake verified: its key, where it serves, what it can do."""

    key_id: bytes
    public_keys: PublicKeys
    advertise: str
    capabilities: tuple[str, ...]
    peers: tuple[tuple[str, bytes], ...]

    @property
    def short(self) -> str:
        """First 16 hex digits of the key id (for messages and logs)."""
        return self.key_id.hex()[:16]


def transcript(
    role: bytes,
    federation_id: str,
    version: int,
    client_key_id: bytes,
    server_key_id: bytes,
    client_nonce: bytes,
    server_nonce: bytes,
) -> bytes:
    """The bytes each side signs (`role` is b"client" or b"server"): fixed-width fields only."""
    fed = federation_id.encode()
    return b"".join(
        [
            TRANSCRIPT_DOMAIN,
            role,
            b"\x00",
            len(fed).to_bytes(2, "big"),
            fed,
            version.to_bytes(4, "big"),
            client_key_id,
            server_key_id,
            client_nonce,
            server_nonce,
        ]
    )


def peer_public_keys(
    membership: bytes,
    key_id: bytes,
    identity: Identity,
    view: MembershipView,
    where: str,
) -> PublicKeys:
    """The peer's public keys if it is a current member; PeerRefusedError otherwise."""
    if len(key_id) != 32:
        raise HandshakeError(f"{where}: key id has {len(key_id)} bytes, expected 32")
    if key_id == identity.key_id:
        raise PeerRefusedError(f"{where}: peer presents our own key id {key_id.hex()[:16]}")
    if view.is_revoked(key_id):
        raise PeerRefusedError(f"{where}: key {key_id.hex()} is revoked in this federation")
    if membership:
        try:
            entry = Entry.from_bytes(membership)
        except MalformedEntryError as exc:
            raise HandshakeError(f"{where}: membership entry is malformed ({exc})") from None
        if entry.kind is not Kind.MEMBERSHIP:
            raise HandshakeError(f"{where}: membership entry is a {entry.kind.name.lower()}")
        body = entry.as_membership()
        if entry.author != identity.admin.key_id:
            raise PeerRefusedError(
                f"{where}: membership entry is signed by {entry.author.hex()[:16]}, "
                f"not this federation's admin {identity.admin.key_id.hex()[:16]}"
            )
        try:
            entry.verify_signatures(identity.admin, identity.policy)
        except SignatureError as exc:
            raise PeerRefusedError(f"{where}: membership entry does not verify ({exc})") from None
        if body.member != key_id:
            raise PeerRefusedError(
                f"{where}: membership entry admits {body.member.hex()[:16]}, "
                f"not the handshake key {key_id.hex()[:16]}"
            )
        keys = body.public_keys
        if keys.key_id != key_id:
            raise HandshakeError(f"{where}: membership public key does not hash to the key id")
        return keys
    known = view.members().get(key_id)
    if known is None:
        raise PeerRefusedError(f"{where}: key {key_id.hex()} is not a member of this federation")
    return known


def _check_common(
    federation_id: str, version: int, nonce: bytes, identity: Identity, where: str
) -> None:
    if federation_id != identity.federation_id:
        raise PeerRefusedError(
            f"{where}: peer is in federation {echo(federation_id)}, this node in "
            f"{identity.federation_id!r}"
        )
    if version != PROTOCOL_VERSION:
        raise PeerRefusedError(
            f"{where}: peer speaks protocol version {version}, this node {PROTOCOL_VERSION}"
        )
    if len(nonce) != NONCE_SIZE:
        raise HandshakeError(f"{where}: nonce has {len(nonce)} bytes, expected {NONCE_SIZE}")


def _check_tls(tls_key_id: bytes | None, key_id: bytes, where: str) -> None:
    if tls_key_id is not None and tls_key_id != key_id:
        raise HandshakeError(
            f"{where}: TLS certificate names key {tls_key_id.hex()[:16]} but the handshake "
            f"is signed for key {key_id.hex()[:16]}"
        )


def _peers_of(items: Iterable[pb.PeerAddress]) -> tuple[tuple[str, bytes], ...]:
    return tuple((p.address, bytes(p.key_id)) for p in items if len(p.key_id) == 32)


def _peer_messages(peers: Sequence[tuple[str, bytes]], limit: int) -> list[pb.PeerAddress]:
    return [pb.PeerAddress(address=a, key_id=k) for a, k in peers[:limit]]


# -- client side ------------------------------------------------------------------------------


def client_hello(
    identity: Identity,
    nonce: bytes,
    peers: Sequence[tuple[str, bytes]],
    limit: int = 32,
    capabilities: Sequence[str] = CAPABILITIES,
) -> pb.HandshakeRequest:
    """Our hello to a server, offering `capabilities` (SyncConfig.capabilities)."""
    return pb.HandshakeRequest(
        federation_id=identity.federation_id,
        protocol_version=PROTOCOL_VERSION,
        key_id=identity.key_id,
        membership=identity.membership,
        capabilities=list(capabilities),
        nonce=nonce,
        advertise=identity.advertise,
        peers=_peer_messages(peers, limit),
    )


def verify_server_hello(
    identity: Identity,
    hello: pb.HandshakeRequest,
    reply: pb.HandshakeResponse,
    view: MembershipView,
    address: str,
    expected_key_id: bytes | None = None,
) -> tuple[PeerIdentity, pb.ProveRequest]:
    """Check the server's reply and sign our half; returns the peer and our proof."""
    where = f"peer {address}"
    _check_common(reply.federation_id, reply.protocol_version, reply.nonce, identity, where)
    key_id = bytes(reply.key_id)
    if expected_key_id is not None and key_id != expected_key_id:
        raise HandshakeError(
            f"{where}: answered as key {key_id.hex()[:16]}, expected {expected_key_id.hex()[:16]}"
        )
    keys = peer_public_keys(reply.membership, key_id, identity, view, where)
    signed = transcript(
        b"server",
        identity.federation_id,
        PROTOCOL_VERSION,
        identity.key_id,
        key_id,
        hello.nonce,
        reply.nonce,
    )
    if not verify_ed25519(keys.ed25519, signed, reply.signature):
        raise HandshakeError(
            f"{where}: handshake signature does not verify for key {key_id.hex()[:16]}"
        )
    mine = transcript(
        b"client",
        identity.federation_id,
        PROTOCOL_VERSION,
        identity.key_id,
        key_id,
        hello.nonce,
        reply.nonce,
    )
    peer = PeerIdentity(
        key_id, keys, reply.advertise, tuple(reply.capabilities), _peers_of(reply.peers)
    )
    return peer, pb.ProveRequest(server_nonce=reply.nonce, signature=identity.key.sign(mine))


# -- server side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Challenge:
    peer: PeerIdentity
    client_nonce: bytes
    expires: float


@dataclass(frozen=True)
class Session:
    """An authenticated peer session (what every call after Prove runs as)."""

    token: bytes
    peer: PeerIdentity
    expires: float


class HandshakeServer:
    """Answers hellos and proofs, and keeps the session tokens it issued (bounded, expiring)."""

    def __init__(
        self,
        identity: Identity,
        view: MembershipView,
        config: SyncConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        peers: Callable[[], Sequence[tuple[str, bytes]]] = tuple,
    ) -> None:
        self.identity = identity
        self.view = view
        self.config = config or SyncConfig()
        self.clock = clock
        self.known_peers = peers
        self._challenges: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def hello(self, req: pb.HandshakeRequest, tls_key_id: bytes | None) -> pb.HandshakeResponse:
        """Verify a client hello and answer with our signed half and a fresh challenge."""
        key_id = bytes(req.key_id)
        where = f"peer {key_id.hex()[:16] or '?'} ({echo(req.advertise) if req.advertise else 'no address'})"
        if len(req.advertise) > MAX_ADVERTISE:
            raise HandshakeError(
                f"{where}: advertised address of {len(req.advertise)} characters "
                f"(at most {MAX_ADVERTISE})"
            )
        _check_common(req.federation_id, req.protocol_version, req.nonce, self.identity, where)
        _check_tls(tls_key_id, key_id, where)
        keys = peer_public_keys(req.membership, key_id, self.identity, self.view, where)
        nonce = secrets.token_bytes(NONCE_SIZE)
        shared = tuple(c for c in self.config.capabilities if c in set(req.capabilities))
        now = self.clock()
        self._expire(now)
        peer = PeerIdentity(key_id, keys, req.advertise, shared, _peers_of(req.peers))
        self._challenges[nonce] = _Challenge(peer, bytes(req.nonce), now + self.config.rpc_timeout)
        while len(self._challenges) > self.config.max_pending_challenges:
            self._challenges.popitem(last=False)
        signed = transcript(
            b"server",
            self.identity.federation_id,
            PROTOCOL_VERSION,
            key_id,
            self.identity.key_id,
            req.nonce,
            nonce,
        )
        return pb.HandshakeResponse(
            federation_id=self.identity.federation_id,
            protocol_version=PROTOCOL_VERSION,
            key_id=self.identity.key_id,
            membership=self.identity.membership,
            capabilities=list(shared),
            nonce=nonce,
            signature=self.identity.key.sign(signed),
            advertise=self.identity.advertise,
            peers=_peer_messages(list(self.known_peers()), self.config.max_peers_exchanged),
        )

    def prove(self, req: pb.ProveRequest, tls_key_id: bytes | None) -> Session:
        """Verify the client's signature over the transcript; returns its new session."""
        now = self.clock()
        self._expire(now)
        challenge = self._challenges.pop(bytes(req.server_nonce), None)
        if challenge is None:
            raise HandshakeError("proof names no outstanding challenge (expired or replayed)")
        peer = challenge.peer
        where = f"peer {peer.short} ({echo(peer.advertise) if peer.advertise else 'no address'})"
        _check_tls(tls_key_id, peer.key_id, where)
        signed = transcript(
            b"client",
            self.identity.federation_id,
            PROTOCOL_VERSION,
            peer.key_id,
            self.identity.key_id,
            challenge.client_nonce,
            bytes(req.server_nonce),
        )
        if not verify_ed25519(peer.public_keys.ed25519, signed, req.signature):
            raise HandshakeError(f"{where}: handshake signature does not verify")
        token = secrets.token_bytes(16)
        session = Session(token, peer, now + self.config.session_ttl)
        self._sessions[token] = session
        while len(self._sessions) > self.config.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def session(self, token: bytes | None, tls_key_id: bytes | None) -> Session:
        """The live session a call runs as; HandshakeError/PeerRefusedError when there is none
        or the peer has been revoked since."""
        if not token:
            raise HandshakeError("call carries no session token: handshake first")
        s = self._sessions.get(token)
        now = self.clock()
        if s is None or s.expires < now:
            self._sessions.pop(token, None)
            raise HandshakeError("session token is unknown or expired: handshake again")
        _check_tls(tls_key_id, s.peer.key_id, f"peer {s.peer.short}")
        if self.view.is_revoked(s.peer.key_id):
            self._sessions.pop(token, None)
            raise PeerRefusedError(f"peer {s.peer.short}: key {s.peer.key_id.hex()} is revoked")
        return s

    def _expire(self, now: float) -> None:
        for nonce in [n for n, c in self._challenges.items() if c.expires < now]:
            del self._challenges[nonce]
        for token in [t for t, s in self._sessions.items() if s.expires < now]:
            del self._sessions[token]
