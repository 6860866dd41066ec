"""Blockwise merging: strategies split into flat blocks give the bytes of one whole-tensor call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from crdtd.model import Contribution, ModelMerge, ModelMergeSchema
from crdtd.model import merge as merge_mod
from crdtd.strategies import registry
from crdtd.strategies.base import BLOCK_ALIGN, TensorBlocks, TensorMerge, run_blocks
from tests.model_generators import hash_dir

BLOCKWISE = [s.name for s in registry.all_strategies() if s.blockwise]

# Global and per-model params per blockwise strategy; several exercise rescale, ties, zeros.
CASES: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {
    "linear": [
        ({}, [{"weight": 1.0}, {"weight": 0.5}, {"weight": 2.0}]),
        ({"normalize": False}, []),
    ],
    "task_arithmetic": [({"lambda": 0.7}, [{"weight": 0.3}, {"weight": 1.0}, {"weight": 2.0}])],
    "passthrough": [({"scale": 0.7}, [])],
    "weight_average": [({}, [{"weight": 1.0}, {"weight": 3.0}, {"weight": 0.5}])],
    "fedavg": [({}, [{"num_examples": 3}, {"num_examples": 1}, {"num_examples": 5}])],
    "ties": [
        ({"density": 0.3, "lambda": 0.9}, []),
        ({"rescale": True}, [{"density": 0.2}, {"density": 0.7, "weight": 0.5}, {"density": 1.0}]),
        ({"normalize": False}, [{"density": 0.0}, {"density": 0.4}, {"density": 0.6}]),
    ],
    "dare_linear": [
        ({"density": 0.4, "lambda": 0.8}, []),
        ({"rescale": False}, [{"density": 0.5}, {"density": 1.0}, {"density": 0.0}]),
    ],
    "dare_ties": [({}, [{"density": 0.3}, {"density": 0.6, "weight": 2.0}, {"density": 0.9}])],
    "slerp": [({"t": 0.3}, []), ({"t": 0.7, "dot_threshold": 0.0}, []), ({"t": 1.0}, [])],
}
INPUTS = {"passthrough": 1, "slerp": 2}  # inputs per case (3 otherwise)


def _stack(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k inputs and a base of n entries; the last input is coarsely rounded (many ties)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    x = torch.stack([base + 0.1 * torch.randn(n, generator=g) for _ in range(k)])
    x[-1] = base + ((x[-1] - base) * 8).round() / 8
    return x, base


def _tm(name: str, x: torch.Tensor, base: torch.Tensor, case: tuple[dict, list]) -> TensorMerge:
    strategy = registry.get(name)
    params, per = case
    gp, mp = strategy.validate(params, per or [{}] * x.shape[0])
    return TensorMerge("w", x.clone(), base.clone(), gp, mp, torch.Generator().manual_seed(7))


def test_the_blockwise_strategies_are_the_linear_ties_dare_and_slerp_families() -> None:
    assert set(CASES) <= set(BLOCKWISE)
    assert {"breadcrumbs", "della", "median"}.isdisjoint(BLOCKWISE)


@pytest.mark.parametrize(
    "name, index", [(n, i) for n in sorted(CASES) for i in range(len(CASES[n]))]
)
def test_blocks_give_the_bytes_of_the_whole_tensor(name: str, index: int) -> None:
    """Aligned blocks (what the engine uses) and a block size off the chunk grid."""
    strategy = registry.get(name)
    x, base = _stack(INPUTS.get(name, 3), 2 * BLOCK_ALIGN + 12_345, seed=index)
    case = CASES[name][index]
    whole = strategy.fn(_tm(name, x, base, case))
    for block in (BLOCK_ALIGN, 3 * BLOCK_ALIGN // 2 + 1):
        if block % BLOCK_ALIGN and case[0].get("rescale") is True and name == "ties":
            continue  # L1 sums are exact only on the aligned chunk grid (the engine's blocks)
        parts = list(run_blocks(strategy, TensorBlocks.of(_tm(name, x, base, case), block)))
        assert len(parts) > 1
        got = torch.cat(parts)
        assert got.numpy().tobytes() == whole.numpy().tobytes(), (name, case, block)


def test_ties_threshold_ties_straddling_blocks_keep_the_same_positions() -> None:
    """Equal magnitudes at the threshold in every block: the later positions are kept."""
    n = 3 * BLOCK_ALIGN
    base = torch.zeros(n)
    x = torch.ones(2, n)
    x[:, ::5] = 2.0  # 20 % above the threshold, 80 % tied at it
    strategy = registry.get("ties")
    case: tuple[dict, list] = ({"density": 0.5}, [])
    whole = strategy.fn(_tm("ties", x, base, case))
    got = torch.cat(list(run_blocks(strategy, TensorBlocks.of(_tm("ties", x, base, case), 1000))))
    assert torch.equal(got, whole)
    assert int(torch.count_nonzero(whole)) == n // 2
    assert bool((whole[-1000:] != 0).all())  # ties kept from the end...
    assert bool((whole[1:1000:5] == 0).all())  # ...and dropped from the start


def _checkpoints(root: Path) -> tuple[list[Contribution], Path]:
    g = torch.Generator().manual_seed(3)
    shapes = {"embed.weight": (700, 1000), "norm.weight": (1000,), "proj.weight": (3, 7, 11)}
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    paths = []
    for j in range(4):
        tensors = (
            base
            if j == 0
            else {k: v + 0.002 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        )
        d = root / f"m{j}"
        d.mkdir()
        save_file(
            {k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(d / "model.safetensors")
        )
        paths.append(d)
    weights = (1.0, 0.5, 2.0)
    return [Contribution(p, {"weight": w}) for p, w in zip(paths[1:], weights)], paths[0]


@pytest.mark.parametrize(
    "name, params",
    [
        ("linear", {}),
        ("ties", {"density": 0.3, "lambda": 0.8}),
        ("ties", {"density": 0.5, "rescale": True}),
        ("dare_ties", {"density": 0.4}),
        ("slerp", {"t": 0.4}),
    ],
)
def test_engine_merges_blockwise_with_the_bytes_of_whole_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, params: dict
) -> None:
    items, base = _checkpoints(tmp_path)
    if name == "slerp":
        items = [Contribution(items[0].weights)]  # from the base to one input
    schema = ModelMergeSchema.single(name, params)
    ModelMerge(schema).merge_to_dir(items, tmp_path / "whole", base)
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", BLOCK_ALIGN)
    loaded: list[int] = []
    real = merge_mod._load

    def spy(plan, job, buf, block, check=True, raw=False, **kept):  # type: ignore[no-untyped-def]
        loaded.append(0 if block is None else block.stop - block.start)
        return real(plan, job, buf, block, check, raw, **kept)

    monkeypatch.setattr(merge_mod, "_load", spy)
    ModelMerge(schema).merge_to_dir(items, tmp_path / "blocks", base)
    assert BLOCK_ALIGN in loaded  # the 700×1000 tensor went in blocks
    assert hash_dir(tmp_path / "whole") == hash_dir(tmp_path / "blocks")


def test_engine_buffers_hold_one_block_not_the_largest_tensor(tmp_path: Path) -> None:
    items, base = _checkpoints(tmp_path)
    for name, small in (("ties", True), ("breadcrumbs", False)):
        plan = ModelMerge(ModelMergeSchema.single(name, {"density": 0.5})).plan(items, base)
        try:
            buf = merge_mod._Buffers(plan, plan.jobs, BLOCK_ALIGN)
            assert (buf.base.numel() == BLOCK_ALIGN) is small
            assert buf.base.numel() == (BLOCK_ALIGN if small else 700 * 1000)
            # the reused result buffer serves blockwise strategies only
            assert buf.out.numel() == (BLOCK_ALIGN if small else 0)
        finally:
            plan.close()


def test_ties_gives_the_same_bytes_when_the_sampled_bracket_misses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bracket that holds no threshold falls back to every entry, with the same result."""
    from crdtd.strategies import _gta

    x, base = _stack(3, BLOCK_ALIGN + 999, seed=5)
    strategy = registry.get("ties")
    case: tuple[dict, list] = ({"density": 0.4}, [])
    want = strategy.fn(_tm("ties", x, base, case))
    monkeypatch.setattr(_gta, "bracket", lambda sample, m, n: (1e9, 2e9))
    whole = strategy.fn(_tm("ties", x, base, case))
    parts = run_blocks(strategy, TensorBlocks.of(_tm("ties", x, base, case), 1000))
    assert torch.equal(whole, want)
    assert torch.cat(list(parts)).numpy().tobytes() == want.numpy().tobytes()


RAW_CASES = [
    ("ties", {"density": 0.3, "lambda": 0.8}),
    ("dare_ties", {"density": 0.4}),
    ("dare_linear", {"density": 0.6}),
    ("dare_linear", {"density": 0.0}),  # masks the kernels do not take: widened from the bits
    ("linear", {}),
    ("fedavg", {}),
]


def _raw_items(name: str, items: list[Contribution]) -> list[Contribution]:
    """`_checkpoints`' contributions with the per-model parameter `name` takes."""
    if name != "fedavg":
        return items
    return [Contribution(c.weights, {"num_examples": 100 * (i + 1)}) for i, c in enumerate(items)]


def test_the_strategies_that_take_raw_blocks_are_the_ones_tested_here() -> None:
    raw = {s.name for s in registry.all_strategies() if s.raw_inputs}
    assert raw == {name for name, _ in RAW_CASES}


@pytest.mark.parametrize("name, params", RAW_CASES)
def test_blocks_read_as_bf16_bits_give_the_torch_paths_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, params: dict
) -> None:
    """The kernels widen bf16 file blocks themselves (`TensorMerge.raw`); with the kernels
    off the same merge widens them into float32 first and runs the torch path."""
    from crdtd.strategies import _kernels

    items, base = _checkpoints(tmp_path)
    items = _raw_items(name, items)
    schema = ModelMergeSchema.single(name, params)
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", BLOCK_ALIGN)
    reads: list[bool] = []
    real = merge_mod._read_raw

    def spy(*args: Any) -> Any:
        got = real(*args)
        reads.append(got is not None)
        return got

    monkeypatch.setattr(merge_mod, "_read_raw", spy)
    ModelMerge(schema).merge_to_dir(items, tmp_path / "raw", base)
    assert any(reads)  # the 700×1000 tensor's blocks were read as bits
    monkeypatch.setattr(_kernels, "ENABLED", False)
    ModelMerge(schema).merge_to_dir(items, tmp_path / "torch", base)
    assert hash_dir(tmp_path / "raw") == hash_dir(tmp_path / "torch")


@pytest.mark.parametrize(
    "name, params, where",
    [
        (name, params, where)
        for name, params in RAW_CASES
        for where in ("input", "base")
        if where == "input" or registry.get(name).uses_base  # linear, fedavg: no base read
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_block_read_as_bits_is_refused_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    params: dict,
    bad: float,
    where: str,
) -> None:
    """A NaN or Inf in a bf16 block the kernels read themselves is still refused with the
    tensor, the checkpoint and the flat position named, and nothing is written."""
    from crdtd.errors import NonFiniteTensorError

    items, base = _checkpoints(tmp_path)
    items = _raw_items(name, items)
    target = base if where == "base" else Path(str(items[1].weights))
    from safetensors.torch import load_file

    tensors = load_file(str(target / "model.safetensors"))
    tensors["embed.weight"][600, 17] = bad
    save_file(tensors, str(target / "model.safetensors"))
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", BLOCK_ALIGN)
    label = target.name
    with pytest.raises(NonFiniteTensorError, match=rf"'embed\.weight'.*{label}.*position 600017"):
        ModelMerge(ModelMergeSchema.single(name, params)).merge_to_dir(
            items, tmp_path / "out", base
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("slabs, reads", [(0, 24), (1, 20), (8, 12)])
def test_ties_merges_the_blocks_its_scan_kept_from_there_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slabs: int, reads: int
) -> None:
    """TIES's scan reads each block of bf16 bits into a free slab of the kept-blocks arena
    and its merge takes them from there: a block is read from its four files once when it
    found a slab (the 700×1000 tensor's three blocks: 12 reads), twice when not (24 without
    an arena, 20 with one slab), and the bytes are the same whichever."""
    from crdtd.model import io as io_mod
    from crdtd.model import kept_blocks

    items, base = _checkpoints(tmp_path)
    schema = ModelMergeSchema.single("ties", {"density": 0.3})
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", BLOCK_ALIGN)
    monkeypatch.setattr(kept_blocks, "KEPT_BYTES", slabs * 4 * BLOCK_ALIGN * 2)
    seen: list[str] = []
    real = io_mod.SafetensorsFile.read_into

    def counted(self, name, start, stop, out):  # type: ignore[no-untyped-def]
        seen.append(name)
        return real(self, name, start, stop, out)

    monkeypatch.setattr(io_mod.SafetensorsFile, "read_into", counted)
    ModelMerge(schema).merge_to_dir(items, tmp_path / "kept", base)
    assert seen.count("embed.weight") == reads
    monkeypatch.setattr(kept_blocks, "KEPT_BYTES", 0)
    ModelMerge(schema).merge_to_dir(items, tmp_path / "read", base)
    assert hash_dir(tmp_path / "kept") == hash_dir(tmp_path / "read")


def test_the_kept_blocks_arena_holds_a_block_until_its_merge_frees_it() -> None:
    from crdtd.model.kept_blocks import KeptBlocks

    arena = KeptBlocks(rows=4, n=8, budget=2 * 4 * 8 * 2)
    try:
        assert arena.take(5, 8) is None and arena.take(4, 9) is None  # does not fit a slab
        first, second = arena.take(4, 8), arena.take(3, 8)
        assert first is not None and second is not None and first[0] != second[0]
        assert first[1].shape == (4, 8) and second[1].shape == (3, 8)
        assert arena.take(4, 8) is None  # both slabs taken: the caller reads on its own
        first[1][:] = 7
        arena.keep("w", 16, first)
        held = arena.get("w", 16)
        assert held is not None and (held == 7).all() and arena.get("w", 0) is None
        popped = arena.pop("w", 16)
        assert popped is not None and popped[0] == first[0] and arena.pop("w", 16) is None
        arena.free(first[0])
        again = arena.take(2, 8)
        assert again is not None and again[0] == first[0]
    finally:
        arena.close()
    assert KeptBlocks(rows=4, n=8, budget=10).take(1, 1) is None  # budget below one slab
