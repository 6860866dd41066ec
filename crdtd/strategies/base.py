"""The strategy contract: one pure function per merge method, over one tensor name at a time.

A strategy never does I/O and never touches global RNG state. It receives a `TensorMerge`
(the stacked contributions sorted by content id, the optional base, validated parameters and
a generator seeded from the content) and returns one float32 tensor of the input shape.

Blockwise strategies may also be run over consecutive flat blocks of a tensor, so a merge
needs memory for one block rather than one tensor: `elementwise` ones directly, two-phase
ones after a `prepare` pass that streams over the blocks once (`TensorBlocks`) and returns
the whole-tensor state (thresholds, generator positions) each block's call then reads from
`TensorMerge.state`. Either way the bytes equal those of one whole-tensor call.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np
import torch

from crdtd.errors import StrategyParamError, echo


@dataclass(frozen=True)
class Param:
    """One declared parameter: name, type, default and allowed range.

    `per_model=True` marks parameters given per contribution (mergekit's `weight`,
    `density`); the others are global (`lambda`, `t`, `normalize`, ...).
    """

    name: str
    kind: type  # float, int, bool or str
    default: Any
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    per_model: bool = False

    def coerce(self, value: Any, where: str) -> Any:
        """Return `value` converted to this parameter's type, or raise naming the key."""
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("1", "true", "yes", "on"):
                        return True
                    if low in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(value)
                if isinstance(value, bool | int):
                    return bool(value)
                raise ValueError(value)
            if self.kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out: Any = float(value)
                if not math.isfinite(out):
                    raise ValueError(value)
            elif self.kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out = int(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise StrategyParamError(
                f"{where}: parameter {self.name!r} must be {self.kind.__name__}, got {echo(value)}"
            ) from None
        if self.minimum is not None and out < self.minimum:
            raise StrategyParamError(
                f"{where}: parameter {self.name!r}={out} is below {self.minimum}"
            )
        if self.maximum is not None and out > self.maximum:
            raise StrategyParamError(
                f"{where}: parameter {self.name!r}={out} is above {self.maximum}"
            )
        if self.choices is not None and out not in self.choices:
            raise StrategyParamError(
                f"{where}: parameter {self.name!r}={echo(out)} is not one of {list(self.choices)}"
            )
        return out


@dataclass(frozen=True)
class RawInputs:
    """A block's inputs and base as read, bf16 bits (uint16 numpy `[k, n]` and `[n]`, None
    without a base), not yet widened into `TensorMerge.inputs`/`base`: the engine hands them
    to strategies that declare `raw_inputs`, whose kernels widen them tile by tile. Code
    that needs the float32 tensors calls `widen()` first, which fills them (and refuses
    NaN/Inf where the engine was to check them)."""

    x: np.ndarray
    base: np.ndarray | None
    widen: Callable[[], None]


@dataclass(frozen=True)
class TensorMerge:
    """Everything a strategy may look at for one tensor name.

    `inputs` is `[k, *shape]` float32 with rows sorted by contribution content id; `base` is
    `[*shape]` float32 or None. `model_params[i]` and `extras[i]` belong to row i: extras hold
    auxiliary tensors supplied for this tensor name (e.g. `fisher`, `gram`).

    A block of a blockwise merge holds flat `[k, m]` inputs and `[m]` base starting at flat
    position `offset` of the whole tensor, and, for two-phase strategies, the `state` their
    `prepare` returned; a whole-tensor call has `offset` 0 and `state` None. `out`, when set,
    is float32 scratch of the result's shape that the engine owns: a strategy may write its
    result there and return it (no fresh allocation per block); the engine consumes it before
    the next call.
    """

    name: str
    inputs: torch.Tensor
    base: torch.Tensor | None
    params: Mapping[str, Any]
    model_params: tuple[Mapping[str, Any], ...]
    generator: torch.Generator
    extras: tuple[Mapping[str, torch.Tensor], ...] = ()
    offset: int = 0
    state: Any = None
    input_dtype: torch.dtype = torch.float32
    out: torch.Tensor | None = None
    raw: RawInputs | None = None

    @property
    def k(self) -> int:
        """Number of contributions."""
        return int(self.inputs.shape[0])

    def model_param(self, key: str) -> torch.Tensor:
        """Per-model parameter `key` as a float64 vector of length k."""
        return torch.tensor([float(mp[key]) for mp in self.model_params], dtype=torch.float64)

    def extra(self, i: int, key: str) -> torch.Tensor | None:
        """Auxiliary tensor `key` of contribution i, or None when not supplied."""
        if i >= len(self.extras):
            return None
        return self.extras[i].get(key)

    def task_vectors(self) -> torch.Tensor:
        """Inputs minus the base (`[k, *shape]`); the inputs themselves when no base."""
        if self.base is None:
            return self.inputs
        return self.inputs - self.base.unsqueeze(0)


StrategyFn = Callable[[TensorMerge], torch.Tensor]

BLOCK_ALIGN = 1 << 18
"""Block starts are multiples of this many entries, so per-chunk reductions a strategy runs
on that grid (L1 norms, say) see the same chunks whole or in blocks."""


@dataclass(frozen=True)
class TensorBlocks:
    """One tensor name as consecutive flat blocks, streamed by a strategy's `prepare`.

    `bounds` are the blocks' `[start, stop)` in the flattened tensor, in order, each start a
    multiple of `BLOCK_ALIGN` (except in tests that ask for tiny blocks). `load(start, stop)`
    gives that block as a `TensorMerge` (valid only until the next load); `map(fn)` runs a
    pure per-block function over all blocks (in parallel in the engine); `sample(stride)`
    gives the flat inputs `[k, ~n/stride]` and base at positions spread evenly over the
    tensor (every stride-th here, short runs of them in the engine) without loading blocks.
    """

    name: str
    numel: int
    k: int
    params: Mapping[str, Any]
    model_params: tuple[Mapping[str, Any], ...]
    generator: torch.Generator
    bounds: tuple[tuple[int, int], ...]
    has_base: bool
    device: torch.device
    load: Callable[[int, int], TensorMerge]
    sample: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]
    map_blocks: Callable[[Callable[[TensorMerge], Any]], list[Any]] | None = None

    def blocks(self) -> Iterator[TensorMerge]:
        """Each block in order (a block is invalid once the next one is drawn)."""
        for start, stop in self.bounds:
            yield self.load(start, stop)

    def map(self, fn: Callable[[TensorMerge], Any]) -> list[Any]:
        """[fn(block) for each block], in block order; the engine may run the calls side by
        side on several threads, so `fn` must be pure and return nothing that aliases the
        block (its buffers are reused)."""
        if self.map_blocks is not None:
            return self.map_blocks(fn)
        return [fn(block) for block in self.blocks()]

    @classmethod
    def of(cls, tm: TensorMerge, block: int | None = None) -> TensorBlocks:
        """`tm`, an in-memory whole tensor, as flat blocks of `block` entries (None: one)."""
        n = tm.inputs[0].numel() if tm.k else 0
        flat_x = tm.inputs.reshape(tm.k, -1)
        flat_b = None if tm.base is None else tm.base.reshape(-1)
        step = max(1, n if block is None else block)

        def load(start: int, stop: int) -> TensorMerge:
            extras = tuple(
                {
                    key: t.reshape(-1)[start:stop] if t.numel() == n else t
                    for key, t in sorted(ex.items())
                }
                for ex in tm.extras
            )
            return replace(
                tm,
                inputs=flat_x[:, start:stop],
                base=None if flat_b is None else flat_b[start:stop],
                extras=extras,
                offset=start,
                state=None,
            )

        def sample(stride: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            return flat_x[:, ::stride], None if flat_b is None else flat_b[::stride]

        return cls(
            tm.name,
            n,
            tm.k,
            tm.params,
            tm.model_params,
            tm.generator,
            tuple((s, min(n, s + step)) for s in range(0, n, step)),
            tm.base is not None,
            tm.inputs.device,
            load,
            sample,
        )


PrepareFn = Callable[[TensorBlocks], Any]


@dataclass(frozen=True)
class Strategy:
    """A registered merge method with its declared parameters and documentation."""

    name: str
    fn: StrategyFn
    params: tuple[Param, ...] = ()
    family: str = "standard"
    paper: str = ""
    formula: str = ""
    needs_base: bool = False
    min_inputs: int = 1
    max_inputs: int | None = None
    stochastic: bool = False
    needs_extras: tuple[str, ...] = ()
    summary: str = field(default="")
    elementwise: bool = False
    prepare: PrepareFn | None = None
    uses_base: bool = True
    propagates_nonfinite: bool = False
    chunk_seeded: bool = False
    raw_inputs: bool = False
    prepare_samples: bool = False

    @property
    def blockwise(self) -> bool:
        """Whether `fn` may run block by block (see `run_blocks`) with the same bytes.

        True for two-phase strategies (`prepare` set) and for `elementwise` ones, whose
        output entry j depends on entry j of the inputs, base and extras alone, when they are
        deterministic or draw every random number from a `chunk_seed` (`chunk_seeded`).
        """
        return self.prepare is not None or (
            self.elementwise and (not self.stochastic or self.chunk_seeded)
        )

    def global_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.per_model)

    def per_model_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.per_model)

    def validate(
        self, params: Mapping[str, Any], model_params: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
        """Fill defaults and type-check; raise `StrategyParamError` naming the bad key.

        A per-model parameter given globally becomes every model's default (mergekit's
        behaviour); unknown keys are rejected.
        """
        by_name = {p.name: p for p in self.params}
        for key in sorted(params):
            if key not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise StrategyParamError(
                    f"strategy {self.name!r}: unknown parameter {echo(key)} (known: {known})"
                )
        out: dict[str, Any] = {}
        for p in self.global_params():
            out[p.name] = p.coerce(params.get(p.name, p.default), f"strategy {self.name!r}")
        per: list[dict[str, Any]] = []
        for i, mp in enumerate(model_params):
            row: dict[str, Any] = {}
            for key in sorted(mp):
                if key not in by_name or not by_name[key].per_model:
                    raise StrategyParamError(
                        f"strategy {self.name!r}, model {i}: unknown per-model parameter {echo(key)}"
                    )
            for p in self.per_model_params():
                value = mp.get(p.name, params.get(p.name, p.default))
                row[p.name] = p.coerce(value, f"strategy {self.name!r}, model {i}")
            per.append(row)
        return out, tuple(per)


def run_blocks(strategy: Strategy, blocks: TensorBlocks) -> Iterator[torch.Tensor]:
    """The blockwise merge: `prepare` once over all blocks, then `fn` on each block in order.

    Yields each block's flat float32 result; concatenated they equal
    `strategy.fn(whole tensor)` byte for byte.
    """
    state = strategy.prepare(blocks) if strategy.prepare is not None else None
    for block in blocks.blocks():
        yield strategy.fn(block if state is None else replace(block, state=state)).reshape(-1)


def canonical_params(params: Mapping[str, Any], model_params: Sequence[Mapping[str, Any]]) -> bytes:
    """Deterministic bytes for a parameter set (sorted keys; floats by their exact repr)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float):
            return ["f", v.hex()]
        if isinstance(v, Mapping):
            return [[str(k), norm(v[k])] for k in sorted(v)]
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        return v

    return msgpack.packb([norm(dict(params)), [norm(dict(m)) for m in model_params]])


def seed_for(input_digest: bytes, tensor_name: str, params_bytes: bytes) -> int:
    """Seed = first 8 bytes of sha256(input-set digest ‖ tensor name ‖ params), as int63."""
    h = hashlib.sha256()
    h.update(input_digest)
    h.update(b"\x00")
    h.update(tensor_name.encode())
    h.update(b"\x00")
    h.update(params_bytes)
    return int.from_bytes(h.digest()[:8], "big") & ((1 << 63) - 1)


def generator_for(input_digest: bytes, tensor_name: str, params_bytes: bytes) -> torch.Generator:
    """A CPU `torch.Generator` seeded from content, never from global state."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed_for(input_digest, tensor_name, params_bytes))
    return g


def chunk_seed(generator: torch.Generator, model: int, chunk: int) -> int:
    """The seed of model `model`'s draws in flat chunk `chunk` (entries
    [chunk·BLOCK_ALIGN, (chunk+1)·BLOCK_ALIGN)), derived from the tensor's content-seeded
    `generator`: a block draws exactly what the whole tensor draws there, and no pass has to
    run through the draws before it."""
    h = hashlib.sha256()
    h.update(generator.initial_seed().to_bytes(8, "big"))
    h.update(model.to_bytes(4, "big"))
    h.update(chunk.to_bytes(8, "big"))
    return int.from_bytes(h.digest()[:8], "big") & ((1 << 63) - 1)
