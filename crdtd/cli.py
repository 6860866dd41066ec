"""`crdtd` command line: one argparse tree; each area contributes its verbs.

Every area module exposes `add_commands(subparsers)`; verbs whose optional dependencies are
missing still appear and say which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)verb without a description its one-line help, so `crdtd VERB --help`
    opens with what the verb does."""
    for group in parser._actions:
        if isinstance(group, argparse._SubParsersAction):
            for action in group._choices_actions:
                verb = group.choices[action.dest]
                if verb.description is None and action.help:
                    verb.description = action.help[0].upper() + action.help[1:] + "."
                _describe(verb)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`, letting a verb's positionals come after its options too
    (`crdtd recall NS -k 3 "query"`): argparse alone gives an optional positional its empty
    value at the first option and then calls the rest unrecognised."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    verbs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    verb = verbs.choices.get(args.command) if verbs is not None and args.command else None
    if verb is None or any(isinstance(a, argparse._SubParsersAction) for a in verb._actions):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    intermixed = verb.parse_intermixed_args(argv[argv.index(args.command) + 1 :])
    intermixed.command = args.command
    return intermixed


def verb_path(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """The verbs `argv` names, e.g. `federation add-node` (for error lines)."""
    words: list[str] = []
    for token in argv:
        verbs = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        if verbs is None or token not in verbs.choices:
            if token.startswith("-") or verbs is None:
                break
            continue
        words.append(token)
        parser = verbs.choices[token]
    return " ".join(words)


def _file_error(err: OSError) -> str:
    """An OSError as one line naming the file (no traceback)."""
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror or err}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `crdtd` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(parser, argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    verb = verb_path(parser, argv) or args.command
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except CrdtdError as err:
        print(f"crdtd {verb}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `crdtd ls --json | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as err:  # a local file named on the command line
        print(f"crdtd {verb}: error: {_file_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
