"""A whole federation in one process, for tests, benchmarks and simulations.

`SyncFederation` builds for real what each node needs: an admin key, an X.509 CA, and per
member an Ed25519 key, the admin-signed membership entry and an ECDSA TLS certificate naming
the key. `open_state` gives a real store seeded with the membership chain and `make_node` a
SyncNode on gRPC (mutual TLS or plain-text loopback) or on any other transport.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519_ONLY
from crdtd.crypto.x509 import FederationCA, TlsMaterial, generate_tls_key, private_key_pem
from crdtd.state.e4 import E4State
from crdtd.state.entry import Entry
from crdtd.state.testing import Federation
from crdtd.store.chunks import BytesSource
from crdtd.store.store import NodeStore
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import Identity
from crdtd.sync.node import SyncNode
from crdtd.sync.transport import GrpcTransport, Transport


@dataclass
class Member:
    """One node's identity material."""

    name: str
    key: NodeKey
    membership: Entry
    tls: TlsMaterial


@dataclass
class SyncFederation:
    """An admin, a CA and named members, built for real (signatures, certificates)."""

    federation_id: str = "fed-test"
    fed: Federation = field(default_factory=Federation)
    ca: FederationCA | None = None
    members: dict[str, Member] = field(default_factory=dict)
    admin_entries: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ca is None:
            self.ca = FederationCA.create(self.federation_id)

    def add(self, name: str, key: NodeKey | None = None) -> Member:
        """A member: key, admin-signed membership entry, TLS certificate from our CA."""
        entry = self.fed.add_member(name, key)
        self.admin_entries.append(entry)
        k = self.fed.keys[name]
        member = Member(name, k, entry, self.tls_for(k, name))
        self.members[name] = member
        return member

    def tls_for(self, key: NodeKey, name: str) -> TlsMaterial:
        """TLS material (trusting our CA) whose certificate, issued by our CA, names `key`."""
        assert self.ca is not None
        tls_key = generate_tls_key()
        cert = self.ca.issue_node_cert(key.key_id, tls_key.public_key(), name)
        return TlsMaterial(
            cert.public_bytes(serialization.Encoding.PEM),
            private_key_pem(tls_key),
            self.ca.cert_pem,
        )

    def identity(self, name: str) -> Identity:
        """The handshake identity of member `name`."""
        m = self.members[name]
        return Identity(
            m.key,
            m.membership.to_bytes(),
            self.federation_id,
            self.fed.admin.public_keys,
            ED25519_ONLY,
        )

    def open_state(self, data_dir: Path) -> E4State:
        """A real store, seeded with every admin entry (the membership chain)."""
        state = E4State(NodeStore.open(data_dir), self.fed.admin.public_keys, ED25519_ONLY)
        for e in self.admin_entries:
            state.apply(e)
        return state

    def contribution(
        self, who: str, size: int = 1000, namespace: str = "test/ns"
    ) -> tuple[Entry, bytes]:
        """A signed contribution by `who` with `size` random payload bytes."""
        payload = os.urandom(size)
        return self.fed.contribute(who, payload, namespace), payload

    def make_node(
        self,
        name: str,
        data_dir: Path,
        config: SyncConfig | None = None,
        transport: Transport | None = None,
        bootstrap: Sequence[str] = (),
        tls: bool = True,
    ) -> SyncNode:
        """A SyncNode for member `name` over gRPC (mutual TLS unless `tls` is False)."""
        cfg = config or SyncConfig()
        state = self.open_state(data_dir)
        t = transport or GrpcTransport(self.members[name].tls if tls else None, cfg)
        return SyncNode(state, self.identity(name), t, cfg, bootstrap, loopback_only=not tls)


async def push_contribution(node: SyncNode, entry: Entry, payload: bytes) -> None:
    """Push a contribution at a node (applied locally, then spread by gossip)."""
    await node.add_local(entry, BytesSource(payload))


def snapshot(node: SyncNode) -> tuple[bytes, list[bytes]]:
    """(Merkle root, visible ids) of a node."""
    return node.state.merkle_root(), [e.id for e in node.state.visible()]


async def converged(nodes: Sequence[SyncNode], timeout: float = 60.0, poll: float = 0.1) -> float:
    """Wait until every node has the same root and visible set; returns the seconds taken."""
    start = time.monotonic()
    while True:
        snaps = [snapshot(n) for n in nodes]
        if all(s == snaps[0] for s in snaps):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            roots = [s[0].hex()[:12] for s in snaps]
            raise AssertionError(f"no convergence after {timeout} s: roots {roots}")
        await asyncio.sleep(poll)
