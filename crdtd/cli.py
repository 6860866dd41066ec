"""`crdtd` command line: one argparse tree; each area contributes its verbs.

Every area module exposes `add_commands(subparsers)`; verbs whose optional dependencies are
missing still appear and say which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from crdtd import __version__
from crdtd.errors import CrdtdError

# (module, extra that provides its dependencies, verbs it adds)
COMMAND_MODULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("crdtd.crypto.cli", "pq", ("federation", "keygen", "tls")),
    ("crdtd.store.cli", "all", ("fsck",)),
    ("crdtd.model.cli", "model", ("merge",)),
    ("crdtd.kinds.cli", "sketch", ("sketch",)),
    (
        "crdtd.node.cli",
        "model",
        (
            "start",
            "config",
            "push",
            "ls",
            "status",
            "materialise",
            "sql",
            "recall",
            "erase",
            "trust",
            "watch",
        ),
    ),
)


def _missing_extra(verbs: tuple[str, ...], extra: str, err: ModuleNotFoundError):
    def add(sub: argparse._SubParsersAction) -> None:
        for verb in verbs:
            p = sub.add_parser(verb, help=f"(needs `pip install crdtd[{extra}]`)")
            p.set_defaults(func=lambda _a, v=verb: _fail_missing(v, extra, err))

    return add


def _fail_missing(verb: str, extra: str, err: ModuleNotFoundError) -> int:
    print(f"crdtd {verb}: missing dependency {err.name!r}; install crdtd[{extra}]", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The full `crdtd` parser with every area's verbs."""
    parser = argparse.ArgumentParser(
        prog="crdtd",
        description="Coordinator-free merging of models, tables and agent state.",
    )
    parser.add_argument("--version", action="version", version=f"crdtd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, extra, verbs in COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and err.name.split(".")[0] == "crdtd":
                raise
            _missing_extra(verbs, extra, err)(sub)
            continue
        mod.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `crdtd` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CrdtdError as err:
        print(f"crdtd {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
