"""`table` namespaces: Parquet, Arrow IPC or CSV contributions merged by `crdtd.merge`.

The namespace names its key (one column or several), and optionally a timestamp column
(newest row version wins) and a tombstone column (deleted rows). Materialise is
`crdtd.merge` over the accepted contributions, in entry-id order, written as Parquet, Arrow
IPC or CSV with fixed writer settings and one chunk layout, so nodes holding the same set
write the same bytes. Erasing a contribution removes its rows from every later
materialisation (rows another contribution also holds stay, with that contribution's values).
Provenance: one row per (key, contribution that holds the key), with the entry's author.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.crypto.node_config import Field
from crdtd.errors import ConfigError, CrdtdError, TableContributionError
from crdtd.kinds.base import (
    Excluded,
    Materialised,
    MaterialiseRequest,
    Where,
    accepted_set,
    check_payload_kind,
    ids_digest,
    sha256_file,
    sniff,
    write_payload,
)

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from crdtd.node.config import NamespaceConfig

FORMATS = ("parquet", "arrow", "csv")
SUFFIX = {"parquet": ".parquet", "arrow": ".arrow", "csv": ".csv"}
BATCH_ROWS = 1 << 16  # rows per Arrow record batch / Parquet page group in outputs
ROW_GROUP = 1 << 20  # rows per Parquet row group


@dataclass(frozen=True)
class TableSettings:
    """How a table namespace merges: key, optional timestamp and tombstone, output format."""

    key: tuple[str, ...]
    timestamp: str = ""
    tombstone: str = ""
    drop_deleted: bool = True
    format: str = "parquet"


class TableKind:
    """Parquet / Arrow IPC / CSV contributions merged into one table by `crdtd.merge`."""

    name = "table"
    settings: Mapping[str, Field] = {
        "key": Field("names", (), "key column, or a list of columns (composite key)"),
        "timestamp": Field("str", "", "column whose newest value wins the whole row"),
        "tombstone": Field("str", "", "boolean column marking deleted rows"),
        "drop_deleted": Field("bool", True, "leave deleted rows out of the output"),
        "format": Field("choice:parquet|arrow|csv", "parquet", "output format"),
    }

    def parse_settings(self, values: Mapping[str, Any], where: Where) -> TableSettings:
        key = tuple(values["key"])
        if not key:
            raise ConfigError(f"{where('key')}: a table namespace needs its key column(s)")
        if len(set(key)) != len(key):
            raise ConfigError(f"{where('key')}: {list(key)} names a column twice")
        for name in ("timestamp", "tombstone"):
            if values[name] and values[name] in key:
                raise ConfigError(f"{where(name)}: {values[name]!r} is also a key column")
        return TableSettings(
            key=key,
            timestamp=values["timestamp"],
            tombstone=values["tombstone"],
            drop_deleted=values["drop_deleted"],
            format=values["format"],
        )

    def takes(self, ns: NamespaceConfig) -> tuple[str, ...]:
        return FORMATS

    def check_push(self, ns: NamespaceConfig, payload_kind: str, path: Path) -> str:
        """The payload's format (from its bytes); the table must parse and carry the key."""
        check_payload_kind(ns, payload_kind, FORMATS)
        fmt = detect(path, ns.name)
        if payload_kind and payload_kind != fmt:
            raise TableContributionError(
                f"namespace {ns.name!r}: the push says {payload_kind!r} but the bytes are {fmt}"
            )
        check_file(path, fmt, ns.settings, ns.name)
        return fmt

    def output_name(self, ns: NamespaceConfig, request: MaterialiseRequest) -> str:
        return "table" + SUFFIX[output_format(ns, request)]

    def materialise(
        self, core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
    ) -> Materialised:
        """Merge the accepted contributions into `work_dir/out/table.FORMAT`."""
        started = time.monotonic()
        fmt = output_format(ns, request)
        if request.strategy or request.dtype:
            raise ConfigError(
                f"namespace {ns.name!r} is a table namespace: strategy and dtype do not apply"
            )
        sources, excluded = gather(core, ns, work_dir / "inputs")
        out = work_dir / "out" / self.output_name(ns, request)
        out.parent.mkdir(parents=True)
        prov = out.with_name(out.name + ".provenance.parquet") if request.provenance else None
        summary = merge_files(
            [(p, k) for _, _, p, k in sources],
            ns.settings,
            out,
            fmt,
            provenance=prov,
            labels=[(eid, author) for eid, author, _, _ in sources],
        )
        ids = tuple(eid for eid, _, _, _ in sources)
        return Materialised(
            path=out,
            sha256=sha256_file(out),
            size=out.stat().st_size,
            input_set_digest=ids_digest(ids, ns.settings),
            inputs=ids,
            excluded=excluded,
            strategy="crdtd.merge",
            params=_params(ns.settings),
            seconds=time.monotonic() - started,
            kind=self.name,
            format=fmt,
            summary=summary,
            provenance=prov,
            provenance_sha256=sha256_file(prov) if prov is not None else "",
        )


KIND = TableKind()


def gather(
    core: Any, ns: NamespaceConfig, inputs_dir: Path
) -> tuple[list[tuple[bytes, bytes, Path, str]], tuple[Excluded, ...]]:
    """The accepted contributions written to `inputs_dir` and checked again: (entry id,
    author, path, format) in id order, and who was left out (gated, or invalid)."""
    entries, excluded = accepted_set(core, ns, FORMATS)
    inputs_dir.mkdir(parents=True)
    sources: list[tuple[bytes, bytes, Path, str]] = []
    invalid: list[Excluded] = []
    for e in entries:
        kind = e.body.payload_kind  # type: ignore[union-attr]
        path = write_payload(core.state.store, e, inputs_dir / f"{e.id.hex()}{SUFFIX[kind]}")
        try:
            check_file(path, kind, ns.settings, ns.name)
        except CrdtdError as exc:
            invalid.append(Excluded(e.author, f"invalid contribution: {exc}", (e.id,)))
            continue
        sources.append((e.id, e.author, path, kind))
    if not sources:
        why = "; ".join(x.reason for x in invalid)
        raise TableContributionError(f"namespace {ns.name!r}: no valid contribution ({why})")
    return sources, (*excluded, *invalid)


def merged_view(core: Any, ns: NamespaceConfig) -> tuple[pa.Table, str]:
    """The namespace's merged rows as Arrow (SQL reads these), cached per input set, and
    that set's digest."""
    import shutil
    import uuid

    entries, _ = accepted_set(core, ns, FORMATS)
    digest = ids_digest([e.id for e in entries], ns.settings)

    def make() -> pa.Table:
        work = core.config.node.data_dir / "tmp" / f"view-{uuid.uuid4().hex}"
        try:
            sources, _ = gather(core, ns, work)
            merged = _merge([read_frame(p, k) for _, _, p, k in sources], ns.settings)
            return to_arrow(merged)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    table: pa.Table = core.views.get_or_make((ns.name, digest), make)
    return table, digest


def _params(s: TableSettings) -> dict[str, Any]:
    return {
        "key": list(s.key),
        "timestamp": s.timestamp or None,
        "tombstone": s.tombstone or None,
        "drop_deleted": s.drop_deleted,
    }


def output_format(ns: NamespaceConfig, request: MaterialiseRequest) -> str:
    """The format asked for, else the namespace's (ConfigError for an unknown one)."""
    fmt = request.format or ns.settings.format
    if fmt not in FORMATS:
        raise ConfigError(
            f"namespace {ns.name!r} is a table namespace: format {fmt!r} is not one of "
            f"{', '.join(FORMATS)}"
        )
    return fmt


def detect(path: Path, namespace: str) -> str:
    """parquet, arrow or csv from the payload's first bytes (TableContributionError if none)."""
    seen = sniff(path)
    if seen in ("parquet", "arrow"):
        return seen
    if seen == "safetensors":
        raise TableContributionError(
            f"namespace {namespace!r} is a table namespace: the payload is a safetensors "
            "file, not Parquet, Arrow IPC or CSV"
        )
    with path.open("rb") as f:
        head = f.read(1 << 16)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the read boundary
            raise TableContributionError(
                f"namespace {namespace!r}: the payload is not Parquet, Arrow IPC or UTF-8 CSV "
                f"(byte {exc.start} is not UTF-8)"
            ) from None
    return "csv"


def read_arrow(path: Path, fmt: str, namespace: str) -> pa.Table:
    """Read a contribution; CSV strictly (a ragged row is an error naming its line)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    where = f"namespace {namespace!r}: {fmt} contribution"
    bad: list[Any] = []

    def ragged(row: Any) -> str:
        bad.append(row)
        return "error"

    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "arrow":
            with path.open("rb") as f:
                magic = f.read(6)
            if magic == b"ARROW1":
                with ipc.open_file(pa.memory_map(str(path))) as r:
                    return r.read_all()
            with ipc.open_stream(path) as s:
                return s.read_all()
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(invalid_row_handler=ragged),
        )
    except (pa.ArrowException, OSError, ValueError) as exc:
        if bad:
            row = bad[0]
            raise TableContributionError(
                f"{where}: line {row.number} has {row.actual_columns} fields, the header has "
                f"{row.expected_columns}: {row.text[:80]!r}"
            ) from None
        raise TableContributionError(f"{where} cannot be read: {exc}") from None


def check_file(path: Path, fmt: str, s: TableSettings, namespace: str) -> None:
    """`check_table` on a contribution file. CSV is parsed whole (strictly); Parquet and Arrow
    read only the schema and the key, timestamp and tombstone columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "csv":
        check_table(read_arrow(path, fmt, namespace), s, namespace)
        return
    wanted = {*s.key, s.timestamp, s.tombstone} - {""}
    try:
        if fmt == "parquet":
            names = pq.read_schema(path).names
            cols = [n for n in dict.fromkeys(names) if n in wanted]
            table = pq.read_table(path, columns=cols) if len(set(names)) == len(names) else None
        else:
            table = read_arrow(path, fmt, namespace)
            names = table.column_names
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableContributionError(
            f"namespace {namespace!r}: {fmt} contribution cannot be read: {exc}"
        ) from None
    check_table(table, s, namespace, names)


def check_table(
    table: pa.Table | None, s: TableSettings, namespace: str, names: list[str] | None = None
) -> None:
    """Key columns present and never null; timestamp present; tombstone boolean. `names`:
    every column of the contribution, when `table` holds only some of them."""
    import pyarrow as pa

    where = f"namespace {namespace!r}"
    if names is None:
        assert table is not None
        names = table.column_names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise TableContributionError(f"{where}: column(s) {dup} appear more than once")
    assert table is not None
    for col in s.key:
        if col not in names:
            raise TableContributionError(
                f"{where}: key column {col!r} is missing (columns: {', '.join(names)})"
            )
        nulls = table.column(col).null_count
        if nulls:
            raise TableContributionError(f"{where}: key column {col!r} has {nulls} null value(s)")
    if s.timestamp and s.timestamp not in names:
        raise TableContributionError(f"{where}: timestamp column {s.timestamp!r} is missing")
    if s.tombstone and s.tombstone in names:
        t = table.schema.field(s.tombstone).type
        if not (pa.types.is_boolean(t) or pa.types.is_null(t)):
            raise TableContributionError(
                f"{where}: tombstone column {s.tombstone!r} is {t}, not boolean"
            )


def read_frame(path: Path, fmt: str) -> pl.DataFrame:
    """A contribution as a polars DataFrame (CSV as `crdtd.merge` reads CSV files)."""
    import polars as pl

    from crdtd.data.io import read_table

    if fmt == "csv":
        return read_table(path)
    if fmt == "parquet":
        return pl.read_parquet(path)
    with path.open("rb") as f:
        magic = f.read(6)
    return pl.read_ipc(path) if magic == b"ARROW1" else pl.read_ipc_stream(path)


def merge_files(
    inputs: list[tuple[Path, str]],
    s: TableSettings,
    out: Path,
    fmt: str,
    *,
    provenance: Path | None = None,
    labels: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    """`crdtd.merge` of the input files (in the order given) written to `out` as `fmt`;
    returns the summary (rows, columns). With `provenance`, also writes which labelled input
    (entry id, author) holds each output key."""
    frames = [read_frame(p, k) for p, k in inputs]
    merged = _merge(frames, s)
    write_output(merged, out, fmt)
    if provenance is not None:
        write_provenance(frames, labels or [], merged, s, provenance)
    return {"rows": merged.height, "columns": merged.columns}


def _merge(frames: list[pl.DataFrame], s: TableSettings) -> pl.DataFrame:
    from crdtd.data import merge

    merged: pl.DataFrame = merge(
        *frames,
        key=list(s.key),
        timestamp=s.timestamp or None,
        tombstone=s.tombstone or None,
        drop_deleted=s.drop_deleted and bool(s.tombstone),
    )
    return merged


def to_arrow(df: pl.DataFrame) -> pa.Table:
    """A DataFrame as one-chunk Arrow (plain large_string, whatever polars' chunking was)."""
    import polars as pl

    return df.to_arrow(compat_level=pl.CompatLevel.oldest()).combine_chunks()


def write_output(df: pl.DataFrame, path: Path, fmt: str) -> None:
    """Write the merged table with fixed settings, so equal tables give equal bytes."""
    import pyarrow.csv as pcsv
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    table = to_arrow(df)
    if fmt == "parquet":
        pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP,
            compression="zstd",
            compression_level=3,
            use_dictionary=True,
            write_statistics=True,
        )
    elif fmt == "arrow":
        with ipc.new_file(path, table.schema) as w:
            w.write_table(table, max_chunksize=BATCH_ROWS)
    else:
        pcsv.write_csv(table, path, pcsv.WriteOptions(batch_size=BATCH_ROWS))


def write_provenance(
    frames: list[pl.DataFrame],
    labels: list[tuple[bytes, bytes]],
    merged: pl.DataFrame,
    s: TableSettings,
    path: Path,
) -> None:
    """One row per (output key, input holding it): key columns, entry_id, author (hex)."""
    import polars as pl

    key = list(s.key)
    parts = [
        f.select(key)
        .unique()
        .with_columns(pl.lit(eid.hex()).alias("entry_id"), pl.lit(author.hex()).alias("author"))
        for f, (eid, author) in zip(frames, labels)
    ]
    keys = merged.select(key)
    schema = dict(keys.schema)
    parts = [p.cast(schema) for p in parts]  # type: ignore[arg-type]
    prov = (
        pl.concat(parts, how="vertical")
        .join(keys, on=key, how="semi", nulls_equal=True)
        .unique()
        .sort([*key, "entry_id"])
    )
    write_output(prov, path, "parquet")


def read_output(data: bytes, fmt: str = "arrow") -> pa.Table:
    """A materialised table's bytes (Arrow IPC file, Parquet or CSV) as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    buf = pa.BufferReader(data)
    if fmt == "arrow":
        with ipc.open_file(buf) as r:
            return r.read_all()
    if fmt == "parquet":
        return pq.read_table(buf)
    return pcsv.read_csv(buf)
