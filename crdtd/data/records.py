"""Row-by-row merge: the reference path, pure Python, for lists of dicts and small tables.

Rows with the same key are joined field by field (see `resolve`). With a timestamp column the
join is lexicographic: the row version with the highest timestamp wins whole, and versions
with equal timestamps join field by field. Either way the result is a semilattice join, so the
merge is commutative, associative and idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crdtd.data.resolve import (
    _PLAIN,
    UnsupportedValueError,
    join_values,
    key_kind,
    normalize_value,
    value_rank,
)
from crdtd.data.spec import MergeSpec
from crdtd.errors import KeyColumnError, KeyTypeError, NullKeyError, SchemaError

# Kinds whose equal values can look different (Decimal('1.0') == Decimal('1.00'), the same
# instant in two time zones): the key kept is the largest under the total order.
_AMBIGUOUS_KINDS = frozenset({"decimal", "datetime-tz", "datetime"})


@dataclass(frozen=True)
class RecordsResult:
    """Merged table as plain Python: column names in output order and one dict per key."""

    columns: list[str]
    rows: list[dict[str, Any]]


def _canonical_key(v: Any, kind: str) -> Any:
    if kind == "int":
        return int(v)
    if kind == "float":
        return float(v) + 0.0
    if kind == "bool":
        return bool(v)
    if kind == "bytes":
        return bytes(v)
    return v


class _Merger:
    """Accumulates rows into one joined row per key, validating as it goes."""

    def __init__(self, spec: MergeSpec) -> None:
        self.spec = spec
        self.keyset = frozenset(spec.keys)
        self.state: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.ts_rank: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.reps: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.columns: set[str] = set()
        self.kinds: dict[str, tuple[str, str, int]] = {}
        self.ambiguous = False

    def key_of(self, row: Mapping[str, Any], label: str, i: int) -> tuple[Any, ...]:
        out = []
        for c in self.spec.keys:
            if c not in row:
                raise KeyColumnError(f"key column {c!r} is missing from {label}, row {i}")
            v = normalize_value(row[c])
            if v is None:
                raise NullKeyError(f"key column {c!r} is null (or NaN) in {label}, row {i}")
            kind = key_kind(v)
            if kind is None:
                raise KeyTypeError(
                    f"key column {c!r} holds a {type(v).__name__} in {label}, row {i}; keys "
                    "must be scalars (str, int, float, bool, bytes, decimal, date, datetime, "
                    "time, timedelta)"
                )
            first = self.kinds.get(c)
            if first is None:
                self.kinds[c] = (kind, label, i)
                self.ambiguous = self.ambiguous or kind in _AMBIGUOUS_KINDS
            elif first[0] != kind:
                raise KeyTypeError(
                    f"key column {c!r} mixes {first[0]} ({first[1]}, row {first[2]}) and "
                    f"{kind} ({label}, row {i}); convert the keys to one type"
                )
            out.append(_canonical_key(v, kind))
        return tuple(out)

    def fields_of(
        self, row: Mapping[str, Any], label: str, i: int, key: tuple[Any, ...]
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for c, raw in row.items():
            if c in self.keyset:
                continue
            if not isinstance(c, str):
                raise SchemaError(f"column names must be strings; {label}, row {i} has {c!r}")
            v = normalize_value(raw)
            if v is not None and type(v) not in _PLAIN:
                try:
                    value_rank(v)
                except UnsupportedValueError as e:
                    raise SchemaError(
                        f"column {c!r} in {label}, row {i} (key {key!r}) holds a "
                        f"{type(v).__name__}, which has no defined order: {e}"
                    ) from None
            fields[c] = v
        self.columns.update(fields)
        tomb = self.spec.tombstone
        if tomb is not None:
            t = fields.get(tomb)
            if t is None:
                t = False
            elif type(t) is not bool:
                raise SchemaError(
                    f"tombstone column {tomb!r} must be boolean; {label}, row {i} "
                    f"(key {key!r}) has {t!r}"
                )
            fields[tomb] = t
        return fields

    def add(self, key: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if self.ambiguous:
            self._keep_largest_key(key)
        old = self.state.get(key)
        ts = self.spec.timestamp
        if old is None:
            self.state[key] = fields
            if ts is not None:
                self.ts_rank[key] = value_rank(fields.get(ts))
            return
        if ts is not None:
            new_rank = value_rank(fields.get(ts))
            old_rank = self.ts_rank[key]
            if new_rank > old_rank:
                self.state[key] = fields
                self.ts_rank[key] = new_rank
                return
            if new_rank < old_rank:
                return
        for c, v in fields.items():
            if v is not None:
                old[c] = join_values(old.get(c), v)

    def _keep_largest_key(self, key: tuple[Any, ...]) -> None:
        rep = self.reps.get(key)
        if rep is None or [value_rank(x) for x in key] > [value_rank(x) for x in rep]:
            self.reps[key] = key

    def result(self) -> RecordsResult:
        spec = self.spec
        columns = spec.column_order(self.columns)
        others = columns[len(spec.keys) :]
        rows = []
        for key in sorted(self.state):
            fields = self.state[key]
            if spec.drop_deleted and spec.tombstone is not None and fields.get(spec.tombstone):
                continue
            shown = self.reps.get(key, key) if self.ambiguous else key
            row = dict(zip(spec.keys, shown))
            for c in others:
                row[c] = fields.get(c)
            if spec.tombstone is not None and row[spec.tombstone] is None:
                row[spec.tombstone] = False
            rows.append(row)
        return RecordsResult(columns, rows)


def merge_records(
    inputs: Sequence[tuple[str, Iterable[Mapping[str, Any]]]], spec: MergeSpec
) -> RecordsResult:
    """Merge labelled inputs of rows into one row per key, sorted by key.

    Raises a MergeError subclass naming the column and the input row for bad keys or values.
    """
    m = _Merger(spec)
    for label, rows in inputs:
        count = 0
        has_ts = False
        for i, row in enumerate(rows):
            count += 1
            if not isinstance(row, Mapping):
                raise SchemaError(
                    f"{label}, row {i} is a {type(row).__name__}; expected a mapping of "
                    "column name to value"
                )
            key = m.key_of(row, label, i)
            fields = m.fields_of(row, label, i, key)
            if spec.timestamp is not None and spec.timestamp in fields:
                has_ts = True
            m.add(key, fields)
        if spec.timestamp is not None and count and not has_ts:
            raise SchemaError(f"timestamp column {spec.timestamp!r} is missing from {label}")
    try:
        return m.result()
    except TypeError as e:
        raise KeyTypeError(f"key columns {list(spec.keys)!r} cannot be sorted: {e}") from None
