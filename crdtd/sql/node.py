"""The `Sql` RPC's work on a node: one SELECT over the node's merged table namespaces."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crdtd.sql.engine import run

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class NodeQuery:
    """A query's rows, the namespaces it read and the digest of each one's merged set."""

    table: pa.Table
    digests: dict[str, str]
    seconds: float


def query_node(core: Any, query: str) -> NodeQuery:
    """Run `query` over the table namespaces `core` (a NodeCore) declares; no file access."""
    from crdtd.kinds.table import merged_view

    started = time.monotonic()
    tables = sorted(n for n, ns in core.config.namespaces.items() if ns.kind == "table")
    digests: dict[str, str] = {}

    def view(name: str) -> pa.Table:
        table, digests[name] = merged_view(core, core.namespace(name))
        return table

    result = run(query, view, tables)
    return NodeQuery(result.table, digests, time.monotonic() - started)
