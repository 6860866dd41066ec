"""Content ids identify a checkpoint by its tensors, never by its file layout or path."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.model.identity import input_set_digest
from crdtd.model.io import open_checkpoint, source_content_id
from tests.model_generators import save_checkpoint, tiny_tensors


def _id(spec) -> bytes:
    return source_content_id(open_checkpoint(spec))


def test_same_tensors_have_the_same_id_in_memory_single_file_or_sharded(tmp_path: Path) -> None:
    tensors = tiny_tensors(1)
    one = save_checkpoint(tmp_path / "one", tensors)
    three = save_checkpoint(tmp_path / "three", tensors, shards=3)
    assert _id(tensors) == _id(one) == _id(three)


def test_one_changed_bit_or_dtype_or_name_changes_the_id() -> None:
    tensors = tiny_tensors(2)
    ref = _id(tensors)
    flipped = dict(tensors)
    w = flipped["lm_head.weight"].clone()
    w.view(torch.int32)[0, 0] ^= 1
    flipped["lm_head.weight"] = w
    assert _id(flipped) != ref
    assert _id({k: v.double() for k, v in tensors.items()}) != ref
    renamed = dict(tensors)
    renamed["other.weight"] = renamed.pop("lm_head.weight")
    assert _id(renamed) != ref
    reshaped = dict(tensors)
    reshaped["lm_head.weight"] = reshaped["lm_head.weight"].reshape(6, 12)
    assert _id(reshaped) != ref


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5), st.data())
def test_input_set_digest_ignores_order_and_duplicates(
    ids: list[bytes], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(ids + ids[:1]))
    assert input_set_digest(shuffled) == input_set_digest(ids)


def test_input_set_digest_differs_for_different_sets() -> None:
    a, b, c = (bytes([i]) * 32 for i in range(3))
    assert input_set_digest([a, b]) != input_set_digest([a, c])
    assert input_set_digest([a]) != input_set_digest([a, b])
