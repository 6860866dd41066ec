"""Tiny checkpoints, extras and per-strategy inputs shared by the model-merge tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from crdtd.errors import StrategyParamError
from crdtd.strategies import registry
from crdtd.strategies.base import Strategy, TensorMerge

TINY_SHAPES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("model.embed_tokens.weight", (12, 6)),
    ("model.layers.0.mlp.weight", (6, 6)),
    ("model.layers.0.norm.weight", (6,)),
    ("model.layers.1.mlp.weight", (6, 6)),
    ("model.layers.1.norm.weight", (6,)),
    ("lm_head.weight", (12, 6)),
)

MAX_INPUTS = 7  # enough for Bulyan with f=1 (4f+3)

# Per-model values for the parameters whose meaning every strategy shares; the rest default.
PER_MODEL_VALUES: dict[str, tuple[float, ...]] = {
    "weight": (1.0, 2.0, 0.5, 1.5, 0.75, 1.25, 0.9),
    "density": (0.7, 0.5, 0.6, 0.8, 0.65, 0.55, 0.75),
    "num_examples": (10, 30, 20, 40, 50, 60, 70),
}


# Global params and extras some strategies need beyond their declarations: the evolutionary
# ones take a fitness function by name, and that fitness reads extra `gram`.
GLOBAL_PARAMS: dict[str, dict[str, Any]] = {
    "evolutionary_merge": {"fitness": "gram_regression", "iterations": 4},
    "genetic_merge": {"fitness": "gram_regression", "iterations": 4, "population": 6},
}
FITNESS_EXTRAS: dict[str, tuple[str, ...]] = {
    "evolutionary_merge": ("gram",),
    "genetic_merge": ("gram",),
}
PER_MODEL_SPECIFIC: dict[str, dict[str, tuple[Any, ...]]] = {
    "safe_merge": {"safety": (True, False, False, False, False, False, False)},
}
SHARED_EXTRAS = frozenset({"alignment"})  # one value for every model (a base-model property)


def global_params(strategy: Strategy) -> dict[str, Any]:
    """Global params to merge with `strategy` in tests (its defaults, plus GLOBAL_PARAMS)."""
    return dict(GLOBAL_PARAMS.get(strategy.name, {}))


def needed_extras(strategy: Strategy) -> tuple[str, ...]:
    """Extra keys `strategy` reads: its declaration plus what its test fitness needs."""
    return tuple(sorted({*strategy.needs_extras, *FITNESS_EXTRAS.get(strategy.name, ())}))


def tiny_tensors(
    seed: int,
    *,
    around: Mapping[str, torch.Tensor] | None = None,
    shapes: Sequence[tuple[str, tuple[int, ...]]] = TINY_SHAPES,
    dtype: torch.dtype = torch.float32,
    spread: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Seeded random tensors; near `around` (a fine-tune of that base) when given."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes:
        noise = torch.randn(shape, generator=g)
        t = noise if around is None else around[name].float() + spread * noise
        out[name] = t.to(dtype)
    return out


def save_checkpoint(
    directory: Path, tensors: Mapping[str, torch.Tensor], shards: int = 1, config: bool = True
) -> Path:
    """Write `tensors` as a Hugging Face style directory (an index when `shards` > 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(dict(tensors), str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in part}, str(directory / fname))
            weight_map.update({n: fname for n in part})
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    if config:
        (directory / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    return directory


def extra_tensor(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """An auxiliary tensor of the form strategies expect for extra `key`."""
    g = torch.Generator().manual_seed(seed)
    cols = shape[-1] if shape else 1
    rows = (int(torch.tensor(shape).prod()) // cols) if shape else 1
    if key in ("fisher", "importance", "base_importance"):
        return torch.rand(shape, generator=g) + 0.1
    if key == "alignment":
        return torch.randn(shape, generator=g)
    if key == "gram":
        x = torch.randn(cols + 2, cols, generator=g)
        return x.T @ x + 0.1 * torch.eye(cols)
    if key in ("coefficient", "dam_coefficient"):
        return torch.rand((), generator=g) * 0.5 + 0.25
    if key == "rank_mask":
        return (torch.rand(min(rows, cols), generator=g) > 0.3).float()
    raise KeyError(
        f"no test builder for extra {key!r}: add one to tests/model_generators.py::extra_tensor"
    )


def extras_for(
    strategy: Strategy, shapes: Sequence[tuple[str, tuple[int, ...]]], seed: int
) -> dict[str, dict[str, torch.Tensor]]:
    """Every extra `strategy` reads, for every tensor: key → {tensor name → tensor}."""
    out = {}
    for key in needed_extras(strategy):
        base = 0 if key in SHARED_EXTRAS else seed * 1000
        out[key] = {
            name: extra_tensor(key, shape, base + j) for j, (name, shape) in enumerate(shapes)
        }
    return out


def per_model_params(strategy: Strategy, n: int) -> list[dict[str, Any]]:
    """Distinct per-model values for the shared per-model params `strategy` declares."""
    declared = {p.name for p in strategy.per_model_params()}
    table = {**PER_MODEL_VALUES, **PER_MODEL_SPECIFIC.get(strategy.name, {})}
    return [
        {key: values[i % len(values)] for key, values in table.items() if key in declared}
        for i in range(n)
    ]


def input_count(strategy: Strategy, preferred: int = 3, most: int = MAX_INPUTS) -> int:
    """How many distinct inputs to give `strategy`: the first count from `preferred` up to
    `most`, within its declared bounds, that its default params accept (e.g. Bulyan's f=1
    needs 4f+3 inputs)."""
    lo = max(1, strategy.min_inputs, min(preferred, strategy.max_inputs or preferred))
    hi = min(most, strategy.max_inputs or most)
    for n in range(lo, hi + 1):
        g = torch.Generator().manual_seed(n)
        params, model_params = strategy.validate(
            global_params(strategy), per_model_params(strategy, n)
        )
        extras = tuple(
            {
                key: extra_tensor(key, (6, 6), 0 if key in SHARED_EXTRAS else i)
                for key in needed_extras(strategy)
            }
            for i in range(n)
        )
        tm = TensorMerge(
            "probe.weight",
            torch.randn((n, 6, 6), generator=g),
            torch.randn((6, 6), generator=g),
            params,
            model_params,
            torch.Generator().manual_seed(0),
            extras,
        )
        try:
            strategy.fn(tm)
        except StrategyParamError:
            continue
        return n
    raise AssertionError(f"strategy {strategy.name!r} accepts no input count in {lo}..{hi}")


def hash_dir(path: Path) -> str:
    """sha256 over every file name and its bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(b"\x00")
        h.update(f.read_bytes())
    return h.hexdigest()


def _cli_value(v: object) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


def cli_argv(root: Path, name: str, out: Path) -> list[str]:
    """`crdtd merge` arguments merging `root`/m0.. with strategy `name` and what it needs."""
    strategy = registry.get(name)
    n = input_count(strategy)
    argv = ["merge", "--strategy", name, "--base", str(root / "base"), "--out", str(out)]
    argv += ["--shard-size", "300", "--no-progress"]
    for key, value in sorted(global_params(strategy).items()):
        argv += ["--param", f"{key}={_cli_value(value)}"]
    rows = per_model_params(strategy, n)
    for key in sorted(rows[0]) if rows else []:
        argv += ["--param", f"{key}=" + ",".join(_cli_value(r[key]) for r in rows)]
    for i in range(n):
        for key, tensors in extras_for(strategy, TINY_SHAPES, i).items():
            path = root / "extras" / name / f"{key}-{i}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path))
            argv += ["--extra", f"{key}={path}"]
    return argv + [str(root / f"m{i}") for i in range(n)]
