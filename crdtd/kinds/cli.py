"""`crdtd sketch`: build a sketch of one column of a local table file, on this machine.

    crdtd sketch hll --column patient_id admissions.parquet             # -> admissions.patient_id.hll.sketch
    crdtd sketch kll --column length_of_stay admissions.csv --k 400
    crdtd sketch hll --column patient_id a.parquet --push stats/patients --config site-a.toml

Values are hashed (HLL, Theta) or summarised (KLL, frequent items) here; only the sketch
leaves the machine. Wired into `crdtd` by `crdtd.cli`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crdtd.errors import ConfigError


def column_values(path: Path, column: str, kind: str) -> list[Any]:
    """The non-null values of `column` in a Parquet / Arrow / CSV / JSON Lines file, as the
    sketch type takes them (floats for KLL, text for frequent items)."""
    from crdtd.kinds.table import read_frame

    fmt = {".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}.get(path.suffix.lower())
    if fmt:
        df = read_frame(path, fmt)
    else:
        from crdtd.data.io import read_table

        df = read_table(path)
    if column not in df.columns:
        raise ConfigError(f"{path}: no column {column!r} (columns: {', '.join(df.columns)})")
    series = df[column].drop_nulls()
    if kind == "kll":
        try:
            return [float(v) for v in series.to_list()]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{path}: column {column!r} is not numeric (KLL needs numbers)"
            ) from None
    if kind == "frequent_items":
        return [str(v) for v in series.to_list()]
    return list(series.to_list())


SIZES = {"lg_k": 12, "k": 200, "lg_max_map_size": 10}
"""Each size option's default when neither the command line nor a namespace gives it."""


def _namespace_sizes(client: Any, namespace: str, kind: str) -> dict[str, int]:
    """The sizes a sketch namespace takes (from the node's Status), or ConfigError when it
    is not a sketch namespace of `kind`: caught before anything is built."""
    info = {n.name: n for n in client.status().namespace_info}.get(namespace)
    if info is None:
        return {}  # the push names the namespace's problem (not declared, ...)
    settings = info.settings
    if info.kind != "sketch" or settings.get("type", kind) != kind:
        what = f"{settings.get('type')} sketches" if info.kind == "sketch" else info.kind
        raise ConfigError(f"namespace {namespace!r} takes {what}, not {kind} sketches")
    return {k: int(settings[k]) for k in SIZES if k in settings}


def _cmd_sketch(args: argparse.Namespace) -> int:
    from crdtd.kinds.sketch import SketchSettings, build_sketch, decode_sketch, summarise
    from crdtd.node.cli import summary_lines

    given = {k: getattr(args, k) for k in SIZES if getattr(args, k) is not None}
    client = None
    if args.push:
        from crdtd.node.cli import client_for

        client = client_for(args)
    try:
        node_sizes = _namespace_sizes(client, args.push, args.type) if client else {}
        s = SketchSettings(type=args.type, **{**SIZES, **node_sizes, **given})
        src = Path(args.file)
        values = column_values(src, args.column, args.type)
        data = build_sketch(s, values)
        out = Path(args.out or f"{src.stem}.{args.column}.{args.type}.sketch")
        out.write_bytes(data)
        summary = summarise(s, decode_sketch(data, s, "(local)"))
        pushed = None
        if client is not None:
            pushed = client.push(args.push, out, payload_kind="sketch")
    finally:
        if client is not None:
            client.close()
    report = {"out": str(out), "values": len(values), "bytes": len(data), "summary": summary}
    if pushed is not None:
        report["entry_id"] = pushed.entry_id.hex()
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"{out}: {args.type} sketch of {len(values)} values, {len(data)} B")
    for line in summary_lines(summary):
        print(f"  {line}")
    if pushed is not None:
        print(f"pushed to {args.push}: {pushed.entry_id.hex()}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `crdtd sketch` to the `crdtd` parser."""
    from crdtd.node.cli import client_options

    p = subparsers.add_parser(
        "sketch", help="sketch one column of a local table file (values never leave it)"
    )
    p.add_argument("type", choices=("hll", "theta", "kll", "frequent_items"))
    p.add_argument("file", help="Parquet, Arrow IPC, CSV or JSON Lines file")
    p.add_argument("--column", required=True)
    p.add_argument("--out", default=None, help="default: FILE-STEM.COLUMN.TYPE.sketch")
    p.add_argument(
        "--lg-k", type=int, default=None, help="HLL / Theta size (default: --push's, else 12)"
    )
    p.add_argument("--k", type=int, default=None, help="KLL accuracy (default: --push's, else 200)")
    p.add_argument(
        "--lg-max-map-size",
        type=int,
        default=None,
        help="frequent items size (default: --push's, else 10)",
    )
    p.add_argument(
        "--push",
        default="",
        metavar="NAMESPACE",
        help="push the sketch there, built with that namespace's size",
    )
    client_options(p)
    p.set_defaults(func=_cmd_sketch)
