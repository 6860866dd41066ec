"""Anti-entropy over gRPC: Merkle digests, signed deltas, chunk streaming, gossip, mutual TLS.

Public names load lazily (so `python -m crdtd.sync.protogen` works before stubs exist):

- `SyncNode` (node.py): a node's Peer server, sessions and gossip over one E4State.
- `SyncConfig` (config.py): every tunable, memberlist LAN defaults.
- `AntiEntropySession`, `Connection`, `SessionResult` (session.py): one push-pull session.
- `LocalPeer` (peer.py): the answering side; `PeerServicer` (service.py) adapts it to gRPC.
- `DigestExchange`, `MerkleDescent`, `RatelessReconciliation` (reconcile/): the digest
  exchange, negotiated per peer (rateless IBLT or Merkle descent).
- `GrpcTransport`, `InProcessNetwork` (transport.py): the two transports.
- `GossipProtocol` (protocol.py): gossip, membership and failure detection, no I/O;
  `Gossiper` (gossip.py) performs its actions on the event loop.
- `Identity` (handshake.py), `PeerTable` (membership.py), `choose_security` (tls.py).

Guide: docs/sync.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "SyncNode": "crdtd.sync.node",
    "SyncConfig": "crdtd.sync.config",
    "AntiEntropySession": "crdtd.sync.session",
    "Connection": "crdtd.sync.session",
    "SessionResult": "crdtd.sync.session",
    "LocalPeer": "crdtd.sync.peer",
    "PeerServicer": "crdtd.sync.service",
    "DigestExchange": "crdtd.sync.reconcile",
    "MerkleDescent": "crdtd.sync.reconcile",
    "RatelessReconciliation": "crdtd.sync.reconcile",
    "GrpcTransport": "crdtd.sync.transport",
    "InProcessNetwork": "crdtd.sync.transport",
    "Identity": "crdtd.sync.handshake",
    "PeerTable": "crdtd.sync.membership",
    "Gossiper": "crdtd.sync.gossip",
    "GossipProtocol": "crdtd.sync.protocol",
    "choose_security": "crdtd.sync.tls",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'crdtd.sync' has no attribute {name!r}")
    return getattr(import_module(module), name)
