"""CLI verbs for the node store: `fsck --data-dir DIR`.

Wired into `crdtd` by `crdtd.cli` through `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crdtd.store.fsck import fsck


def _cmd_fsck(args: argparse.Namespace) -> int:
    report = fsck(args.data_dir)
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
            f"fsck {args.data_dir}: {state}: {report.entries} entries, {report.payloads} live "
            f"payloads, {report.chunks} chunks verified "
            f"({report.unreferenced_chunks} not referenced by any manifest)"
        )
    return 0 if report.ok else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `fsck` to the `crdtd` parser."""
    p = subparsers.add_parser(
        "fsck", help="re-verify every entry, payload and chunk of a data directory"
    )
    p.add_argument("--data-dir", type=Path, required=True, help="the node's data directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_fsck)
