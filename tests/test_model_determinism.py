"""The merge is a function of the input *set*: order and duplication never change the bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from crdtd.model import Contribution, ModelMerge, ModelMergeSchema
from crdtd.strategies import registry
from tests.model_generators import (
    MAX_INPUTS,
    TINY_SHAPES,
    extras_for,
    global_params,
    hash_dir,
    input_count,
    per_model_params,
    save_checkpoint,
    tiny_tensors,
)

_REFERENCE: dict[str, str] = {}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("determinism")
    base = tiny_tensors(0)
    save_checkpoint(root / "base", base)
    for i in range(MAX_INPUTS):
        save_checkpoint(root / f"m{i}", tiny_tensors(i + 1, around=base), shards=1 + i % 2)
    return root


def _contributions(root: Path, name: str) -> list[Contribution]:
    strategy = registry.get(name)
    n = input_count(strategy)
    params = per_model_params(strategy, n)
    out = []
    for i in range(n):
        extras = {}
        for key, tensors in extras_for(strategy, TINY_SHAPES, i).items():
            path = root / "extras" / name / f"{key}-{i}.safetensors"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file(tensors, str(path))
            extras[key] = path
        out.append(Contribution(root / f"m{i}", params[i], extras))
    return out


def _merged_hash(root: Path, name: str, items: list[Contribution]) -> str:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        schema = ModelMergeSchema.single(name, global_params(registry.get(name)))
        ModelMerge(schema).merge_to_dir(items, out, root / "base", shard_size=600)
        assert len(list(out.glob("*.safetensors"))) > 1  # really sharded
        return hash_dir(out)


@pytest.mark.parametrize("name", registry.names())
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_every_strategy_gives_the_same_bytes_for_any_order_or_duplication(
    store: Path, name: str, data: st.DataObject
) -> None:
    items = _contributions(store, name)
    if name not in _REFERENCE:
        _REFERENCE[name] = _merged_hash(store, name, items)
    n = len(items)
    dups = data.draw(st.lists(st.integers(0, n - 1), max_size=2), label="duplicates")
    order = data.draw(st.permutations(list(range(n)) + dups), label="order")
    assert _merged_hash(store, name, [items[i] for i in order]) == _REFERENCE[name]
