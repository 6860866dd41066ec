"""SQL over merged table namespaces with DuckDB (`crdtd sql`, the `Sql` RPC).

`run(query, tables)` registers each table namespace's merged rows as an Arrow view and runs
one SELECT; `merge('a.parquet', 'b.parquet', key => 'id')` merges files outside any node.
See docs/kinds/sql.md.
"""

from crdtd.sql.engine import Result, alias, referenced, run

__all__ = ["Result", "alias", "referenced", "run"]
