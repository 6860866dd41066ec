"""`python -m crdtd.node VERB ...`: the node verbs alone (the same ones `crdtd` offers)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from crdtd.errors import CrdtdError
from crdtd.node.cli import add_commands


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run one node verb; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m crdtd.node")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CrdtdError as err:
        print(f"crdtd {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
