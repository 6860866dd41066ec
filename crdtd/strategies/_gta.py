"""Generalised task arithmetic engine shared by task_arithmetic and the TIES/DARE family.

Per-model masks are decided once over whole task vectors (magnitude order statistics need the
whole tensor, streamed block by block from a `TensorBlocks`); the combination then streams
over cache-sized chunks of the flattened tensor, recomputing τ = θ_i − θ_base there, so no
`[k, n]` temporary is ever materialised. Chunks lie on one grid of the *whole* flattened
tensor, so a block of it (`TensorMerge.offset`) is processed exactly as inside the whole.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from crdtd.strategies import _kernels as kernels
from crdtd.strategies._select import bracket, kth_value, sample_stride
from crdtd.strategies.base import BLOCK_ALIGN, TensorBlocks, TensorMerge

CHUNK = BLOCK_ALIGN


@dataclass(frozen=True)
class Keep:
    """What survives of one task vector, and how it is scaled.

    `mask` (bool, flat) keeps its True entries; `threshold` keeps entries with |τ| > threshold
    plus those with |τ| = threshold at flat positions ≥ `tie_from` (ties keep the later
    positions); `draws` keeps, chunk by chunk, the entries its random flags keep; none of
    them keeps all. `scale` is a scalar or a flat per-entry factor applied to the kept
    entries. A flat `mask` or `scale` starts at flat position `origin` of the whole tensor
    (a block's start).
    """

    mask: torch.Tensor | None = None
    scale: torch.Tensor | float = 1.0
    threshold: float | None = None
    tie_from: int | None = None
    origin: int = 0
    draws: Draws | None = None


class Draws:
    """Random keep flags drawn where they are applied, one chunk of the `CHUNK` grid at a
    time, so no flat mask of the whole tensor or block is ever held: `flags(c0, c1)` gives
    the flags of entries [c0, c1) (within one chunk) from the 16-bit words of
    `PCG64(seed(chunk))`'s raw draws (`kernels.pcg64_raw`, numpy's draws)."""

    def __init__(self, seed: Callable[[int], int], below: int) -> None:
        self.seed = seed
        self.below = np.uint16(below)

    def words(self, c0: int, c1: int) -> np.ndarray:
        """The 16-bit words of entries [c0, c1) (within one chunk)."""
        first = c0 // CHUNK * CHUNK  # a block off the grid starts inside a chunk's draws
        raw = kernels.pcg64_raw(self.seed(c0 // CHUNK), (c1 - first + 3) // 4)
        raw = raw.astype("<u8", copy=False)
        return raw.view("<u2")[c0 - first : c1 - first]  # low word first on every machine

    def fill(self, c0: int, c1: int, out: np.ndarray) -> None:
        """out (uint16 `[c1 − c0]`) ← `words(c0, c1)`; drawn straight into `out` where it
        can hold the raw draws (a chunk's start, whole draws, aligned, little-endian)."""
        whole = c0 % CHUNK == 0 and (c1 - c0) % 4 == 0 and sys.byteorder == "little"
        if whole and out.flags.c_contiguous and out.ctypes.data % 8 == 0:
            kernels.pcg64_raw(self.seed(c0 // CHUNK), (c1 - c0) // 4, out.view(np.uint64))
        else:
            out[:] = self.words(c0, c1)

    def flags(self, c0: int, c1: int) -> np.ndarray:
        """Bool flags of entries [c0, c1): the entry's 16-bit word is below `below`."""
        return np.less(self.words(c0, c1), self.below)

    def apply(self, t: torch.Tensor, c0: int, c1: int) -> None:
        """t (entries [c0, c1) of one model's task vector) with the dropped entries zeroed
        (multiplied by 0, so their sign stays)."""
        flags = self.flags(c0, c1)
        if t.device.type == "cpu":
            x = t.numpy()
            np.multiply(x, flags, out=x)
        else:
            t.mul_(torch.from_numpy(flags).to(t.device))


KEEP_ALL = Keep()

Sparsifier = Callable[[TensorMerge, torch.Tensor, int], Keep]


def chunks(n: int, offset: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of the pieces of the global `CHUNK` grid covering range(offset, offset+n)."""
    c0, end = offset, offset + n
    while c0 < end:
        c1 = min(end, (c0 // CHUNK + 1) * CHUNK)
        yield c0, c1
        c0 = c1


def task_vector_chunk(
    tm: TensorMerge, base: torch.Tensor, c0: int, c1: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """τ[:, c0:c1] = θ_i − θ_base over the flattened tensor, as a `[k, c1−c0]` tensor: a fresh
    one, or the leading columns of the reused scratch `out` (`[k, ≥ c1−c0]`)."""
    x = tm.inputs.reshape(tm.k, -1)[:, c0:c1]
    b = base.reshape(-1)[c0:c1]
    if out is None:
        return x - b
    return torch.sub(x, b, out=out[:, : c1 - c0])


_THREAD = threading.local()


def _thread_buffer(key: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU buffer of at least `numel` entries of `dtype` kept per thread under `key`."""
    buf: torch.Tensor | None = getattr(_THREAD, key, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype)
        setattr(_THREAD, key, buf)
    return buf


def scratch_for(k: int, n: int, device: torch.device) -> torch.Tensor:
    """A `[k, min(n, CHUNK)]` float32 scratch for `task_vector_chunk`, reused across chunks.

    On the CPU it is a view of one buffer per thread, kept between calls: a block merge
    would otherwise take fresh pages for it every time. A caller uses it only until it
    returns and never hands it out.
    """
    cols = min(n, CHUNK)
    if device.type != "cpu":
        return torch.empty(k, cols, dtype=torch.float32, device=device)
    return _thread_buffer("scratch", max(k, 4) * CHUNK)[: k * cols].view(k, cols)


def rows_for(count: int, n: int, device: torch.device) -> list[torch.Tensor]:
    """`count` float32 vectors of `min(n, CHUNK)` entries, reused per thread like
    `scratch_for` (and apart from it): the sums of a chunk's combination."""
    cols = min(n, CHUNK)
    if device.type != "cpu":
        return [torch.empty(cols, dtype=torch.float32, device=device) for _ in range(count)]
    buf = _thread_buffer("rows", count * CHUNK)
    return [buf[j * CHUNK : j * CHUNK + cols] for j in range(count)]


def decide_keeps(tm: TensorMerge, base: torch.Tensor, sparsify: Sparsifier | None) -> list[Keep]:
    """Run `sparsify` on each whole task vector (given as a scratch flat float32 tensor)."""
    if sparsify is None:
        return [KEEP_ALL] * tm.k
    flat_base = base.reshape(-1)
    scratch = torch.empty_like(flat_base)
    keeps = []
    for i in range(tm.k):
        torch.sub(tm.inputs[i].reshape(-1), flat_base, out=scratch)
        keeps.append(sparsify(tm, scratch, i))
    return keeps


def top_magnitude_keeps(blocks: TensorBlocks, counts: list[int]) -> list[Keep]:
    """Keep(threshold) per model retaining its `counts[i]` largest |τ_i| (ties: later positions).

    Exact order statistics in one streamed pass over the blocks (`TensorBlocks.map`, so the
    engine scans blocks side by side): a strided sample brackets each threshold, the pass
    counts the entries below the bracket and gathers those inside it with their positions,
    and an order statistic (`kth_value`) of that small set gives the exact value; the
    gathered positions of the entries tied at it give the first kept tie, so no block is
    read again. A model whose bracket missed takes one more pass.
    """
    n = blocks.numel
    keeps: list[Keep] = [KEEP_ALL] * blocks.k
    active = []
    for i, c in enumerate(counts):
        if c <= 0:
            keeps[i] = Keep(torch.zeros(n, dtype=torch.bool, device=blocks.device))
        elif c < n:
            active.append(i)
    if not active:
        return keeps
    stride = sample_stride(n)
    sample_x, sample_b = blocks.sample(stride)
    assert sample_b is not None
    sample = (sample_x - sample_b).abs_()
    bounds = [bracket(sample[i], n - counts[i], n) for i in active]
    scan = _scan_numpy if blocks.device.type == "cpu" else _scan_torch

    def scan_block(block: TensorMerge) -> tuple[list[int], list[_Gathered]]:
        """Chunk starts, and per active model what its scans of the chunks found."""
        base = block.base
        assert base is not None
        off = block.offset
        if _fusable(block.inputs, base):
            return [off], _scan_fused(block, base, active, bounds)
        if block.raw is not None:
            block.raw.widen()
        scratch = scratch_for(block.k, base.numel(), base.device)
        starts: list[int] = []
        found: list[_Gathered] = [_Gathered() for _ in active]
        for c0, c1 in chunks(base.numel(), off):
            starts.append(c0)
            a = task_vector_chunk(block, base, c0 - off, c1 - off, scratch).abs_()
            for j, i in enumerate(active):
                found[j].add(*scan(a[i], *bounds[j]))
        return starts, found

    parts = blocks.map(scan_block)
    starts = [c0 for p in parts for c0 in p[0]]
    gathered = [_Gathered.join([p[1][j] for p in parts]) for j in range(len(active))]
    del parts
    missed = [
        j
        for j, i in enumerate(active)
        if not gathered[j].below < n - counts[i] <= gathered[j].below + gathered[j].size
    ]
    if missed:  # the sample missed: use every entry of those models
        full = _magnitudes(blocks, [active[j] for j in missed])
        sizes = [b - a for a, b in zip(starts, [*starts[1:], n])]
        for j in missed:
            gathered[j] = _Gathered.whole(full[active[j]].split(sizes))
    for j, i in enumerate(active):
        keeps[i] = gathered[j].keep(n, counts[i], starts)
        gathered[j] = _Gathered()
    return keeps


def _scan_fused(
    block: TensorMerge,
    base: torch.Tensor,
    active: list[int],
    bounds: list[tuple[float | None, float | None]],
) -> list[_Gathered]:
    """`scan_block`'s findings from the fused kernel, the whole block as one part."""
    n, m = base.numel(), len(active)
    values = _thread_buffer("scan_values", m * n).numpy()[: m * n].reshape(m, n)
    at = torch.int32 if n < 2**31 else torch.int64  # positions in the block
    where = _thread_buffer(f"scan_where_{at}", m * n, at).numpy()[: m * n].reshape(m, n)
    raw = block.raw
    if raw is not None and raw.base is None:
        raw.widen()
        raw = None
    if raw is not None and raw.base is not None:
        x, b = raw.x, raw.base
    else:
        x, b = block.inputs.reshape(block.k, -1).numpy(), base.reshape(-1).numpy()
    results, finite = kernels.scan_block(x, b, active, bounds, values, where)
    if not finite and raw is not None:
        raw.widen()  # refuses NaN/Inf, naming the input (finite values that overflowed pass)
    found = []
    for below, vals, pos in results:
        part = _Gathered()
        part.add(below, torch.from_numpy(vals), torch.from_numpy(pos))
        found.append(part)
    return found


class _Gathered:
    """One model's scan of a tensor: entries below the bracket (a count), and those inside
    it per chunk, in order, with their positions in the chunk (None: the whole chunk)."""

    def __init__(self) -> None:
        self.below = 0
        self.values: list[torch.Tensor] = []
        self.where: list[torch.Tensor | None] = []

    @property
    def size(self) -> int:
        return sum(int(v.numel()) for v in self.values)

    def add(self, below: int, values: torch.Tensor, where: torch.Tensor | None) -> None:
        self.below += below
        self.values.append(values)
        self.where.append(where)

    @classmethod
    def join(cls, parts: list[_Gathered]) -> _Gathered:
        out = cls()
        for part in parts:
            out.below += part.below
            out.values += part.values
            out.where += part.where
        return out

    @classmethod
    def whole(cls, chunk_values: list[torch.Tensor]) -> _Gathered:
        out = cls()
        out.values = list(chunk_values)
        out.where = [None] * len(out.values)
        return out

    def keep(self, n: int, count: int, starts: list[int]) -> Keep:
        """Keep(threshold) retaining the `count` largest of n entries (ties: later ones)."""
        cand = torch.cat(self.values)
        m = n - count - self.below
        if cand.device.type == "cpu":
            v, at_or_below = kernels.order_stats(cand.numpy(), [m])[0]
            n_le = self.below + at_or_below
        else:
            v = kth_value(cand, m)
            n_le = self.below + int(torch.count_nonzero(cand <= v))
        del cand
        tied_kept = count - (n - n_le)
        tie_from = None
        if tied_kept > 0 and v != 0.0:  # tied zeros add nothing when kept
            tie_from = self._tie_position(v, tied_kept, starts)
        return Keep(threshold=v, tie_from=tie_from)

    def _tie_position(self, v: float, keep: int, starts: list[int]) -> int:
        """Flat position of the first of the last `keep` gathered entries equal to v."""
        ties = [_equal_positions(part, v) for part in self.values]
        need = sum(int(t.numel()) for t in ties) - keep + 1
        c = 0
        while need > ties[c].numel():
            need -= int(ties[c].numel())
            c += 1
        at = int(ties[c][need - 1])
        where = self.where[c]
        return starts[c] + (at if where is None else int(where[at]))


def _equal_positions(a: torch.Tensor, v: float) -> torch.Tensor:
    """Indices of the entries of 1-D `a` equal to v, in order."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(a.numpy() == np.float32(v)))
    return torch.nonzero(a == v).flatten().cpu()


def _magnitudes(blocks: TensorBlocks, models: list[int]) -> dict[int, torch.Tensor]:
    """|τ_i| over the whole flattened tensor for each model in `models` (one streamed pass)."""
    parts: dict[int, list[torch.Tensor]] = {i: [] for i in models}
    for block in blocks.blocks():
        assert block.base is not None
        for i in models:
            parts[i].append((block.inputs[i] - block.base).abs_())
    return {i: torch.cat(parts[i]) for i in models}


Scan = tuple[int, torch.Tensor, torch.Tensor | None]


def _scan_torch(a: torch.Tensor, lo: float | None, hi: float | None) -> Scan:
    """(#entries < lo, the entries in [lo, hi] in order, their positions) of a 1-D chunk."""
    sel = torch.ones_like(a, dtype=torch.bool) if lo is None else a >= lo
    count_below = a.numel() - int(torch.count_nonzero(sel))
    if hi is not None:
        sel &= a <= hi
    where = torch.nonzero(sel).flatten()
    return count_below, a[where], where


def _masks(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two reused per-thread bool arrays of n entries, for `_scan_numpy`."""
    buf = _thread_buffer("masks", 2 * max(n, CHUNK), torch.bool).numpy()
    return buf[:n], buf[n : 2 * n]


def _scan_numpy(a: torch.Tensor, lo: float | None, hi: float | None) -> Scan:
    """`_scan_torch` for CPU tensors through numpy, whose boolean kernels are much faster,
    into reused masks; positions as int32 (a chunk has at most `CHUNK` entries)."""
    x = a.numpy()
    if lo is None and hi is None:
        return 0, torch.from_numpy(x.copy()), None
    sel, other = _masks(x.size)
    count_below = 0
    if lo is not None:
        np.greater_equal(x, np.float32(lo), out=sel)
        count_below = x.size - int(np.count_nonzero(sel))
        if hi is not None:
            np.logical_and(sel, np.less_equal(x, np.float32(hi), out=other), out=sel)
    else:
        np.less_equal(x, np.float32(hi), out=sel)
    where = np.flatnonzero(sel).astype(np.int32)
    return count_below, torch.from_numpy(x[where]), torch.from_numpy(where)


def l1_rescaled(blocks: TensorBlocks, keeps: list[Keep]) -> list[Keep]:
    """`keeps` with scalar scales restoring each task vector's L1 norm after pruning."""
    before = torch.zeros(blocks.k, dtype=torch.float64)
    after = torch.zeros(blocks.k, dtype=torch.float64)
    scratch = scratch_for(blocks.k, blocks.numel, blocks.device)
    for block in blocks.blocks():
        base = block.base
        assert base is not None
        off = block.offset
        for c0, c1 in chunks(base.numel(), off):
            a = task_vector_chunk(block, base, c0 - off, c1 - off, scratch).abs_()
            before += a.sum(dim=1, dtype=torch.float64).cpu()
            for i, keep in enumerate(keeps):
                apply_keep(a[i], keep, c0, c1)
            after += a.sum(dim=1, dtype=torch.float64).cpu()
    out = []
    for i, keep in enumerate(keeps):
        l1_before, l1_after = float(before[i]), float(after[i])
        if keep is KEEP_ALL or l1_before < 1e-8 or l1_after < 1e-8:
            out.append(keep)
        else:
            out.append(Keep(keep.mask, l1_before / l1_after, keep.threshold, keep.tie_from))
    return out


def apply_keep(t: torch.Tensor, keep: Keep, c0: int, c1: int) -> None:
    """Mask and scale in place one model's chunk `t`, entries [c0, c1) of the whole tensor."""
    if keep.threshold is not None:  # zero |τ| ≤ threshold; from `tie_from` on, only < threshold
        cut = t.numel() if keep.tie_from is None else min(t.numel(), max(0, keep.tie_from - c0))
        if cut > 0:
            torch.hardshrink(t[:cut], keep.threshold, out=t[:cut])
        if cut < t.numel():  # |τ| < v ⇔ |τ| ≤ the float32 just below v
            below = float(np.nextafter(np.float32(keep.threshold), np.float32(0.0)))
            torch.hardshrink(t[cut:], below, out=t[cut:])
    if keep.draws is not None:
        keep.draws.apply(t, c0, c1)
    r0, r1 = c0 - keep.origin, c1 - keep.origin
    if keep.mask is not None:
        t.mul_(keep.mask[r0:r1])
    if isinstance(keep.scale, torch.Tensor):
        t.mul_(keep.scale[r0:r1])
    elif keep.scale != 1.0:
        t.mul_(keep.scale)


def rowsum(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over dim 0 of a `[k, c]` tensor as k−1 contiguous adds, in row order (faster than
    sum(0) for small k), into `out` when given."""
    k = t.shape[0]
    if k == 1:
        return t[0].clone() if out is None else out.copy_(t[0])
    out = torch.add(t[0], t[1], out=out)
    for i in range(2, k):
        out += t[i]
    return out


def divisor_rule(weights: torch.Tensor | None) -> tuple[int, float]:
    """How the consensus divisor is kept off zero, as (`kernels` mode, floor): unit weights
    (None) count agreeing models, so 0 (nothing to divide) becomes 1; positive weights move
    only exact zeros, to half the smallest weight; weights of either sign replace 0 by 1."""
    if weights is None:
        return kernels.UNIT, 1.0
    if bool((weights > 0).all()):
        return kernels.POSITIVE, 0.5 * float(weights.min())
    return kernels.ANY, 0.0


def elect_and_mix(
    t: torch.Tensor,
    weights: torch.Tensor | None,
    normalize: bool,
    rows: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """TIES elect + disjoint merge of a weighted chunk `[k, c]` (modifies `t`).

    γ = sgn(Σ_i t_i) (a zero sum counts as +); A = {i : sgn t_i = γ}; returns Σ_A t_i,
    divided by Σ_A w_i (1 where A is empty) when `normalize` (`weights` None means all
    ones). Float ops only, each in place over `t` or the three `[c]` vectors `rows` (fresh
    ones when None), as torch's boolean kernels are several times slower: agreeing
    magnitudes are max(γ·t_i, 0), and γ is sgn(sgn(Σ) + ½).
    """
    c = t.shape[1]
    if rows is None:
        rows = [torch.empty(c, dtype=torch.float32, device=t.device) for _ in range(3)]
    gamma, mixed, divisor = (r[:c] for r in rows)
    rowsum(t, out=gamma).sign_().add_(0.5).sign_()
    t.mul_(gamma).clamp_(min=0.0)
    rowsum(t, out=mixed)
    if normalize:
        t.sign_()
        if weights is not None:
            t.mul_(weights.view(-1, 1))
        rowsum(t, out=divisor)
        mode, floor = divisor_rule(weights)
        if mode == kernels.ANY:
            divisor.masked_fill_(divisor == 0, 1.0)
        else:
            divisor.clamp_(min=floor)
        mixed /= divisor
    return mixed.mul_(gamma)


def combine(
    tm: TensorMerge,
    base: torch.Tensor,
    keeps: list[Keep],
    weights: torch.Tensor,
    *,
    consensus: bool,
    normalize: bool,
    lam: float,
) -> torch.Tensor:
    """θ = θ_base + λ · mix(w_i · keep_i(τ_i)); mix is the disjoint mean or the plain sum.

    Without consensus, `normalize` divides by Σ w_i (skipped when that is ~0). `tm` may be a
    block: `keeps` index the whole tensor, the block starts at `tm.offset`.
    """
    n = base.numel()
    off = tm.offset
    flat_base = base.reshape(-1)
    out = tm.out.reshape(-1) if tm.out is not None else torch.empty_like(flat_base)
    w32 = weights.to(torch.float32).to(base.device)
    unit = bool((weights == 1.0).all())
    total = float(weights.sum())
    divide = normalize and not consensus and abs(total) >= 1e-8
    fused = _fused_keeps(keeps) if _fusable(tm.inputs, base) else None
    raw = tm.raw
    if raw is not None and (fused is None or raw.base is None):
        raw.widen()
        raw = None
    if fused is not None:
        if raw is None or raw.base is None:
            x, b = tm.inputs.reshape(tm.k, -1).numpy(), flat_base.numpy()
        else:
            x, b = raw.x, raw.base
        wmode, wfloor = divisor_rule(None if unit else w32)
        streams = _draw_streams(keeps, n, off)
        kernels.combine_block(
            x,
            b,
            off,
            fused,
            _draw_words(keeps, n, off) if streams is None else _NO_WORDS,
            w32.numpy(),
            streams=streams,
            grid=CHUNK,
            unit=unit,
            consensus=consensus,
            normalize=normalize,
            wmode=wmode,
            wfloor=wfloor,
            divide=divide,
            total=total,
            lam=lam,
            out=out.numpy(),
        )
        return out.reshape(base.shape)
    scratch = scratch_for(tm.k, n, base.device)
    rows = rows_for(3, n, base.device)
    for c0, c1 in chunks(n, off):
        t = task_vector_chunk(tm, base, c0 - off, c1 - off, scratch)
        for i, keep in enumerate(keeps):
            if keep is not KEEP_ALL:
                apply_keep(t[i], keep, c0, c1)
        if not unit:
            t.mul_(w32.view(-1, 1))
        if consensus:
            mixed = elect_and_mix(t, None if unit else w32, normalize, rows)
        else:
            mixed = rowsum(t, out=rows[0][: c1 - c0])
            if divide:
                mixed /= total
        torch.add(flat_base[c0 - off : c1 - off], mixed, alpha=lam, out=out[c0 - off : c1 - off])
    return out.reshape(base.shape)


def _fusable(inputs: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether the fused kernels take these tensors: float32 on the CPU, kernels on."""
    return (
        kernels.enabled()
        and base.device.type == "cpu"
        and base.dtype == torch.float32
        and inputs.dtype == torch.float32
    )


def _fused_keeps(keeps: list[Keep]) -> list[kernels.FusedKeep] | None:
    """`keeps` as the fused kernel's (threshold, tie_from, below, draws_below, scale) per
    model, or None when one holds what only the torch path applies (a flat mask or scale,
    a threshold that is not a float32)."""
    out: list[kernels.FusedKeep] = []
    for keep in keeps:
        if keep.mask is not None or isinstance(keep.scale, torch.Tensor):
            return None
        thr = keep.threshold
        below = None
        if thr is not None:
            if float(np.float32(thr)) != thr:
                return None
            below = float(np.nextafter(np.float32(thr), np.float32(0.0)))
        draws = None if keep.draws is None else int(keep.draws.below)
        scale = None if keep.scale == 1.0 else float(np.float32(keep.scale))
        out.append((thr, keep.tie_from, below, draws, scale))
    return out


_NO_WORDS = np.zeros((1, 1), np.uint16)


def _draw_streams(keeps: list[Keep], n: int, offset: int) -> np.ndarray | None:
    """`[k, chunks, 10]` PCG64 lanes (`kernels.pcg64_lanes`) of each drawing model's
    streams for the `CHUNK`s a block of n entries at `offset` touches, for the kernel to
    draw the words tile by tile; None where it cannot (no model draws, a block off the
    chunk grid, or a big-endian machine, where a draw's words are not low first)."""
    drawing = [i for i, keep in enumerate(keeps) if keep.draws is not None]
    if not drawing or offset % CHUNK or sys.byteorder != "little":
        return None
    first, last = offset // CHUNK, (offset + n - 1) // CHUNK
    streams = np.zeros((len(keeps), last - first + 1, 10), np.uint64)
    for i in drawing:
        draws = keeps[i].draws
        assert draws is not None
        for c in range(first, last + 1):
            kernels.pcg64_lanes(draws.seed(c), streams[i, c - first])
    return streams


def _draw_words(keeps: list[Keep], n: int, offset: int) -> np.ndarray:
    """`[k, n]` 16-bit draw words of a block's entries for the models that draw (a reused
    per-thread buffer; rows of the other models are left as they are)."""
    drawing = [i for i, keep in enumerate(keeps) if keep.draws is not None]
    if not drawing:
        return np.zeros((len(keeps), 1), np.uint16)
    k = len(keeps)
    words = _thread_buffer("words", k * n, torch.int16).numpy().view(np.uint16)[: k * n]
    words = words.reshape(k, n)
    for i in drawing:
        draws = keeps[i].draws
        assert draws is not None
        for c0, c1 in chunks(n, offset):
            draws.fill(c0, c1, words[i, c0 - offset : c1 - offset])
    return words
