"""The digest exchange: which ids each of two replicas lacks, behind one interface.

- `base.py`: `DigestExchange` (client `reconcile`, server `answer`), `Difference`,
  `DigestSource` (what an exchange reads of the local replica).
- `merkle.py`: `MerkleDescent`, the 256-ary Merkle descent every version speaks ("merkle/1").
- `riblt.py`: the rateless IBLT coding itself (numpy, no I/O).
- `rateless.py`: `RatelessReconciliation`, rateless IBLT symbols first, Merkle descent past a
  budget ("riblt/1"); it also answers Merkle requests.

`exchange_for(config)` is what a node serves with; `Exchanges.for_peer(capabilities)` picks
the client side per peer from the capabilities both offered in the handshake, so nodes of
the previous version (no "riblt/1") keep syncing by Merkle descent.
"""

from __future__ import annotations

from collections.abc import Iterable

from crdtd.sync.config import RIBLT_CAPABILITY, SyncConfig
from crdtd.sync.reconcile.base import Ask, Difference, DigestExchange, DigestSource, split_ids
from crdtd.sync.reconcile.merkle import MerkleDescent
from crdtd.sync.reconcile.rateless import RatelessReconciliation

__all__ = [
    "Ask",
    "Difference",
    "DigestExchange",
    "DigestSource",
    "Exchanges",
    "MerkleDescent",
    "RatelessReconciliation",
    "exchange_for",
    "split_ids",
]


def exchange_for(config: SyncConfig) -> DigestExchange:
    """The exchange a node answers with: both methods, or Merkle only when set
    reconciliation is turned off (then riblt requests are refused, as the previous version
    refuses them)."""
    if config.set_reconciliation:
        return RatelessReconciliation(config)
    return MerkleDescent(config)


class Exchanges:
    """The client sides a node can drive; `for_peer` picks by the shared capabilities."""

    def __init__(self, config: SyncConfig, rateless: RatelessReconciliation | None = None) -> None:
        self.config = config
        self.merkle = MerkleDescent(config)
        self.rateless = rateless or RatelessReconciliation(config)

    def for_peer(self, capabilities: Iterable[str]) -> DigestExchange:
        """Rateless IBLT when both sides offered it, else Merkle descent."""
        if self.config.set_reconciliation and RIBLT_CAPABILITY in set(capabilities):
            return self.rateless
        return self.merkle
