"""The digest exchange's former home: its names now live in crdtd.sync.reconcile."""

from __future__ import annotations

from crdtd.sync.reconcile import (
    Ask,
    Difference,
    DigestExchange,
    DigestSource,
    MerkleDescent,
    RatelessReconciliation,
    split_ids,
)

__all__ = [
    "Ask",
    "Difference",
    "DigestExchange",
    "DigestSource",
    "MerkleDescent",
    "RatelessReconciliation",
    "split_ids",
]
