"""The namespace keys this node holds, read from the admin-signed key envelopes it stores.

An encrypted namespace (`encrypted = true`) holds, besides its sealed contributions, key
envelopes: contributions of payload kind `crdtd-keys` signed by the federation admin
(`crdtd federation namespace-key`), one per epoch, each wrapping that epoch's key for the
members allowed to read (crdtd.crypto.sealing). They replicate like any entry, so every
node holds them; a node opens those that name it. Envelopes not signed by the admin, or
that do not decode, are ignored. The newest epoch of a namespace is the one new pushes
are sealed with: a node the newest envelope does not name was removed and may not push.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crdtd.crypto.sealing import KEYS_PAYLOAD_KIND, KeyEnvelope
from crdtd.errors import CrdtdError, NamespaceKeyError
from crdtd.state.entry import Entry

if TYPE_CHECKING:
    from crdtd.node.core import NodeCore


@dataclass
class _Ring:
    root: bytes = b""
    keys: dict[bytes, bytes] = field(default_factory=dict)  # key id -> key
    newest: dict[str, KeyEnvelope] = field(default_factory=dict)  # namespace -> newest


def is_envelope(e: Entry, admin: bytes) -> bool:
    """True for a key envelope the admin signed (the only ones that count)."""
    return e.author == admin and e.payload_kind == KEYS_PAYLOAD_KIND


class NamespaceKeys:
    """Keys of the encrypted namespaces, recomputed when the state root moves."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self._ring = _Ring()
        self._lock = threading.Lock()

    def envelopes(self, namespace: str) -> list[KeyEnvelope]:
        """The namespace's admin-signed envelopes that decode, by epoch then key id."""
        state = self.core.state
        out = []
        for e in state.visible(namespace):
            if not is_envelope(e, state.admin.key_id):
                continue
            try:
                env = KeyEnvelope.from_bytes(state.store.read_payload(e.payload_digest))
            except CrdtdError:
                continue
            if env.namespace == namespace:
                out.append(env)
        return sorted(out, key=lambda env: (env.epoch, env.key_id))

    def _current(self) -> _Ring:
        root = self.core.state.merkle_root()
        with self._lock:
            if self._ring.root == root and root:
                return self._ring
            ring = _Ring(root)
            for name, ns in sorted(self.core.config.namespaces.items()):
                if not ns.encrypted:
                    continue
                for env in self.envelopes(name):
                    ring.newest[name] = env
                    key = env.open(self.core.key)
                    if key is not None:
                        ring.keys[env.key_id] = key
            self._ring = ring
            return ring

    def key_for(self, key_id: bytes) -> bytes:
        """The key with this id, or NamespaceKeyError: this node relays such payloads but
        holds no key to read them."""
        key = self._current().keys.get(key_id)
        if key is None:
            raise NamespaceKeyError(
                f"this node holds no key {key_id.hex()[:16]} for this encrypted payload: it "
                "stores and relays it but cannot read it (the federation admin names who may: "
                "crdtd federation namespace-key)"
            )
        return key

    def sealing_key(self, namespace: str) -> tuple[bytes, KeyEnvelope]:
        """(key, envelope) of the namespace's newest epoch, to seal a push with."""
        ring = self._current()
        env = ring.newest.get(namespace)
        if env is None:
            raise NamespaceKeyError(
                f"namespace {namespace!r} is encrypted but holds no key envelope yet: the "
                "admin creates one with `crdtd federation namespace-key`"
            )
        key = ring.keys.get(env.key_id)
        if key is None:
            raise NamespaceKeyError(
                f"namespace {namespace!r}: this node is not among the members of key epoch "
                f"{env.epoch}, so it cannot seal contributions there"
            )
        return key, env


__all__ = ["NamespaceKeys", "is_envelope"]
