"""`crdtd merge`: offline model / LoRA merging from the command line (no daemon).

    crdtd merge --strategy ties --param density=0.2 [--base DIR] --out DIR MODEL_DIR...
    crdtd merge --config merge.yml --out DIR
    crdtd merge --list

`--param KEY=VALUE` values are YAML scalars; `[a, b, c]` is a layer gradient and `a,b,c`
gives a per-model value to each MODEL in order. When every MODEL is a PEFT adapter
directory the adapters are merged and re-factored (`--rank` or `--energy`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from crdtd.errors import ConfigError, CrdtdError

if TYPE_CHECKING:
    from crdtd.model.yaml_config import MergeConfig

# torch and the engine load only when a merge runs, so `crdtd --help` and the daemon's
# client verbs start fast.
DEFAULT_SHARD_SIZE_TEXT = "5GB"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `merge` verb."""
    p = subparsers.add_parser(
        "merge",
        help="merge model checkpoints or LoRA adapters offline",
        description="Merge safetensors checkpoints (or PEFT LoRA adapters) deterministically: "
        "the output bytes depend only on the set of inputs.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="model directory, file or index")
    p.add_argument("--strategy", "-s", help="strategy name (`--list` shows all)")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy parameter; `a,b,c` = one value per MODEL, `[a, b]` = layer gradient",
    )
    p.add_argument("--base", help="base model (task vectors are taken against it)")
    p.add_argument("--out", "-o", help="output directory")
    p.add_argument("--config", "-c", help="mergekit-style YAML config")
    p.add_argument(
        "--shard-size", default=DEFAULT_SHARD_SIZE_TEXT, help="max shard size, e.g. 5GB, 500MB"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--dtype", help="output dtype: bfloat16, float16 or float32")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="auxiliary tensors (e.g. fisher=DIR); give KEY once per MODEL, in MODEL order",
    )
    p.add_argument("--rank", type=int, help="LoRA: rank of the re-factored adapter")
    p.add_argument("--energy", type=float, help="LoRA: keep this fraction of Σσ² per module")
    p.add_argument("--list", action="store_true", help="print every strategy name and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_merge)


def parse_params(
    items: Sequence[str], n_models: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`KEY=VALUE` strings → (global params, per-model params)."""
    glob: dict[str, Any] = {}
    per: list[dict[str, Any]] = [{} for _ in range(n_models)]
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        stripped = text.strip()
        if "," in stripped and not stripped.startswith(("[", "{")):
            values = [_scalar(v, key) for v in stripped.split(",")]
            if len(values) != n_models:
                raise ConfigError(
                    f"--param {key}: {len(values)} comma-separated values for {n_models} models"
                )
            for row, v in zip(per, values):
                row[key] = v
        else:
            glob[key] = _scalar(stripped, key)
    return glob, per


def _scalar(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--param {key}: cannot parse value {text!r}") from None


def parse_extras(items: Sequence[str], n_models: int) -> list[dict[str, str]]:
    """`KEY=PATH` strings, each key given once per model in order → per-model extras."""
    per: list[dict[str, str]] = [{} for _ in range(n_models)]
    counts: dict[str, int] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ConfigError(f"--extra {item!r}: expected KEY=PATH")
        i = counts.get(key, 0)
        if i >= n_models:
            raise ConfigError(f"--extra {key}: given more times than there are models")
        per[i][key] = path
        counts[key] = i + 1
    for key, n in sorted(counts.items()):
        if n != n_models:
            raise ConfigError(f"--extra {key}: given {n} times for {n_models} models")
    return per


def _config_from_args(args: argparse.Namespace) -> MergeConfig:
    from crdtd.model.merge import Contribution
    from crdtd.model.schema import ModelMergeSchema
    from crdtd.model.yaml_config import MergeConfig, load_config

    if args.config:
        if args.strategy or args.param or args.models or args.base or args.extra:
            raise ConfigError(
                "--config carries the strategy, params, models and base; do not repeat them"
            )
        return load_config(args.config)
    if not args.strategy:
        raise ConfigError(
            "give --strategy NAME (or --config FILE); `crdtd merge --list` shows names"
        )
    if not args.models:
        raise ConfigError("no MODEL directories given")
    glob, per = parse_params(args.param, len(args.models))
    extras = parse_extras(args.extra, len(args.models))
    inputs = tuple(
        Contribution(Path(m), params, {k: Path(v) for k, v in ex.items()})
        for m, params, ex in zip(args.models, per, extras)
    )
    return MergeConfig(
        ModelMergeSchema.single(args.strategy, glob),
        inputs,
        None if args.base is None else Path(args.base),
        None,
    )


def run_merge(args: argparse.Namespace) -> int:
    """Run `crdtd merge`; returns the exit status (errors raise `CrdtdError`)."""
    import torch

    from crdtd.model.lora import is_adapter_dir, merge_adapters
    from crdtd.model.merge import ModelMerge
    from crdtd.model.writer import parse_size
    from crdtd.strategies import registry

    if args.list:
        for name in registry.names():
            print(name)
        return 0
    cfg = _config_from_args(args)
    if not args.out:
        raise ConfigError("--out DIR is required")
    dtype = args.dtype or cfg.dtype
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    progress = sys.stderr.isatty() and not args.no_progress
    paths = [c.weights for c in cfg.inputs]
    adapters = [is_adapter_dir(p) for p in paths]  # type: ignore[arg-type]
    if any(adapters):
        if not all(adapters):
            raise ConfigError("mix of LoRA adapter directories and full models; merge one kind")
        report = merge_adapters(
            cfg.inputs,
            args.out,
            schema=cfg.schema,
            rank=args.rank if args.rank is not None else cfg.lora_rank,
            energy=args.energy if args.energy is not None else cfg.lora_energy,
            dtype=dtype,
        )
        print(f"merged {len(report.content_ids)} distinct adapters into {report.out_dir}")
        print(f"input-set digest: {report.input_set_digest}")
        print(f"rank: {report.rank}")
        print(f"relative reconstruction error: {report.relative_error:.6f}")
        print(f"max module reconstruction error: {report.max_relative_error:.6f}")
        return 0
    if args.rank is not None or args.energy is not None:
        raise ConfigError("--rank/--energy apply to LoRA adapter merges only")
    merger = ModelMerge(cfg.schema, device=device)
    out = merger.merge_to_dir(
        cfg.inputs,
        args.out,
        cfg.base,
        dtype=dtype,
        shard_size=parse_size(args.shard_size),
        progress=progress,
    )
    print(
        f"merged {out.tensors} tensors from {len(out.content_ids)} distinct inputs into "
        f"{out.out_dir} ({len(out.files)} files, {out.total_size} bytes of tensors)"
    )
    print(f"input-set digest: {out.input_set_digest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run only the `merge` verb (the full CLI is `crdtd.cli.main`)."""
    parser = argparse.ArgumentParser(prog="crdtd")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CrdtdError as err:
        print(f"crdtd {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
