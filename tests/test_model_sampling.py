"""Samples for two-phase strategies, taken from the bytes the plan hashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import crdtd.model.merge as merge_mod
from crdtd.model import Contribution, ModelMerge, ModelMergeSchema
from crdtd.model.sampling import PieceSampler, sample_positions
from crdtd.strategies.base import BLOCK_ALIGN
from tests.model_generators import hash_dir
from tests.test_model_blockwise import _checkpoints


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 5000),
    stride=st.integers(1, 300),
    piece=st.integers(1, 2000),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_a_piece_sampler_takes_the_sample_positions_from_pieces_in_any_order(
    n: int, stride: int, piece: int, dtype: torch.dtype, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(rng.normal(size=n).astype(np.float32)).to(dtype)
    raw = t.view(torch.uint8).numpy().tobytes()
    sampler = PieceSampler(n, stride, dtype)
    step = piece * dtype.itemsize
    offsets = list(range(0, len(raw), step))
    rng.shuffle(offsets)
    for off in offsets:
        sampler.visit(memoryview(raw)[off : off + step], off)
    assert sampler.complete
    where = torch.from_numpy(sample_positions(n, stride))
    assert torch.equal(sampler.values(), t.to(torch.float32)[where])


def test_ties_takes_its_samples_while_hashing_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan holds a sample of every input and the base for each tensor merged in blocks,
    the prepare reads no map for it, and the merge's bytes are those of a sample read late."""
    items, base = _checkpoints(tmp_path)
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", BLOCK_ALIGN)
    schema = ModelMergeSchema.single("ties", {"density": 0.3})
    plan = ModelMerge(schema).plan(items, base)
    try:
        sources = [inp.source for inp in plan.inputs] + [plan.base]
        assert {key for key in plan.samples} == {(id(s), "embed.weight") for s in sources}
        views: list[str] = []
        for src in sources:
            real = src.view
            monkeypatch.setattr(
                src, "view", lambda name, real=real: views.append(name) or real(name)
            )
        merge_mod.write_plan(plan, tmp_path / "early")
        assert "embed.weight" not in views
        plan.samples.clear()
        merge_mod.write_plan(plan, tmp_path / "late")
        assert "embed.weight" in views
    finally:
        plan.close()
    assert hash_dir(tmp_path / "early") == hash_dir(tmp_path / "late")


def test_only_strategies_whose_prepare_samples_get_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items, base = _checkpoints(tmp_path)
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", BLOCK_ALIGN)
    slerp_input = [Contribution(items[0].weights)]  # (slerp takes no per-model weight)
    for name, params, inputs in (("slerp", {"t": 0.4}, slerp_input), ("linear", {}, items)):
        plan = ModelMerge(ModelMergeSchema.single(name, params)).plan(inputs, base)
        try:
            assert plan.samples == {}
        finally:
            plan.close()
