"""CLI verbs for the node store: `fsck --data-dir DIR` (or `--config NODE.toml`).

Wired into `crdtd` by `crdtd.cli` through `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crdtd.errors import ConfigError
from crdtd.store.fsck import chunk_file_bytes, fsck
from crdtd.store.store import DB_NAME


def _data_dir(args: argparse.Namespace) -> Path:
    """The directory to check: --data-dir, or the [node] data_dir of --config."""
    if args.config:
        from crdtd.node.config import load_daemon_config

        d = load_daemon_config(args.config, check_strategies=False).node.data_dir
    else:
        d = Path(args.data_dir)
    if not (d / DB_NAME).is_file():
        raise ConfigError(
            f"{d} is not a crdtd data directory (no {DB_NAME}); give the node's [node] "
            "data_dir, or --config NODE.toml"
        )
    return d


def _cmd_fsck(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    data_dir = _data_dir(args)
    show = not args.json and sys.stderr.isatty()
    total = chunk_file_bytes(data_dir) if show else 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="fsck", disable=not show) as bar:
        report = fsck(data_dir, progress=bar.update)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "payloads": report.payloads,
                    "chunks": report.chunks,
                    "unreferenced_chunks": report.unreferenced_chunks,
                    "problems": [{"where": p.where, "what": p.what} for p in report.problems],
                },
                sort_keys=True,
            )
        )
    else:
        for p in report.problems:
            print(f"CORRUPT {p}", file=sys.stderr)
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(
            f"fsck {data_dir}: {state}: {report.entries} entries, {report.payloads} live "
            f"payloads, {report.chunks} chunks verified "
            f"({report.unreferenced_chunks} not referenced by any manifest)"
        )
    return 0 if report.ok else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `fsck` to the `crdtd` parser."""
    p = subparsers.add_parser(
        "fsck", help="re-verify every entry, payload and chunk of a data directory"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="the node's data directory")
    where.add_argument("--config", metavar="FILE.toml", help="the node config naming it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_fsck)
