"""What a SELECT reads, from DuckDB's own parser: base tables and `merge(...)` calls.

`json_serialize_sql` turns one SELECT into its parse tree (and refuses anything that is not
a SELECT, which is what keeps node queries read-only). The tree names every base table and
every table function call with its arguments and where it sits in the query text, so the
`merge(...)` form can be replaced by a registered Arrow view without a second SQL parser.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crdtd.errors import SqlError


@dataclass(frozen=True)
class MergeCall:
    """A `merge('a.parquet', 'b.csv', key => 'id', ...)` table function in a query."""

    start: int
    end: int  # one past the closing parenthesis
    files: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """The base tables a query names (lower-cased) and its merge(...) calls."""

    tables: frozenset[str]
    merges: tuple[MergeCall, ...]


def parse(con: Any, query: str) -> Plan:
    """Parse one SELECT (SqlError naming DuckDB's complaint otherwise)."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:  # a syntax error: the caller's query, not the node, is wrong
        raise SqlError(f"not a query crdtd runs: {exc}") from None
    if len(statements) != 1:
        raise SqlError("a query must be exactly one SELECT statement")
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    if tree.get("error"):
        raise SqlError(f"not a query crdtd runs: {tree.get('error_message', 'parse error')}")
    tables: set[str] = set()
    merges: list[MergeCall] = []
    for node in _walk(tree):
        if node.get("type") == "BASE_TABLE" and node.get("table_name"):
            tables.add(str(node["table_name"]).lower())
        elif node.get("type") == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            if str(fn.get("function_name", "")).lower() == "merge":
                merges.append(_merge_call(query, node, fn))
    return Plan(frozenset(tables), tuple(sorted(merges, key=lambda m: m.start)))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _constant(expr: dict[str, Any], what: str) -> Any:
    """A literal argument: a string, number, boolean or list of them."""
    if expr.get("class") == "CONSTANT":
        lit = expr.get("literal") or expr.get("value") or {}
        text = lit.get("text")
        kind = str(lit.get("kind", "")).upper()
        if kind in ("BOOLEAN", "BOOL"):
            return str(text).lower() == "true"
        if kind in ("INTEGER", "BIGINT"):
            return int(str(text))
        if text is not None:
            return text
    if expr.get("class") == "FUNCTION" and expr.get("function_name") == "list_value":
        return [_constant(a.get("expression", a), what) for a in expr.get("arguments", [])]
    raise SqlError(f"merge(...): {what} must be a literal ('text', true, or [...])")


def _merge_call(query: str, node: dict[str, Any], fn: dict[str, Any]) -> MergeCall:
    files: list[str] = []
    options: dict[str, Any] = {}
    for arg in fn.get("arguments", []):
        expr = arg.get("expression", arg)
        name = arg.get("name") or ""
        if name:
            options[name.lower()] = _constant(expr, f"argument {name}")
        else:
            value = _constant(expr, "a file")
            files.extend(value if isinstance(value, list) else [value])
    start = int(node["query_location"])
    return MergeCall(start, _close_paren(query, start), tuple(files), options)


def _close_paren(query: str, start: int) -> int:
    """One past the parenthesis closing the call that starts at `start` (quotes skipped)."""
    depth = 0
    i = start
    quote = ""
    while i < len(query):
        ch = query[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise SqlError("merge(...): no closing parenthesis")
