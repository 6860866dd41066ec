"""What a tabular merge is asked to do: key columns, optional timestamp and tombstone columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crdtd.errors import KeyColumnError, SchemaError


@dataclass(frozen=True)
class MergeSpec:
    """Validated merge parameters shared by the row-by-row and the vectorised path."""

    keys: tuple[str, ...]
    timestamp: str | None = None
    tombstone: str | None = None
    drop_deleted: bool = False

    @classmethod
    def build(
        cls,
        key: str | Sequence[str],
        timestamp: str | None = None,
        tombstone: str | None = None,
        drop_deleted: bool = False,
    ) -> MergeSpec:
        """Check the column arguments and return a spec; raise a MergeError naming the problem."""
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise KeyColumnError("key must name at least one column, got an empty list")
        for k in keys:
            if not isinstance(k, str) or not k:
                raise KeyColumnError(f"key columns must be non-empty strings, got {k!r}")
        if len(set(keys)) != len(keys):
            raise KeyColumnError(f"key names a column twice: {list(keys)!r}")
        for role, col in (("timestamp", timestamp), ("tombstone", tombstone)):
            if col is None:
                continue
            if not isinstance(col, str) or not col:
                raise SchemaError(f"{role} must be a column name, got {col!r}")
            if col in keys:
                raise SchemaError(f"{role} column {col!r} is also a key column")
        if timestamp is not None and timestamp == tombstone:
            raise SchemaError(f"column {timestamp!r} cannot be both timestamp and tombstone")
        if drop_deleted and tombstone is None:
            raise SchemaError("drop_deleted=True needs a tombstone column (tombstone=...)")
        return cls(keys, timestamp, tombstone, drop_deleted)

    def column_order(self, columns: set[str] | frozenset[str]) -> list[str]:
        """Output column order: key columns as given, then every other column sorted by name."""
        extra = set(columns)
        if self.timestamp is not None:
            extra.add(self.timestamp)
        if self.tombstone is not None:
            extra.add(self.tombstone)
        return list(self.keys) + sorted(extra - set(self.keys))
