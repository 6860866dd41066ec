"""`ModelMerge`: a pure function from a *set* of checkpoints to one merged checkpoint.

Pipeline: open every input (headers only) → check names, shapes and dtypes, resolve the
schema and validate every strategy's params (all before any tensor is merged) → hash the
inputs into content ids, drop duplicates, sort by id → for each tensor name in natural
order: load the k inputs into one reused float32 stack, call the strategy with a generator
seeded from (input-set digest, tensor name, params), cast, hand to a sink (a dict, or the
streaming shard writer). Peak memory is about (k + 2) tensors plus the strategy's scratch;
for blockwise strategies (`Strategy.blockwise`) about (k + 2) flat blocks instead.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm

from crdtd.errors import (
    MergeError,
    NonFiniteTensorError,
    StrategyError,
    StrategyParamError,
    TensorMismatchError,
)
from crdtd.model import kept_blocks
from crdtd.model.identity import input_set_digest
from crdtd.model.io import (
    MAX_HASH_THREADS,
    CheckpointLike,
    PieceVisitor,
    TensorInfo,
    TensorSource,
    content_ids,
    open_checkpoint,
    parse_dtype,
    st_dtype,
)
from crdtd.model.kept_blocks import KeptBlocks
from crdtd.model.sampling import PieceSampler, sample_positions
from crdtd.model.schema import (
    ModelMergeSchema,
    count_layers,
    resolve_params,
)
from crdtd.model.workers import PriorityWorkers
from crdtd.model.writer import (
    DEFAULT_SHARD_SIZE,
    ShardedWriter,
    check_output_dir,
    natural_key,
    side_files_of,
)
from crdtd.strategies import registry
from crdtd.strategies._select import sample_stride
from crdtd.strategies.base import (
    RawInputs,
    Strategy,
    TensorBlocks,
    TensorMerge,
    canonical_params,
    generator_for,
)

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Contribution:
    """One input: its weights, its per-model params (`weight`, `density`, ...) and extras.

    `extras` maps a key a strategy declares in `needs_extras` (e.g. `fisher`, `gram`) to a
    checkpoint holding that auxiliary tensor under the same tensor names.
    """

    weights: CheckpointLike
    params: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, CheckpointLike] = field(default_factory=dict)
    label: str | None = None


@dataclass
class _Input:
    source: TensorSource
    params: dict[str, Any]
    extras: dict[str, TensorSource]
    label: str
    content_id: bytes = b""
    extra_ids: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorJob:
    """How one output tensor is made: a strategy call with validated params, or a copy."""

    info: TensorInfo
    strategy: Strategy | None
    params: Mapping[str, Any]
    model_params: tuple[Mapping[str, Any], ...]
    params_bytes: bytes
    input_dtype: torch.dtype = torch.float32


@dataclass
class MergePlan:
    """Everything decided before the first tensor is merged."""

    inputs: list[_Input]
    base: TensorSource | None
    jobs: list[TensorJob]
    digest: bytes
    base_id: bytes | None
    metadata: dict[str, str]
    side_files: dict[str, Path]
    device: torch.device
    _opened: list[TensorSource] = field(default_factory=list)
    # (id of an input's source or the base, tensor name) -> its sample taken while hashing,
    # for the `prepare` of a two-phase strategy (see `crdtd.model.sampling`)
    samples: dict[tuple[int, str], PieceSampler] = field(default_factory=dict)

    @property
    def content_ids(self) -> tuple[str, ...]:
        return tuple(i.content_id.hex() for i in self.inputs)

    def close(self) -> None:
        for s in self._opened:
            s.close()


@dataclass
class MergeResult:
    """An in-memory merge: `.tensor[name]` holds each merged tensor."""

    tensor: dict[str, torch.Tensor]
    input_set_digest: str
    content_ids: tuple[str, ...]
    metadata: dict[str, str]


@dataclass(frozen=True)
class MergeReport:
    """A merge written to disk: where, which files, and the identity of the input set."""

    out_dir: Path
    files: tuple[str, ...]
    total_size: int
    tensors: int
    input_set_digest: str
    content_ids: tuple[str, ...]


class _Sink(Protocol):
    def put(self, name: str, tensor: torch.Tensor) -> None: ...

    def put_block(self, name: str, start: int, part: torch.Tensor) -> None: ...


class _DictSink:
    """Collects merged tensors in memory; blocks of one tensor may come in any order."""

    def __init__(self, jobs: Sequence[TensorJob]) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.dtypes = {j.info.name: j.info.torch_dtype for j in jobs}
        self.shapes = {j.info.name: torch.Size(j.info.shape) for j in jobs}
        self._parts: dict[str, tuple[torch.Tensor, list[int]]] = {}
        self._lock = threading.Lock()

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor.to("cpu", self.dtypes[name], copy=True)

    def put_block(self, name: str, start: int, part: torch.Tensor) -> None:
        with self._lock:
            if name not in self._parts:
                flat = torch.empty(self.shapes[name].numel(), dtype=self.dtypes[name])
                self._parts[name] = (flat, [0])
            flat, filled = self._parts[name]
        flat[start : start + part.numel()] = part.reshape(-1).to("cpu", self.dtypes[name])
        with self._lock:
            filled[0] += part.numel()
            if filled[0] == flat.numel():
                self.tensors[name] = self._parts.pop(name)[0].reshape(self.shapes[name])


def _schema_of(schema: ModelMergeSchema | str | Mapping[str, Any] | None) -> ModelMergeSchema:
    if schema is None:
        return ModelMergeSchema()
    if isinstance(schema, ModelMergeSchema):
        return schema
    if isinstance(schema, str):
        return ModelMergeSchema.single(schema)
    return ModelMergeSchema(schema)


def _device_of(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeError("device 'cuda' requested but torch sees no GPU")
    return dev


class ModelMerge:
    """Merge checkpoints with a `ModelMergeSchema`; the result depends only on the input set.

    `ModelMerge(ModelMergeSchema({"default": "ties"})).merge([a, b], base=base).tensor[name]`
    works on dicts of tensors; `merge_to_dir` streams safetensors checkpoints to a directory.
    """

    def __init__(
        self,
        schema: ModelMergeSchema | str | Mapping[str, Any] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.schema = _schema_of(schema)
        self.device = device
        self.dtype = dtype

    def plan(
        self,
        inputs: Sequence[CheckpointLike | Contribution],
        base: CheckpointLike | None = None,
        *,
        dtype: str | torch.dtype | None = None,
    ) -> MergePlan:
        """Open, check and hash the inputs; fail here, before any tensor is merged."""
        return build_plan(
            self.schema, inputs, base, dtype=dtype or self.dtype, device=_device_of(self.device)
        )

    def merge(
        self,
        inputs: Sequence[CheckpointLike | Contribution],
        base: CheckpointLike | None = None,
        *,
        dtype: str | torch.dtype | None = None,
    ) -> MergeResult:
        """Merge into memory; returns `MergeResult` with `.tensor[name]`."""
        plan = self.plan(inputs, base, dtype=dtype)
        try:
            sink = _DictSink(plan.jobs)
            execute(plan, sink)
            return MergeResult(sink.tensors, plan.digest.hex(), plan.content_ids, plan.metadata)
        finally:
            plan.close()

    def merge_to_dir(
        self,
        inputs: Sequence[CheckpointLike | Contribution],
        out_dir: str | os.PathLike[str],
        base: CheckpointLike | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        progress: bool = False,
        fsync: bool = False,
    ) -> MergeReport:
        """Stream the merge into sharded safetensors (+ index, config, tokenizer) in `out_dir`."""
        out = Path(out_dir)
        check_output_dir(out)
        plan = self.plan(inputs, base, dtype=dtype)
        try:
            return write_plan(plan, out, shard_size=shard_size, progress=progress, fsync=fsync)
        finally:
            plan.close()


def merge_to_dir(
    inputs: Sequence[CheckpointLike | Contribution],
    out_dir: str | os.PathLike[str],
    *,
    schema: ModelMergeSchema | str | Mapping[str, Any] | None = None,
    base: CheckpointLike | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = False,
) -> MergeReport:
    """Functional form of `ModelMerge(schema).merge_to_dir(...)`."""
    return ModelMerge(schema, device=device).merge_to_dir(
        inputs, out_dir, base, dtype=dtype, shard_size=shard_size, progress=progress
    )


def write_plan(
    plan: MergePlan,
    out: Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = False,
    fsync: bool = False,
    stem: str = "model",
) -> MergeReport:
    """Execute `plan` into a deterministic sharded checkpoint in `out`."""
    infos = [job.info for job in plan.jobs]
    with ShardedWriter(
        out, infos, plan.metadata, shard_size=shard_size, stem=stem, fsync=fsync
    ) as writer:
        by_name = {job.info.name: job for job in plan.jobs}
        ordered = [by_name[i.name] for i in writer.order]
        execute(plan, writer, ordered, progress=progress)
        written = writer.commit(plan.side_files)
    return MergeReport(
        out,
        written.files,
        written.total_size,
        len(plan.jobs),
        plan.digest.hex(),
        plan.content_ids,
    )


# -- planning ---------------------------------------------------------------------------------


def _label(spec: CheckpointLike, default: str) -> str:
    """A human label for error messages: the path, or `default` for in-memory inputs."""
    if isinstance(spec, TensorSource):
        return spec.label
    if isinstance(spec, Mapping):
        return default
    return str(os.fspath(spec))


def _as_contribution(item: CheckpointLike | Contribution) -> Contribution:
    return item if isinstance(item, Contribution) else Contribution(item)


def _open_inputs(items: Sequence[CheckpointLike | Contribution]) -> tuple[list[_Input], list]:
    opened: list[TensorSource] = []
    out: list[_Input] = []
    for n, item in enumerate(items):
        c = _as_contribution(item)
        label = c.label or _label(c.weights, f"input {n}")
        src = open_checkpoint(c.weights, label)
        opened.append(src)
        extras = {}
        for key in sorted(c.extras):
            ex = open_checkpoint(c.extras[key], f"{label} extra {key!r}")
            opened.append(ex)
            extras[str(key)] = ex
        out.append(_Input(src, dict(c.params), extras, label))
    return out, opened


def _check_tensors(
    inputs: Sequence[_Input], base: TensorSource | None, dtype: torch.dtype | None
) -> list[TensorInfo]:
    """Same names and shapes everywhere, no dtype clash; returns the output tensor infos."""
    ref = inputs[0].source
    ref_names = set(ref.infos)
    for inp in inputs[1:]:
        names = set(inp.source.infos)
        for name in sorted(ref_names - names, key=natural_key)[:1]:
            raise TensorMismatchError(
                f"tensor {name!r} is in {ref.label} but missing from {inp.source.label}"
            )
        for name in sorted(names - ref_names, key=natural_key)[:1]:
            raise TensorMismatchError(
                f"tensor {name!r} is in {inp.source.label} but missing from {ref.label}"
            )
    if base is not None:
        for name in sorted(ref_names - set(base.infos), key=natural_key)[:1]:
            raise TensorMismatchError(f"tensor {name!r} is missing from the base {base.label}")
    sources = [i.source for i in inputs] + ([base] if base is not None else [])
    out: list[TensorInfo] = []
    for name in sorted(ref_names, key=natural_key):
        first = ref.infos[name]
        for src in sources[1:]:
            info = src.infos[name]
            if info.shape != first.shape:
                raise TensorMismatchError(
                    f"tensor {name!r}: shape {list(first.shape)} in {ref.label} but "
                    f"{list(info.shape)} in {src.label}"
                )
            if info.dtype != first.dtype and not (info.is_float and first.is_float and dtype):
                hint = (
                    "; choose an output dtype (--dtype)" if info.is_float and first.is_float else ""
                )
                raise TensorMismatchError(
                    f"tensor {name!r}: dtype {first.dtype} in {ref.label} but {info.dtype} in "
                    f"{src.label}{hint}"
                )
        out_dtype = st_dtype(dtype) if (first.is_float and dtype is not None) else first.dtype
        out.append(TensorInfo(name, out_dtype, first.shape))
    return out


def _check_param_keys(schema: ModelMergeSchema, inputs: Sequence[_Input]) -> None:
    """Every parameter key is declared by its rule's strategy (global keys) or by some strategy
    of the schema (per-model keys); a typo is reported against the rule or the model entry."""
    per_model: dict[str, set[str]] = {}
    for rule in (*schema.rules, schema.default):
        strategy = registry.get(rule.strategy)
        known = {p.name for p in strategy.params}
        for key in sorted(rule.params):
            if key not in known:
                where = "parameters" if rule is schema.default else f"rule {rule.pattern!r}"
                raise StrategyParamError(
                    f"{where}: unknown parameter {key!r} for strategy {strategy.name!r} "
                    f"(known: {', '.join(sorted(known)) or 'none'})"
                )
        for p in strategy.per_model_params():
            per_model.setdefault(p.name, set()).add(strategy.name)
    for inp in inputs:
        for key in sorted(inp.params):
            if key not in per_model:
                names = ", ".join(schema.strategies())
                raise StrategyParamError(
                    f"{inp.label}: unknown per-model parameter {key!r} for strategy {names} "
                    f"(per-model parameters: {', '.join(sorted(per_model)) or 'none'})"
                )


def _dedupe(inputs: list[_Input]) -> list[_Input]:
    """One input per content id, sorted by id; equal content with unequal params is an error."""
    by_id: dict[bytes, _Input] = {}
    for inp in inputs:
        seen = by_id.get(inp.content_id)
        if seen is None:
            by_id[inp.content_id] = inp
            continue
        if _plain(seen.params) != _plain(inp.params) or seen.extra_ids != inp.extra_ids:
            raise StrategyParamError(
                f"{seen.label} and {inp.label} have the same content "
                f"({inp.content_id.hex()[:16]}) but different parameters or extras"
            )
    return [by_id[cid] for cid in sorted(by_id)]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _input_dtypes(
    infos: Sequence[TensorInfo], inputs: Sequence[_Input], base: TensorSource | None
) -> dict[str, torch.dtype]:
    """Per tensor name, the promotion of the dtypes the inputs and the base store it in."""
    sources = [i.source for i in inputs] + ([base] if base is not None else [])
    return {
        info.name: functools.reduce(
            torch.promote_types, [s.infos[info.name].torch_dtype for s in sources]
        )
        for info in infos
    }


def _jobs(
    schema: ModelMergeSchema,
    infos: Sequence[TensorInfo],
    inputs: Sequence[_Input],
    base: TensorSource | None,
    final: bool,
) -> list[TensorJob]:
    """Resolve rule, strategy and validated params for every tensor (raises on bad params)."""
    has_base = base is not None
    in_dtypes = _input_dtypes(infos, inputs, base)
    layers = count_layers(i.name for i in infos)
    jobs: list[TensorJob] = []
    checked: set[str] = set()
    per_model_keys = {
        p.name for name in schema.strategies() for p in registry.get(name).per_model_params()
    }
    for info in infos:
        if not info.is_float:
            jobs.append(TensorJob(info, None, {}, (), b""))
            continue
        rule = schema.rule_for(info.name)
        strategy = registry.get(rule.strategy)
        if strategy.name not in checked:
            _check_strategy_inputs(strategy, inputs, has_base, info.name, final)
            checked.add(strategy.name)
        pos = schema.position(info.name, layers)
        where = f"tensor {info.name!r}, strategy {strategy.name!r}"
        params = resolve_params(rule.params, info.name, pos, where)
        own = {p.name for p in strategy.per_model_params()}
        per = [
            {
                key: value
                for key, value in resolve_params(
                    i.params, info.name, pos, f"{where}, {i.label}"
                ).items()
                if key in own or key not in per_model_keys  # another rule's per-model param
            }
            for i in inputs
        ]
        try:
            gp, mp = strategy.validate(params, per)
        except StrategyParamError as err:
            raise StrategyParamError(f"tensor {info.name!r}: {err}") from None
        jobs.append(
            TensorJob(info, strategy, gp, mp, canonical_params(gp, mp), in_dtypes[info.name])
        )
    return jobs


def _check_strategy_inputs(
    strategy: Strategy, inputs: Sequence[_Input], has_base: bool, name: str, final: bool
) -> None:
    """Base, input count and extras a strategy needs; the max count only after dedupe."""
    k = len(inputs)
    if strategy.needs_base and not has_base:
        raise StrategyParamError(
            f"strategy {strategy.name!r} (tensor {name!r}) needs a base model (--base)"
        )
    if k < strategy.min_inputs:
        raise StrategyParamError(
            f"strategy {strategy.name!r} (tensor {name!r}) needs at least "
            f"{strategy.min_inputs} distinct inputs, got {k}"
        )
    if final and strategy.max_inputs is not None and k > strategy.max_inputs:
        raise StrategyParamError(
            f"strategy {strategy.name!r} (tensor {name!r}) takes at most "
            f"{strategy.max_inputs} distinct inputs, got {k}"
        )
    for key in strategy.needs_extras:
        for inp in inputs:
            if key not in inp.extras:
                raise StrategyParamError(
                    f"strategy {strategy.name!r} needs extra {key!r} for every input; "
                    f"{inp.label} has none"
                )


def _dry_run(plan: MergePlan, limit: int = 64, most: int = 1 << 20) -> None:
    """Merge, and discard, the smallest real tensor of each distinct (strategy, params).

    Surfaces what only the strategy can judge (weights summing to zero, a parameter that
    needs more inputs, a missing extra), and NaN or Inf in those tensors, before the first
    tensor is written. Only those errors count here; anything else is left for the real run.
    """
    smallest: dict[tuple[str, bytes], TensorJob] = {}
    for job in plan.jobs:
        if job.strategy is None or job.info.numel > most:
            continue
        key = (job.strategy.name, job.params_bytes)
        seen = smallest.get(key)
        if seen is None or job.info.numel < seen.info.numel:
            smallest[key] = job
    if not smallest:
        return
    jobs = [smallest[key] for key in sorted(smallest)[:limit]]
    buf = _Buffers(plan, jobs, None)
    for job in jobs:
        try:
            _merge_block(plan, job, buf, None)
        except StrategyError as err:
            raise type(err)(f"tensor {job.info.name!r}: {err}") from None
        except NonFiniteTensorError:
            raise
        except Exception:  # only typed parameter errors are reported early
            continue


def build_plan(
    schema: ModelMergeSchema,
    items: Sequence[CheckpointLike | Contribution],
    base_spec: CheckpointLike | None,
    *,
    dtype: str | torch.dtype | None = None,
    device: torch.device | None = None,
) -> MergePlan:
    """Open, validate, hash and dedupe; the returned plan merges without further checks."""
    if not items:
        raise MergeError("no inputs to merge")
    out_dtype = parse_dtype(dtype) if dtype is not None else None
    inputs, opened = _open_inputs(items)
    try:
        base = None if base_spec is None else open_checkpoint(base_spec, _label(base_spec, "base"))
        if base is not None:
            opened.append(base)
        infos = _check_tensors(inputs, base, out_dtype)
        _check_param_keys(schema, inputs)
        checked = _jobs(schema, infos, inputs, base, False)  # params checked before hashing
        given = base  # side files (config, tokenizer) still come from the base given
        if base is not None and not any(_reads_base(j) for j in checked):
            base = None  # checked, but neither hashed nor named: the result does not read it
        hashed = [i.source for i in inputs] + [
            inp.extras[k] for inp in inputs for k in sorted(inp.extras)
        ]
        if base is not None:
            hashed.append(base)
        samplers = _samplers(hashed, len(inputs), base is not None, checked)
        ids = _content_ids(hashed, {key: s.visit for key, s in samplers.items()})
        pos = 0
        for inp in inputs:
            inp.content_id = ids[pos]
            pos += 1
        for inp in inputs:
            for key in sorted(inp.extras):
                inp.extra_ids[key] = ids[pos]
                pos += 1
        base_id = ids[pos] if base is not None else None
        unique = _dedupe(inputs)
        jobs = _jobs(schema, infos, unique, base, True)
        digest = input_set_digest(i.content_id for i in unique)
        root = given.root if given is not None else unique[0].source.root
        plan = MergePlan(
            unique,
            base,
            jobs,
            digest,
            base_id,
            _metadata(schema, unique, digest, base_id, out_dtype),
            side_files_of(root),
            device or torch.device("cpu"),
            opened,
            {(id(hashed[i]), name): s for (i, name), s in samplers.items() if s.complete},
        )
        _dry_run(plan)
        return plan
    except BaseException:
        for s in opened:
            s.close()
        raise


def _reads_base(job: TensorJob) -> bool:
    """Whether merging `job` reads the base: a copied tensor, or a strategy that uses it."""
    return job.strategy is None or job.strategy.uses_base


def _content_ids(
    sources: Sequence[TensorSource],
    visits: Mapping[tuple[int, str], PieceVisitor] | None = None,
) -> list[bytes]:
    """Content ids, hashing in parallel; a source may carry its own `precomputed_id`.
    `visits[(source index, name)]` sees the tensor's bytes as they are hashed."""
    known = [getattr(s, "precomputed_id", None) for s in sources]
    todo = [i for i, k in enumerate(known) if k is None]
    at = {i: j for j, i in enumerate(todo)}
    shown = {(at[i], name): v for (i, name), v in (visits or {}).items() if i in at}
    workers = max(1, min(os.cpu_count() or 1, MAX_HASH_THREADS))
    with ThreadPoolExecutor(workers, thread_name_prefix="crdtd-hash") as pool:
        fresh = iter(content_ids([sources[i] for i in todo], pool, shown))
    return [k if k is not None else next(fresh) for k in known]


def _samplers(
    hashed: Sequence[TensorSource], k: int, with_base: bool, jobs: Sequence[TensorJob]
) -> dict[tuple[int, str], PieceSampler]:
    """Samplers for the tensors whose strategy's `prepare` samples (TIES): every input's
    (sources 0..k-1 of `hashed`) and the base's (the last, `with_base`; extras sit between)."""
    if not with_base:
        return {}  # (the prepares that sample read a base: without one they read late)
    out = {}
    for job in jobs:
        s = job.strategy
        if s is None or not s.prepare_samples or block_bounds(job, CHUNK_ELEMENTS) is None:
            continue
        name, n = job.info.name, job.info.numel
        for i in [*range(k), len(hashed) - 1]:
            dtype = hashed[i].infos[name].torch_dtype
            out[(i, name)] = PieceSampler(n, sample_stride(n), dtype)
    return out


def _metadata(
    schema: ModelMergeSchema,
    inputs: Sequence[_Input],
    digest: bytes,
    base_id: bytes | None,
    dtype: torch.dtype | None,
) -> dict[str, str]:
    """Output metadata: a function of the input set and config only (no paths, no clock)."""
    config = {
        "schema": schema.to_config(),
        "model_params": [_plain(i.params) for i in inputs],
        "dtype": None if dtype is None else st_dtype(dtype),
    }
    return {
        "format": "pt",
        "crdtd.format": FORMAT_VERSION,
        "crdtd.input_set_digest": digest.hex(),
        "crdtd.inputs": json.dumps([i.content_id.hex() for i in inputs]),
        "crdtd.base": "" if base_id is None else base_id.hex(),
        "crdtd.strategy": json.dumps(config, sort_keys=True, separators=(",", ":")),
    }


# -- execution --------------------------------------------------------------------------------


CHUNK_ELEMENTS = 1 << 20  # per-input entries in one flat block (a multiple of BLOCK_ALIGN)
LOAD_SLICE = 1 << 22  # entries read from a file per positioned read
MAX_WORKERS = 8  # block-merging threads (at most one per core)


def block_bounds(job: TensorJob, chunk: int | None) -> tuple[tuple[int, int], ...] | None:
    """Flat `[start, stop)` blocks of `chunk` entries when `job` may be merged blockwise.

    Only strategies that declare it (`Strategy.blockwise`: elementwise, or two-phase with a
    `prepare`) are split, and only tensors larger than one block; for them blocks give the
    same bytes as the whole tensor, with (k + 2) blocks of memory instead of (k + 2) tensors.
    """
    s = job.strategy
    n = job.info.numel
    if chunk is None or s is None or not s.blockwise or n <= chunk:
        return None
    step = max(1, chunk)
    return tuple((a, min(n, a + step)) for a in range(0, n, step))


def _block_numel(job: TensorJob, chunk: int | None) -> int:
    bounds = block_bounds(job, chunk)
    return job.info.numel if bounds is None else bounds[0][1] - bounds[0][0]


class _Buffers:
    """Reused buffers: the float32 input stack and base, and a raw staging area for reads."""

    def __init__(self, plan: MergePlan, jobs: Iterable[TensorJob], chunk: int | None) -> None:
        merged = [j for j in jobs if j.strategy is not None]
        biggest = max((_block_numel(j, chunk) for j in merged), default=0)
        item = max((j.input_dtype.itemsize for j in merged), default=1)
        k = len(plan.inputs)
        dev = plan.device
        self.stack = torch.empty(k * biggest, dtype=torch.float32, device=dev)
        size = biggest if plan.base is not None else 0
        self.base = torch.empty(size, dtype=torch.float32, device=dev)
        # TensorMerge.out, for the blockwise strategies (the ones that write into it); the
        # rest merge whole tensors, where one more float32 copy would only raise the peak
        blockwise = [_block_numel(j, chunk) for j in merged if j.strategy and j.strategy.blockwise]
        self.out = torch.empty(max(blockwise, default=0), dtype=torch.float32, device=dev)
        self.staging = torch.empty(min(biggest, LOAD_SLICE) * item, dtype=torch.uint8)
        self.staging_view = self.staging.numpy().data
        self._raw = np.empty(0, np.uint16)

    def raw_rows(self, rows: int, n: int) -> np.ndarray:
        """`[rows, n]` uint16 for `_read_raw`, reused (grown on first need only)."""
        if self._raw.size < rows * n:
            self._raw = np.empty(rows * n, np.uint16)
        return self._raw[: rows * n].reshape(rows, n)


def _load_range(
    dst: torch.Tensor, source: TensorSource, name: str, start: int, stop: int, buf: _Buffers
) -> None:
    """dst (flat float32) ← entries [start, stop) of tensor `name`.

    Files are read with positioned reads into the staging area and converted from there, so
    no file page is mapped into the process and threads may load blocks side by side; other
    sources (in-memory tensors) are copied from their view.
    """
    reader = getattr(source, "read_into", None)
    if reader is None:
        dst.copy_(source.view(name).reshape(-1)[start:stop])
        source.release(name)
        return
    dtype = source.infos[name].torch_dtype
    step = max(1, buf.staging.numel() // dtype.itemsize)
    for a in range(start, stop, step):
        b = min(stop, a + step)
        reader(name, a, b, buf.staging_view)
        dst[a - start : b - start].copy_(buf.staging[: (b - a) * dtype.itemsize].view(dtype))


def require_finite(values: torch.Tensor, name: str, where: str, offset: int = 0) -> None:
    """Refuse NaN and Inf: `NonFiniteTensorError` naming the tensor, the input and the first
    bad flat position. One sum finds them (NaN and Inf propagate); only a non-finite sum,
    which finite values may also give by overflowing, is checked entry by entry."""
    if values.numel() == 0 or bool(torch.isfinite(values.sum())):
        return
    bad = torch.nonzero(~torch.isfinite(values.reshape(-1)))
    if bad.numel():
        pos = offset + int(bad[0])
        value = float(values.reshape(-1)[int(bad[0])])
        raise NonFiniteTensorError(
            f"tensor {name!r} of {where} holds {value} at flat position {pos}; "
            "NaN and Inf are not merged"
        )


def _load(
    plan: MergePlan,
    job: TensorJob,
    buf: _Buffers,
    block: slice | None,
    check: bool = True,
    raw: bool = False,
    kept: KeptBlocks | None = None,
    filled: np.ndarray | None = None,
) -> TensorMerge:
    """The `TensorMerge` of tensor `job`, or of the flat `block` of it, in the reused buffers;
    NaN and Inf refused (`check`; else the caller checks, see `_check_loaded`). With `raw`
    (a block of a `raw_inputs` strategy) bf16 files are only read, into `TensorMerge.raw`:
    its `widen()` fills the float32 buffers and does the check. With `kept`, a `prepare`
    scan reads the block into a slab of it when one is free and holds it there; a merge
    given the rows its scan `filled` takes the bits from them (see `_read_raw`)."""
    name = job.info.name

    def part(t: torch.Tensor) -> torch.Tensor:
        return t if block is None else t.reshape(-1)[block]

    shape = job.info.shape if block is None else (block.stop - block.start,)
    k, n = len(plan.inputs), math.prod(shape)
    stack = buf.stack[: k * n].view(k, *shape)
    start = 0 if block is None else block.start
    base_t = None
    if plan.base is not None and _reads_base(job):
        base_t = buf.base[:n].view(shape)

    rawin: RawInputs | None = None
    widened = False

    def widen() -> None:  # once: a strategy's fallback and the late check may both ask
        nonlocal widened
        if widened:
            return
        widened = True
        if rawin is not None:  # from the bits already read (bf16 → float32 is exact)
            for i in range(k):
                stack[i].reshape(-1).copy_(torch.from_numpy(rawin.x[i]).view(torch.bfloat16))
            if base_t is not None and rawin.base is not None:
                base_t.reshape(-1).copy_(torch.from_numpy(rawin.base).view(torch.bfloat16))
        else:
            for i, inp in enumerate(plan.inputs):
                _load_range(stack[i].reshape(-1), inp.source, name, start, start + n, buf)
            if base_t is not None and plan.base is not None:
                _load_range(base_t.reshape(-1), plan.base, name, start, start + n, buf)
        if check:
            _check_loaded(plan, name, stack, base_t, start)

    if raw and block is not None:
        rawin = _read_raw(plan, job, buf, start, n, widen, kept, filled)
    if rawin is None:
        widen()
    extras: tuple[dict[str, torch.Tensor], ...] = ()
    if any(inp.extras for inp in plan.inputs):
        extras = tuple(
            {
                key: part(src.view(name)).to(plan.device, torch.float32)
                for key, src in sorted(inp.extras.items())
                if name in src.infos
            }
            for inp in plan.inputs
        )
        for inp, ex in zip(plan.inputs, extras):
            for key in sorted(ex):
                require_finite(ex[key], name, f"{inp.label} extra {key!r}", start)
    return TensorMerge(
        name,
        stack,
        base_t,
        job.params,
        job.model_params,
        generator_for(plan.digest, name, job.params_bytes),
        extras,
        0 if block is None else block.start,
        input_dtype=job.input_dtype,
        out=buf.out[:n].view(shape) if buf.out.numel() >= n else None,
        raw=rawin,
    )


def _read_raw(
    plan: MergePlan,
    job: TensorJob,
    buf: _Buffers,
    start: int,
    n: int,
    widen: Callable[[], None],
    kept: KeptBlocks | None = None,
    filled: np.ndarray | None = None,
) -> RawInputs | None:
    """Entries [start, start + n) of every input and the base (if the strategy reads it) as
    bf16 bits, read straight into the reused raw rows; None unless every one is a bf16 file
    tensor and the merge runs on the CPU, where the kernels are (other sources, dtypes and
    devices are widened as usual).

    With `kept` (a `prepare` scan), a block already held there is not read again, and a new
    one is read into a free slab and held for its merge; the merge passes those rows as
    `filled` and its bits come from there, not from the files."""
    if plan.device.type != "cpu":
        return None
    name = job.info.name
    sources = [inp.source for inp in plan.inputs]
    with_base = plan.base is not None and _reads_base(job)
    if with_base and plan.base is not None:
        sources.append(plan.base)
    for src in sources:
        if getattr(src, "read_into", None) is None or src.infos[name].torch_dtype != torch.bfloat16:
            return None
    rows = filled if filled is not None or kept is None else kept.get(name, start)
    if rows is None:
        taken = None if kept is None else kept.take(len(sources), n)
        rows = buf.raw_rows(len(sources), n) if taken is None else taken[1]
        for row, src in zip(rows, sources):
            src.read_into(name, start, start + n, row.data.cast("B"))  # type: ignore[attr-defined]
        if kept is not None and taken is not None:
            kept.keep(name, start, taken)
    return RawInputs(rows[:-1], rows[-1], widen) if with_base else RawInputs(rows, None, widen)


def _check_loaded(
    plan: MergePlan, name: str, stack: torch.Tensor, base: torch.Tensor | None, start: int
) -> None:
    """Refuse NaN and Inf in the loaded inputs and base, naming the first holder."""
    for i, inp in enumerate(plan.inputs):
        require_finite(stack[i], name, inp.label, start)
    if base is not None and plan.base is not None:
        require_finite(base, name, f"the base {plan.base.label}", start)


def _sample(
    plan: MergePlan, job: TensorJob, stride: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flat inputs `[k, ~n/stride]` and base at `sample_positions(n, stride)`: taken while
    the plan hashed them where it could, else read from the maps."""
    name = job.info.name
    holders = [inp.source for inp in plan.inputs]
    if plan.base is not None:
        holders.append(plan.base)
    taken = [plan.samples.get((id(src), name)) for src in holders]
    if all(t is not None and t.stride == stride for t in taken):
        rows = [t.values().to(plan.device) for t in taken if t is not None]
        for src in holders:  # (used once: a sample is 65,536 entries of each input)
            plan.samples.pop((id(src), name), None)
        k = len(plan.inputs)
        return torch.stack(rows[:k]), rows[k] if plan.base is not None else None
    where = torch.from_numpy(sample_positions(job.info.numel, stride))

    def pick(src: TensorSource) -> torch.Tensor:
        out = src.view(name).reshape(-1)[where].to(plan.device, torch.float32)
        src.release(name)
        return out

    x = torch.stack([pick(inp.source) for inp in plan.inputs])
    return x, None if plan.base is None else pick(plan.base)


def _blocks(
    plan: MergePlan,
    job: TensorJob,
    buf: _Buffers,
    bounds: tuple[tuple[int, int], ...],
    pool: _BlockPool | None = None,
) -> TensorBlocks:
    """Tensor `job` as flat blocks loaded on demand, for a strategy's `prepare` pass; with a
    pool, `TensorBlocks.map` runs over the blocks on its threads."""
    name = job.info.name

    def map_blocks(fn: Callable[[TensorMerge], Any]) -> list[Any]:
        assert pool is not None
        raw = job.strategy is not None and job.strategy.raw_inputs

        def load(worker: _Buffers, b: tuple[int, int]) -> Any:
            return fn(_load(plan, job, worker, slice(*b), raw=raw, kept=pool.kept))

        return pool.map(load, bounds)

    return TensorBlocks(
        name,
        job.info.numel,
        len(plan.inputs),
        job.params,
        job.model_params,
        generator_for(plan.digest, name, job.params_bytes),
        bounds,
        plan.base is not None,
        plan.device,
        lambda start, stop: _load(plan, job, buf, slice(start, stop)),
        lambda stride: _sample(plan, job, stride),
        None if pool is None else map_blocks,
    )


def _merge_block(
    plan: MergePlan,
    job: TensorJob,
    buf: _Buffers,
    rows: slice | None,
    state: Any = None,
    kept: KeptBlocks | None = None,
) -> torch.Tensor:
    """Merge tensor `job` (or only the flat block `rows` of it, with the strategy's prepared
    `state`, from its bits in `kept` where its `prepare` scan held them there) and return
    the float32 result on the CPU."""
    held = None if kept is None or rows is None else kept.pop(job.info.name, rows.start)
    try:
        return _merge_loaded(plan, job, buf, rows, state, None if held is None else held[1])
    finally:
        if kept is not None and held is not None:
            kept.free(held[0])


def _merge_loaded(
    plan: MergePlan,
    job: TensorJob,
    buf: _Buffers,
    rows: slice | None,
    state: Any,
    filled: np.ndarray | None,
) -> torch.Tensor:
    """`_merge_block` with the block's rows its scan `filled`, if it kept them."""
    name = job.info.name
    strategy = job.strategy
    assert strategy is not None
    # a strategy whose result is non-finite wherever an input is has its result checked
    # (one pass over 1/k of the data); the inputs only when it is, to name the culprit. A
    # two-phase strategy decides from the values in its `prepare`, so it is checked up
    # front when it prepares inline (a whole tensor); its prepare pass checked its blocks
    late = strategy.propagates_nonfinite and (state is not None or strategy.prepare is None)
    tm = _load(plan, job, buf, rows, check=not late, raw=strategy.raw_inputs, filled=filled)
    shape = tuple(tm.inputs.shape[1:])
    out = strategy.fn(tm if state is None else replace(tm, state=state))
    if late and isinstance(out, torch.Tensor) and not bool(torch.isfinite(out.sum())):
        if tm.raw is not None:
            tm.raw.widen()
        _check_loaded(plan, name, tm.inputs, tm.base, tm.offset)
    for inp in plan.inputs:
        for src in inp.extras.values():
            if name in src.infos:
                src.release(name)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MergeError(
            f"strategy {strategy.name!r} returned {got} for tensor {name!r}, expected {list(shape)}"
        )
    return out.to("cpu")  # the sink casts to the output dtype


def _extras_fit(plan: MergePlan, job: TensorJob) -> bool:
    """Whether every extra tensor for `job` has the tensor's own shape (so rows line up)."""
    name = job.info.name
    return all(
        src.infos[name].shape == job.info.shape
        for inp in plan.inputs
        for src in inp.extras.values()
        if name in src.infos
    )


class _BlockPool:
    """Threads, one per core, that merge the work of many tensors side by side: their blocks,
    whole small tensors, and the scans of a `prepare` (through `TensorBlocks.map`), plus one
    thread that runs the `prepare` passes ahead; each thread keeps its own buffers.

    Every thread runs torch with one intra-op thread (the work units are the parallelism, and
    idle OpenMP teams would spin on the cores the units need); `execute` sets the caller's
    thread likewise while it merges, and the setting is restored on close.
    """

    def __init__(self, plan: MergePlan, jobs: Sequence[TensorJob], chunk: int | None) -> None:
        self.plan, self.chunk = plan, chunk
        self.jobs = [j for j in jobs if _on_pool(j, chunk)]
        cores = os.cpu_count() or 1
        self.workers = 1 if plan.device.type != "cpu" else max(1, min(cores, MAX_WORKERS))
        self._local = threading.local()
        self._threads = torch.get_num_threads()
        self._pool: PriorityWorkers | None = None
        self._prepare: ThreadPoolExecutor | None = None
        self.kept = _kept_blocks(plan, self.jobs, chunk)
        if self.workers > 1 and self.jobs:
            torch.set_num_threads(1)
            # one more thread than cores: reads and writes stall on page allocation (a fresh
            # page of the output costs far more than its copy in a VM), and a third unit in
            # flight fills those stalls (bench_model_merge: linear 5.3 s with two threads,
            # 4.6 s with three, on 2 cores); a `prepare`'s scan blocks go first (`map`)
            self._pool = PriorityWorkers(
                self.workers + 1, "crdtd-merge", functools.partial(torch.set_num_threads, 1)
            )
            # `prepare` passes run one at a time on a thread of their own, ahead of the
            # blocks, so their serial parts overlap the blocks of the tensors before them
            self._prepare = ThreadPoolExecutor(
                1,
                thread_name_prefix="crdtd-prepare",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def buffers(self) -> _Buffers:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = _Buffers(self.plan, self.jobs, self.chunk)
        return buf

    def _call(self, fn: Callable[[_Buffers, Any], Any], item: Any) -> Any:
        return fn(self.buffers(), item)

    def submit(
        self, fn: Callable[[_Buffers, Any], Any], item: Any, urgent: bool = False
    ) -> Future[Any]:
        """fn(buffers, item) on one of the threads (`urgent`: before every waiting unit that
        is not), or here at once without threads."""
        if self._pool is not None:
            return self._pool.submit(self._call, fn, item, urgent=urgent)
        done: Future[Any] = Future()
        try:
            done.set_result(fn(self.buffers(), item))
        except BaseException as err:  # handed to the caller through the future
            done.set_exception(err)
        return done

    def map(self, fn: Callable[[_Buffers, Any], Any], items: Sequence[Any]) -> list[Any]:
        """[fn(buffers, item) for each item], run side by side ahead of the merge units
        waiting (a `prepare` scan: the blocks of its tensor wait for it); the first error
        (in order)."""
        futures = [self.submit(fn, item, urgent=True) for item in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()
            wait(futures)

    def prepare(self, fn: Callable[[_Buffers], Any]) -> Future[Any]:
        """fn(buffers) on the prepare thread (with buffers of its own), or here at once."""
        done: Future[Any]
        if self._prepare is not None:
            return self._prepare.submit(lambda: fn(self.buffers()))
        done = Future()
        try:
            done.set_result(fn(self.buffers()))
        except BaseException as err:  # handed to the caller through the future
            done.set_exception(err)
        return done

    def whole(self, fn: Callable[[], Any]) -> Any:
        """fn() on this thread with every intra-op thread (a large tensor merged whole)."""
        if self._pool is None:
            return fn()
        torch.set_num_threads(self._threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._prepare is not None:
            self._prepare.shutdown(wait=True, cancel_futures=True)
        if self.kept is not None:
            self.kept.close()
        if self._pool is not None:
            torch.set_num_threads(self._threads)


def _kept_blocks(
    plan: MergePlan, jobs: Sequence[TensorJob], chunk: int | None
) -> KeptBlocks | None:
    """An arena for the blocks that `prepare` scans read, when some job is two-phase over
    blocks of bf16 bits on the CPU (its merge pass then takes them from there)."""
    budget = kept_blocks.KEPT_BYTES
    if chunk is None or plan.device.type != "cpu" or budget <= 0:
        return None
    for job in jobs:
        s = job.strategy
        if s is None or s.prepare is None or not s.raw_inputs:
            continue
        if block_bounds(job, chunk) is not None and job.input_dtype == torch.bfloat16:
            return KeptBlocks(len(plan.inputs) + (plan.base is not None), chunk, budget)
    return None


def _on_pool(job: TensorJob, chunk: int | None) -> bool:
    """Whether `job` runs on the pool's threads: in blocks, or whole when it is small."""
    if chunk is None:
        return False
    return block_bounds(job, chunk) is not None or job.info.numel <= chunk


class _Pipeline:
    """Work units of consecutive tensors in flight on the pool, at most `window` at once;
    results are taken in submission order, so the first error raised is the first in
    tensor order whatever the threads' timing."""

    def __init__(self, pool: _BlockPool, bar: tqdm) -> None:
        self.pool, self.bar = pool, bar
        self.window = 4 * pool.workers
        self._pending: deque[tuple[Future[Any], int]] = deque()

    def submit(self, fn: Callable[[_Buffers, Any], Any], item: Any, nbytes: int) -> None:
        self._pending.append((self.pool.submit(fn, item), nbytes))
        while len(self._pending) > self.window:
            self._next()

    def _next(self) -> None:
        fut, nbytes = self._pending.popleft()
        fut.result()
        self.bar.update(nbytes)

    def drain(self) -> None:
        """Wait for every unit in flight; raises the first error in submission order."""
        while self._pending:
            self._next()

    def cancel(self) -> None:
        futures = [f for f, _ in self._pending]
        self._pending.clear()
        for f in futures:
            f.cancel()
        wait(futures)


def execute(
    plan: MergePlan,
    sink: _Sink,
    jobs: Sequence[TensorJob] | None = None,
    *,
    progress: bool = False,
    chunk: int | Literal["auto"] | None = "auto",
) -> None:
    """Merge every tensor of `plan`, in `jobs` order, into `sink`.

    With `chunk` (`"auto"`: `CHUNK_ELEMENTS`), blockwise strategies run over flat blocks of
    `chunk` entries per input (after their `prepare` pass over the same blocks, if any), and
    they and every tensor of at most `chunk` entries are merged side by side on every core,
    several tensors in flight at once; the sink receives each through `put_block`. Larger
    tensors of other strategies are merged whole, one at a time, with every intra-op thread.
    """
    if chunk == "auto":
        chunk = CHUNK_ELEMENTS
    ordered = list(plan.jobs if jobs is None else jobs)
    buf = _Buffers(plan, ordered, chunk)
    total = sum(j.info.nbytes for j in ordered)
    pool = _BlockPool(plan, ordered, chunk)
    collecting = gc.isenabled()
    gc.disable()  # the merge allocates no reference cycles; collections only cost time
    try:
        with tqdm(
            total=total, unit="B", unit_scale=True, desc="merge", disable=not progress, leave=False
        ) as bar:
            line = _Pipeline(pool, bar)
            states = _Prepared(plan, ordered, pool, chunk)
            try:
                for i, job in enumerate(ordered):
                    states.ahead(i)
                    _execute_job(plan, sink, job, buf, pool, chunk, line, states.pop(i))
                line.drain()
            except BaseException:
                line.cancel()
                raise
    finally:
        pool.close()
        if collecting:
            gc.enable()


class _Prepared:
    """The `prepare` passes of the two-phase jobs, started `LOOKAHEAD` jobs ahead."""

    def __init__(
        self, plan: MergePlan, jobs: Sequence[TensorJob], pool: _BlockPool, chunk: int | None
    ) -> None:
        self.plan, self.jobs, self.pool = plan, jobs, pool
        self.bounds = [block_bounds(j, chunk) if _extras_fit(plan, j) else None for j in jobs]
        self.todo = deque(
            i
            for i, (j, b) in enumerate(zip(jobs, self.bounds))
            if b is not None and j.strategy is not None and j.strategy.prepare is not None
        )
        self.started: dict[int, Future[Any]] = {}

    def ahead(self, at: int) -> None:
        """Start the prepares of the next `LOOKAHEAD` two-phase jobs from job `at` on."""
        while self.todo and len(self.started) < LOOKAHEAD:
            i = self.todo.popleft()
            bounds = self.bounds[i]
            assert bounds is not None
            run = functools.partial(_run_prepare, self.plan, self.jobs[i], bounds, self.pool)
            self.started[i] = self.pool.prepare(run)

    def pop(self, i: int) -> Future[Any] | None:
        return self.started.pop(i, None)


LOOKAHEAD = 2  # two-phase jobs whose `prepare` may run ahead of the blocks


def _run_prepare(
    plan: MergePlan,
    job: TensorJob,
    bounds: tuple[tuple[int, int], ...],
    pool: _BlockPool,
    own: _Buffers,
) -> Any:
    """The strategy's `prepare` over job's blocks, loaded into the prepare thread's buffers."""
    assert job.strategy is not None and job.strategy.prepare is not None
    return job.strategy.prepare(_blocks(plan, job, own, bounds, pool))


def _execute_job(
    plan: MergePlan,
    sink: _Sink,
    job: TensorJob,
    buf: _Buffers,
    pool: _BlockPool,
    chunk: int | None,
    line: _Pipeline,
    prepared: Future[Any] | None = None,
) -> None:
    name = job.info.name
    bounds = block_bounds(job, chunk) if _extras_fit(plan, job) else None
    nbytes = job.info.nbytes
    if job.strategy is None:
        src = plan.base if plan.base is not None else plan.inputs[0].source

        def copy(worker: _Buffers, _: None) -> None:
            sink.put_block(name, 0, src.view(name))
            src.release(name)

        line.submit(copy, None, nbytes)
    elif job.info.numel == 0:  # nothing to merge; strategies need not handle it
        line.submit(
            lambda _w, _i: sink.put_block(name, 0, torch.empty(0, dtype=torch.float32)),
            None,
            nbytes,
        )
    elif bounds is None and _on_pool(job, chunk):
        line.submit(
            lambda worker, _: sink.put_block(name, 0, _merge_block(plan, job, worker, None)),
            None,
            nbytes,
        )
    elif bounds is None:
        line.drain()
        sink.put(name, pool.whole(lambda: _merge_block(plan, job, buf, None)))
        line.bar.update(nbytes)
    else:
        state = None
        if prepared is not None:
            try:
                state = prepared.result()
            except BaseException:
                line.drain()  # an error of an earlier tensor comes first
                raise

        def merge(worker: _Buffers, bound: tuple[int, int]) -> None:
            rows = slice(*bound)
            if state is None:
                out = _merge_block(plan, job, worker, rows)
            else:
                out = _merge_block(plan, job, worker, rows, state, pool.kept)
            sink.put_block(name, bound[0], out)

        for bound in bounds:
            line.submit(merge, bound, nbytes * (bound[1] - bound[0]) // job.info.numel)
