"""Reading checkpoints (single, sharded, directories) and the deterministic sharded writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from crdtd.errors import InputReadError, MergeError
from crdtd.model.io import TensorInfo, open_checkpoint, parse_dtype
from crdtd.model.writer import ShardedWriter, natural_key, parse_size, plan_shards
from tests.model_generators import save_checkpoint, tiny_tensors


def _equal_everywhere(source, tensors: dict[str, torch.Tensor]) -> None:
    assert sorted(source.infos) == sorted(tensors)
    for name, t in tensors.items():
        assert torch.equal(source.view(name), t)
        source.release(name)


@pytest.mark.parametrize("shards", [1, 3])
def test_directory_single_and_sharded_checkpoints_read_back_exactly(
    tmp_path: Path, shards: int
) -> None:
    tensors = tiny_tensors(1, dtype=torch.bfloat16)
    d = save_checkpoint(tmp_path / "m", tensors, shards=shards)
    src = open_checkpoint(d)
    _equal_everywhere(src, tensors)
    src.close()


def test_index_file_and_single_file_paths_open_directly(tmp_path: Path) -> None:
    tensors = tiny_tensors(2)
    d = save_checkpoint(tmp_path / "m", tensors, shards=2)
    _equal_everywhere(open_checkpoint(d / "model.safetensors.index.json"), tensors)
    save_file(tensors, str(tmp_path / "one.safetensors"))
    _equal_everywhere(open_checkpoint(tmp_path / "one.safetensors"), tensors)


def test_released_tensors_read_again_correctly(tmp_path: Path) -> None:
    tensors = tiny_tensors(3)
    src = open_checkpoint(save_checkpoint(tmp_path / "m", tensors))
    for _ in range(2):
        _equal_everywhere(src, tensors)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"abc", "not a safetensors file"),
        ((10**9).to_bytes(8, "little") + b"{}", "header length"),
        ((4).to_bytes(8, "little") + b"nope", "not JSON"),
    ],
)
def test_corrupt_files_raise_input_read_error_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(InputReadError, match=message) as err:
        open_checkpoint(p)
    assert "bad.safetensors" in str(err.value)


def test_header_offsets_that_do_not_fit_the_shape_are_refused(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    p = tmp_path / "short.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(InputReadError, match="'w'"):
        open_checkpoint(p)


def test_missing_paths_and_bin_only_directories_are_explained(tmp_path: Path) -> None:
    with pytest.raises(InputReadError, match="no such file"):
        open_checkpoint(tmp_path / "nowhere")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(InputReadError, match="convert them to safetensors"):
        open_checkpoint(tmp_path / "bin")


def test_index_pointing_at_the_wrong_shard_is_refused(tmp_path: Path) -> None:
    d = save_checkpoint(tmp_path / "m", tiny_tensors(1), shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = sorted(index["weight_map"])[0]
    other = {v for v in index["weight_map"].values() if v != index["weight_map"][name]}.pop()
    index["weight_map"][name] = other
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputReadError, match=name):
        open_checkpoint(d)


def test_dtype_names_users_write_are_understood() -> None:
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("float16") is torch.float16
    assert parse_dtype("torch.float32") is torch.float32
    with pytest.raises(InputReadError, match="int8"):
        parse_dtype("int8")


def test_sizes_parse_with_decimal_and_binary_units() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1234") == 1234
    with pytest.raises(MergeError):
        parse_size("lots")


def test_natural_order_puts_layer_2_before_layer_10() -> None:
    names = ["layers.10.w", "layers.2.w", "embed", "layers.1.w"]
    assert sorted(names, key=natural_key) == ["embed", "layers.1.w", "layers.2.w", "layers.10.w"]


def test_shard_plan_never_exceeds_the_size_unless_one_tensor_does() -> None:
    infos = [TensorInfo(f"t.{i}", "F32", (10,)) for i in range(7)] + [
        TensorInfo("big", "F32", (100,))
    ]
    shards = plan_shards(infos, 100)
    for shard in shards:
        assert sum(i.nbytes for i in shard) <= 100 or len(shard) == 1
    assert [i.name for s in shards for i in s] == sorted((i.name for i in infos), key=natural_key)


def _write(out: Path, tensors: dict[str, torch.Tensor], shard_size: int) -> None:
    infos = [TensorInfo(n, "BF16", tuple(t.shape)) for n, t in tensors.items()]
    with ShardedWriter(out, infos, {"format": "pt", "k": "v"}, shard_size=shard_size) as w:
        for info in w.order:
            w.write(info.name, tensors[info.name])
        w.commit()


def test_writer_output_loads_with_safetensors_and_is_byte_identical_on_rewrite(
    tmp_path: Path,
) -> None:
    tensors = {k: v.float() for k, v in tiny_tensors(4).items()}
    _write(tmp_path / "a", tensors, 400)
    _write(tmp_path / "b", dict(reversed(list(tensors.items()))), 400)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "model.safetensors.index.json" in files and len(files) > 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    loaded = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(tmp_path / "a" / shard), "pt") as fh:
            assert fh.metadata()["k"] == "v"
        loaded.update(load_file(str(tmp_path / "a" / shard)))
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t.to(torch.bfloat16))  # cast to the planned dtype


def test_single_shard_is_named_like_hugging_face_without_index(tmp_path: Path) -> None:
    _write(tmp_path / "o", tiny_tensors(5), 10**9)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.safetensors"]


def test_a_failed_write_leaves_no_files_behind(tmp_path: Path) -> None:
    tensors = tiny_tensors(6)
    infos = [TensorInfo(n, "F32", tuple(t.shape)) for n, t in tensors.items()]
    out = tmp_path / "o"
    with (
        pytest.raises(MergeError, match="expected tensor"),
        ShardedWriter(out, infos, {}, shard_size=300) as w,
    ):
        w.write(w.order[0].name, tensors[w.order[0].name])
        w.write("not-next", tensors[w.order[0].name])
    assert list(out.iterdir()) == []


def test_writer_rejects_tensors_out_of_order_or_of_the_wrong_shape(tmp_path: Path) -> None:
    infos = [TensorInfo("a", "F32", (2,)), TensorInfo("b", "F32", (2,))]
    with ShardedWriter(tmp_path / "o", infos, {}) as w:
        with pytest.raises(MergeError, match="'a'"):
            w.write("b", torch.zeros(2))
        with pytest.raises(MergeError, match="shape"):
            w.write("a", torch.zeros(3))
        w.abort()
