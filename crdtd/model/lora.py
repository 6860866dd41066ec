"""Merging PEFT LoRA adapters of mixed ranks: merge full deltas, re-factor by truncated SVD.

Each adapter module contributes Δ = B·A·s with s = alpha/r (alpha/√r under rsLoRA). The
deltas are merged per module with any strategy (the base is zero: deltas *are* task vectors;
a module an adapter does not touch counts as a zero delta), then each merged Δ is factored
as U_r √S_r · √S_r V_rᵀ, keeping `rank` singular values or the fewest that keep `energy` of
Σσ². The output is a PEFT adapter directory (scale 1: lora_alpha = r per module) and a report
of the relative reconstruction error ‖Δ − B'A'‖_F / ‖Δ‖_F.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import torch

from crdtd.errors import InputReadError, MergeError, StrategyParamError, TensorMismatchError
from crdtd.model.identity import keyed_content_id
from crdtd.model.io import FileCheckpoint, TensorInfo, content_ids, parse_dtype, st_dtype
from crdtd.model.merge import Contribution, MergePlan, ModelMerge, execute
from crdtd.model.schema import ModelMergeSchema
from crdtd.model.writer import ShardedWriter, check_output_dir, natural_key

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))
_DELTA_FIELDS = ("lora_alpha", "alpha_pattern", "use_rslora")


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a PEFT adapter directory (has `adapter_config.json`)."""
    return (Path(path) / CONFIG_NAME).is_file()


@dataclass(frozen=True)
class _Module:
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    scale: float


class LoraAdapter:
    """One PEFT LoRA adapter on disk: config, factor tensors and per-module scaling."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.config: dict[str, Any] = json.loads((path / CONFIG_NAME).read_text())
        except (OSError, ValueError) as err:
            raise InputReadError(
                f"{path / CONFIG_NAME}: unreadable adapter config: {err}"
            ) from None
        if str(self.config.get("peft_type", "LORA")).upper() != "LORA":
            raise InputReadError(f"{path}: peft_type {self.config.get('peft_type')!r} is not LORA")
        if self.config.get("use_dora"):
            raise InputReadError(f"{path}: DoRA adapters are not supported")
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise InputReadError(f"{path}: no {WEIGHTS_NAME}")
        self.file = FileCheckpoint(str(path), [weights], path)
        self.modules: dict[str, _Module] = {}
        used: set[str] = set()
        for key in sorted(self.file.infos):
            for a_suf, b_suf in _PAIRS:
                if key.endswith(a_suf):
                    self._add_module(key, key[: -len(a_suf)] + b_suf, a_suf)
                    used.update((key, key[: -len(a_suf)] + b_suf))
        extra = sorted(set(self.file.infos) - used)
        if extra:
            raise InputReadError(
                f"{path}: unsupported adapter tensor {extra[0]!r} (only LoRA A/B factors merge)"
            )

    def _add_module(self, a_key: str, b_key: str, a_suf: str) -> None:
        if b_key not in self.file.infos:
            raise InputReadError(f"{self.path}: {a_key!r} has no matching {b_key!r}")
        a, b = self.file.infos[a_key], self.file.infos[b_key]
        r = a.shape[0]
        if len(b.shape) < 2 or b.shape[1] != r or any(d != 1 for d in b.shape[2:]) or r == 0:
            raise InputReadError(
                f"{self.path}: factors {a_key!r} {list(a.shape)} and {b_key!r} "
                f"{list(b.shape)} do not form a rank-{r} product"
            )
        name = a_key[: -len(a_suf)].removeprefix(_PREFIX)
        alpha = float(self.config.get("lora_alpha", r))
        for pattern, value in sorted((self.config.get("alpha_pattern") or {}).items()):
            if re.match(rf"(.*\.)?({pattern})$", name):
                alpha = float(value)
                break
        scale = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        self.modules[name] = _Module(a_key, b_key, a.shape, b.shape, scale)

    def delta_shape(self, name: str) -> tuple[int, int]:
        m = self.modules[name]
        return (m.b_shape[0], math.prod(m.a_shape[1:]))

    def delta(self, name: str) -> torch.Tensor:
        """Δ = B·A·scale for module `name`, float32 `[out, in]`."""
        m = self.modules[name]
        a = self.file.view(m.a_key).to(torch.float32).reshape(m.a_shape[0], -1)
        b = self.file.view(m.b_key).to(torch.float32).reshape(m.b_shape[0], m.b_shape[1])
        out = (b @ a) * m.scale
        self.file.release(m.a_key)
        self.file.release(m.b_key)
        return out

    def content_id(self) -> bytes:
        """Id of the factors plus the config fields that change the deltas."""
        tensors = content_ids([self.file])[0]
        cfg = [[k, json.dumps(self.config.get(k), sort_keys=True)] for k in _DELTA_FIELDS]
        return keyed_content_id(tensors, msgpack.packb(cfg))


class _DeltaSource:
    """An adapter seen as a checkpoint of full deltas (`<module>.weight`, zeros if absent)."""

    def __init__(self, adapter: LoraAdapter, infos: Mapping[str, TensorInfo]) -> None:
        self.adapter = adapter
        self.label = str(adapter.path)
        self.root: Path | None = None
        self.infos = dict(infos)
        self.precomputed_id = adapter.content_id()

    def view(self, name: str) -> torch.Tensor:
        module = name.removesuffix(".weight")
        if module in self.adapter.modules:
            return self.adapter.delta(module)
        return torch.zeros(self.infos[name].shape, dtype=torch.float32)

    def raw(self, name: str) -> memoryview:
        raise NotImplementedError("adapter deltas are identified by precomputed_id")

    def release(self, name: str) -> None:
        return None

    def close(self) -> None:
        self.adapter.file.close()


class _ZeroBase:
    """The base of a delta merge: zeros everywhere."""

    label = "zero base"
    root: Path | None = None
    precomputed_id = b"\x00" * 32

    def __init__(self, infos: Mapping[str, TensorInfo]) -> None:
        self.infos = dict(infos)

    def view(self, name: str) -> torch.Tensor:
        return torch.zeros(self.infos[name].shape, dtype=torch.float32)

    def raw(self, name: str) -> memoryview:
        raise NotImplementedError

    def release(self, name: str) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class ModuleError:
    """Reconstruction of one module: kept rank and relative Frobenius error."""

    module: str
    rank: int
    relative_error: float


@dataclass(frozen=True)
class LoraMergeReport:
    """What `merge_adapters` wrote and how well the truncated factors reproduce the merge."""

    out_dir: Path
    input_set_digest: str
    content_ids: tuple[str, ...]
    modules: tuple[ModuleError, ...]
    relative_error: float
    max_relative_error: float
    rank: int


@dataclass
class _Factored:
    a: dict[str, torch.Tensor] = field(default_factory=dict)
    b: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: list[ModuleError] = field(default_factory=list)
    tail: float = 0.0
    total: float = 0.0


def choose_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Kept rank: `rank` (capped by the matrix), or the fewest σ keeping `energy` of Σσ²."""
    full = int(s.numel())
    if rank is not None:
        return max(1, min(rank, full))
    assert energy is not None
    power = (s.double() ** 2).cumsum(0)
    if float(power[-1]) <= 0.0:
        return 1
    need = energy * float(power[-1])
    return max(1, min(full, int((power < need * (1 - 1e-12)).sum()) + 1))


def factor(
    delta: torch.Tensor, rank: int | None, energy: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Truncated SVD Δ ≈ B·A, B = U_r√S_r, A = √S_r V_rᵀ; returns (A, B, all σ, r).

    Computed in float64; each column of U is signed so its largest-magnitude entry is
    positive, so equal deltas give equal factors.
    """
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = choose_rank(s, rank, energy)
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    u, vh = u * signs, vh * signs.unsqueeze(1)
    root = s[:r].sqrt()
    return root.unsqueeze(1) * vh[:r], u[:, :r] * root, s, r


class _FactorSink:
    def __init__(self, rank: int | None, energy: float | None) -> None:
        self.rank, self.energy = rank, energy
        self.out = _Factored()

    def put(self, name: str, tensor: torch.Tensor) -> None:
        module = name.removesuffix(".weight")
        a, b, s, r = factor(tensor, self.rank, self.energy)
        sq = s.double() ** 2
        tail, total = float(sq[r:].sum()), float(sq.sum())
        self.out.a[module], self.out.b[module] = a, b
        self.out.tail += tail
        self.out.total += total
        rel = math.sqrt(tail / total) if total > 0 else 0.0
        self.out.errors.append(ModuleError(module, r, rel))

    def put_block(self, name: str, start: int, part: torch.Tensor) -> None:
        raise MergeError(f"module {name!r}: adapter deltas are factored whole, not in blocks")


def merge_adapters(
    adapters: Sequence[str | os.PathLike[str] | Contribution],
    out_dir: str | os.PathLike[str],
    *,
    schema: ModelMergeSchema | str | Mapping[str, Any] | None = None,
    rank: int | None = None,
    energy: float | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoraMergeReport:
    """Merge PEFT adapters with `schema`, re-factor to `rank` (or `energy`), write `out_dir`.

    With neither `rank` nor `energy`, the largest input rank is kept.
    """
    if rank is not None and energy is not None:
        raise StrategyParamError("give either rank (--rank) or energy (--energy), not both")
    if rank is not None and rank < 1:
        raise StrategyParamError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise StrategyParamError(f"energy must be in (0, 1], got {energy}")
    out = Path(out_dir)
    check_output_dir(out)
    items = [a if isinstance(a, Contribution) else Contribution(a) for a in adapters]
    if not items:
        raise MergeError("no adapters to merge")
    loaded = [LoraAdapter(Path(os.fspath(c.weights))) for c in items]  # type: ignore[arg-type]
    if rank is None and energy is None:
        rank = max(m.a_shape[0] for ad in loaded for m in ad.modules.values())
    try:
        infos = _union_infos(loaded)
        sources = [_DeltaSource(ad, infos) for ad in loaded]
        contribs = [
            Contribution(src, c.params, c.extras, c.label) for src, c in zip(sources, items)
        ]
        merger = ModelMerge(schema)
        plan: MergePlan = merger.plan(contribs, _ZeroBase(infos))
        try:
            sink = _FactorSink(rank, energy)
            execute(plan, sink, chunk=None)  # deltas are computed whole per module
            ref = next(ad for ad in loaded if ad is plan.inputs[0].source.adapter)  # type: ignore[attr-defined]
            first_dtype = ref.file.infos[next(iter(ref.modules.values())).a_key].torch_dtype
            out_dtype = parse_dtype(dtype) if dtype is not None else first_dtype
            _write_adapter(out, ref, sink.out, plan, out_dtype)
        finally:
            plan.close()
    finally:
        for ad in loaded:
            ad.file.close()
    errors = tuple(sorted(sink.out.errors, key=lambda e: natural_key(e.module)))
    total_err = math.sqrt(sink.out.tail / sink.out.total) if sink.out.total > 0 else 0.0
    return LoraMergeReport(
        out,
        plan.digest.hex(),
        plan.content_ids,
        errors,
        total_err,
        max((e.relative_error for e in errors), default=0.0),
        max((e.rank for e in errors), default=0),
    )


def _union_infos(adapters: Sequence[LoraAdapter]) -> dict[str, TensorInfo]:
    """`<module>.weight` → float32 delta shape over every adapter; shapes must agree."""
    shapes: dict[str, tuple[tuple[int, int], str]] = {}
    for ad in adapters:
        for module in ad.modules:
            shape = ad.delta_shape(module)
            seen = shapes.get(module)
            if seen is not None and seen[0] != shape:
                raise TensorMismatchError(
                    f"module {module!r}: delta shape {list(seen[0])} in {seen[1]} but "
                    f"{list(shape)} in {ad.path}"
                )
            shapes.setdefault(module, (shape, str(ad.path)))
    return {f"{m}.weight": TensorInfo(f"{m}.weight", "F32", s) for m, (s, _) in shapes.items()}


def _write_adapter(
    out: Path, ref: LoraAdapter, f: _Factored, plan: MergePlan, dtype: torch.dtype
) -> None:
    """adapter_model.safetensors (factors in PEFT's key names) + adapter_config.json."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module in f.a:
        template = next(
            (ad.modules[module] for ad in _adapters_of(plan) if module in ad.modules), None
        )
        assert template is not None
        r = f.a[module].shape[0]
        ranks[module] = r
        a = f.a[module].reshape(r, *template.a_shape[1:])
        b = f.b[module].reshape(template.b_shape[0], r, *template.b_shape[2:])
        tensors[template.a_key] = a.to(dtype).contiguous()
        tensors[template.b_key] = b.to(dtype).contiguous()
    infos = [TensorInfo(n, st_dtype(t.dtype), tuple(t.shape)) for n, t in tensors.items()]
    with ShardedWriter(
        out, infos, plan.metadata, shard_size=1 << 62, stem="adapter_model"
    ) as writer:
        for info in writer.order:
            writer.write(info.name, tensors[info.name])
        writer.commit()
    top = max(ranks.values(), default=1)
    cfg = dict(ref.config)
    cfg.update(
        r=top,
        lora_alpha=top,
        rank_pattern={re.escape(m): r for m, r in sorted(ranks.items()) if r != top},
        alpha_pattern={re.escape(m): r for m, r in sorted(ranks.items()) if r != top},
        target_modules=sorted(ranks, key=natural_key),
        use_rslora=False,
        use_dora=False,
        layers_to_transform=None,
        layers_pattern=None,
        modules_to_save=None,
    )
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _adapters_of(plan: MergePlan) -> list[LoraAdapter]:
    return [inp.source.adapter for inp in plan.inputs]  # type: ignore[attr-defined]
