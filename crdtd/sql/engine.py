"""Run one SELECT in DuckDB over merged tables: DuckDB does the querying, crdtd the merging.

Each table namespace is registered as an Arrow view under its name (quote it:
`"records/admissions"`) and under an alias with every character outside [A-Za-z0-9_]
replaced by `_` (`records_admissions`). The ad-hoc form `merge('a.parquet', 'b.csv',
key => 'id', timestamp => 'ts', tombstone => 'deleted', drop_deleted => true)` is found in
DuckDB's own parse tree, merged by `crdtd.merge`, registered as an Arrow view and the call
replaced by the view's name: DuckDB 2.0's Python API registers scalar UDFs
(`create_function`) but no table functions, so the query is rewritten instead.

Queries on a node (`files=False`) may not read or write files: the connection runs with
`enable_external_access = false`, locked, and the `merge(...)` form is refused there. Queries
run on one thread, so the same tables give the same result rows (and float sums) everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.errors import CrdtdError, SqlError
from crdtd.sql.plan import MergeCall, parse

if TYPE_CHECKING:
    import pyarrow as pa

MERGE_OPTIONS = ("key", "timestamp", "tombstone", "drop_deleted")


def alias(name: str) -> str:
    """The plain SQL name of a namespace: `records/admissions` -> `records_admissions`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclass(frozen=True)
class Result:
    """A query's rows and the namespaces it read."""

    table: pa.Table
    namespaces: tuple[str, ...]


def names_of(namespaces: list[str] | tuple[str, ...]) -> dict[str, str]:
    """SQL name (lower-case) -> namespace, for full names and unambiguous aliases."""
    out = {n.lower(): n for n in namespaces}
    aliases: dict[str, list[str]] = {}
    for n in namespaces:
        aliases.setdefault(alias(n).lower(), []).append(n)
    for a, ns in aliases.items():
        if len(ns) == 1 and a not in out:
            out[a] = ns[0]
    return out


def referenced(query: str, namespaces: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The namespaces a SELECT reads (by name or alias), sorted."""
    import duckdb

    con = duckdb.connect()
    try:
        plan = parse(con, query)
    finally:
        con.close()
    names = names_of(namespaces)
    return tuple(sorted({names[t] for t in plan.tables if t in names}))


def run(
    query: str,
    tables: Mapping[str, pa.Table] | Callable[[str], pa.Table],
    namespaces: list[str] | tuple[str, ...] = (),
    *,
    files: bool = False,
) -> Result:
    """Run one SELECT; `tables` gives each referenced namespace's merged table (a mapping,
    or a function called only for the namespaces the query reads)."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    try:
        plan = parse(con, query)
        known = tuple(namespaces) or (tuple(tables) if isinstance(tables, Mapping) else ())
        names = names_of(known)
        used = sorted({names[t] for t in plan.tables if t in names})
        for ns in used:
            table = tables[ns] if isinstance(tables, Mapping) else tables(ns)
            con.register(ns, table)
            if alias(ns).lower() in names and alias(ns) != ns:
                con.register(alias(ns), table)
        if plan.merges and not files:
            raise SqlError(
                "merge(...) reads files, which a node does not do for a client; run "
                "`crdtd sql` on the machine holding the files (without a node), or push them "
                "into a table namespace"
            )
        for i, call in enumerate(reversed(plan.merges)):
            view = f"__crdtd_merge_{len(plan.merges) - 1 - i}"
            con.register(view, merge_call(call))
            query = query[: call.start] + view + query[call.end :]
        if not files:
            con.execute("SET enable_external_access = false").fetchall()
            con.execute("SET lock_configuration = true").fetchall()
        try:
            return Result(con.sql(query).to_arrow_table(), tuple(used))
        except duckdb.Error as exc:
            hint = ""
            if isinstance(exc, duckdb.CatalogException):
                listed = ", ".join(f'"{n}" ({alias(n)})' for n in known) or "none"
                hint = f" (table namespaces: {listed})"
            raise SqlError(f"query failed: {exc}{hint}") from None
    finally:
        con.close()


def merge_call(call: MergeCall) -> pa.Table:
    """The `merge(...)` call's files joined by `crdtd.merge` (Arrow, one chunk)."""
    from crdtd.data import merge
    from crdtd.kinds.table import read_frame, to_arrow

    unknown = sorted(set(call.options) - set(MERGE_OPTIONS))
    if unknown:
        raise SqlError(f"merge(...): unknown option(s) {unknown}; known: {list(MERGE_OPTIONS)}")
    if not call.files:
        raise SqlError("merge(...) needs at least one file")
    if "key" not in call.options:
        raise SqlError("merge(...) needs key => 'column' (or key => ['a', 'b'])")
    frames = []
    for f in call.files:
        path = Path(f)
        fmt = {".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}.get(path.suffix.lower())
        try:
            frames.append(read_frame(path, fmt) if fmt else _read(path))
        except CrdtdError as exc:
            raise SqlError(f"merge(...): {exc}") from None
    o = call.options
    try:
        merged = merge(
            *frames,
            key=o["key"],
            timestamp=o.get("timestamp"),
            tombstone=o.get("tombstone"),
            drop_deleted=bool(o.get("drop_deleted", False)),
        )
    except CrdtdError as exc:
        raise SqlError(f"merge(...): {exc}") from None
    return to_arrow(merged)


def _read(path: Path) -> Any:
    from crdtd.data.io import read_table

    return read_table(path)
