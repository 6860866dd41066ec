"""ModelMerge: the README API, correct merges, and errors raised before any tensor is merged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import crdtd.model.merge as merge_mod
from crdtd.errors import (
    MergeError,
    NonFiniteTensorError,
    StrategyParamError,
    TensorMismatchError,
    UnknownStrategyError,
)
from crdtd.model import Contribution, ModelMerge, ModelMergeSchema
from crdtd.model.identity import input_set_digest
from crdtd.model.io import open_checkpoint, source_content_id
from crdtd.strategies import registry
from crdtd.strategies.base import Strategy
from tests.model_generators import hash_dir, save_checkpoint, tiny_tensors


def test_readme_example_works_as_written() -> None:
    weights_a = {"layer.weight": torch.randn(128, 64)}
    weights_b = {"layer.weight": torch.randn(128, 64)}
    base = {"layer.weight": torch.zeros(128, 64)}
    schema = ModelMergeSchema({"default": "ties"})
    result = ModelMerge(schema).merge([weights_a, weights_b], base=base)
    assert result.tensor["layer.weight"].shape == torch.Size([128, 64])


def test_linear_merge_is_the_weighted_mean() -> None:
    a, b = tiny_tensors(1), tiny_tensors(2)
    out = ModelMerge("linear").merge([Contribution(a, {"weight": 3.0}), Contribution(b)])
    for name in a:
        torch.testing.assert_close(out.tensor[name], (3 * a[name] + b[name]) / 4)


def test_ties_of_two_identical_task_vectors_returns_that_task_vector() -> None:
    base = tiny_tensors(0)
    tuned = tiny_tensors(1, around=base)
    out = ModelMerge("ties").merge([tuned, {k: v.clone() for k, v in tuned.items()}], base=base)
    for name in base:
        torch.testing.assert_close(out.tensor[name], tuned[name])


def test_rules_send_each_tensor_to_its_strategy() -> None:
    base = tiny_tensors(0)
    a, b = tiny_tensors(1, around=base), tiny_tensors(2, around=base)
    schema = ModelMergeSchema(
        {"model.layers.0-0.*": {"strategy": "slerp", "params": {"t": 0.0}}}, default="linear"
    )
    out = ModelMerge(schema).merge([a, b], base=base)
    first, _ = sorted([a, b], key=lambda t: source_content_id(open_checkpoint(t)))
    torch.testing.assert_close(
        out.tensor["model.layers.0.mlp.weight"], first["model.layers.0.mlp.weight"]
    )
    torch.testing.assert_close(
        out.tensor["model.layers.1.mlp.weight"],
        (a["model.layers.1.mlp.weight"] + b["model.layers.1.mlp.weight"]) / 2,
    )


def test_result_reports_the_input_set_digest_of_its_content() -> None:
    a, b = tiny_tensors(1), tiny_tensors(2)
    out = ModelMerge("linear").merge([a, b, a])
    ids = [source_content_id(open_checkpoint(t)) for t in (a, b)]
    assert out.input_set_digest == input_set_digest(ids).hex()
    assert list(out.content_ids) == sorted(i.hex() for i in ids)


def test_integer_tensors_are_copied_from_the_base_not_merged() -> None:
    base = {"w": torch.zeros(3), "ids": torch.arange(3)}
    a = {"w": torch.ones(3), "ids": torch.arange(3)}
    b = {"w": 3 * torch.ones(3), "ids": torch.arange(3)}
    out = ModelMerge("linear").merge([a, b], base=base)
    assert torch.equal(out.tensor["ids"], torch.arange(3))
    torch.testing.assert_close(out.tensor["w"], 2 * torch.ones(3))


def test_output_dtype_defaults_to_the_inputs_and_follows_dtype() -> None:
    a = tiny_tensors(1, dtype=torch.bfloat16)
    b = tiny_tensors(2, dtype=torch.bfloat16)
    assert ModelMerge("linear").merge([a, b]).tensor["lm_head.weight"].dtype == torch.bfloat16
    out = ModelMerge("linear", dtype="float32").merge([a, b]).tensor["lm_head.weight"]
    assert out.dtype == torch.float32


def test_merge_to_dir_writes_metadata_and_copies_config_from_the_base(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", tiny_tensors(0))
    (base / "tokenizer.json").write_text("{}")
    a = save_checkpoint(tmp_path / "a", tiny_tensors(1), config=False)
    b = save_checkpoint(tmp_path / "b", tiny_tensors(2), shards=2, config=False)
    report = ModelMerge(ModelMergeSchema.single("task_arithmetic", {"lambda": 0.5})).merge_to_dir(
        [a, b], tmp_path / "out", base, shard_size=700
    )
    out = tmp_path / "out"
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= set(report.files)
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["crdtd.input_set_digest"] == report.input_set_digest
    shard = sorted(out.glob("model-*.safetensors"))[0]
    with safe_open(str(shard), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["crdtd.strategy"])["schema"]["default"]["params"] == {"lambda": 0.5}
    assert str(tmp_path) not in json.dumps(meta)  # no paths: every node writes the same bytes


def test_a_base_the_strategy_does_not_read_is_neither_hashed_nor_named(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", tiny_tensors(0))
    (base / "tokenizer.json").write_text("{}")
    a = save_checkpoint(tmp_path / "a", tiny_tensors(1), config=False)
    b = save_checkpoint(tmp_path / "b", tiny_tensors(2), config=False)
    with_base = ModelMerge("linear").merge_to_dir([a, b], tmp_path / "with", base)
    ModelMerge("linear").merge_to_dir([a, b], tmp_path / "without")
    assert "tokenizer.json" in with_base.files  # side files still come from the base given
    with safe_open(str(tmp_path / "with" / "model.safetensors"), "pt") as fh:
        assert fh.metadata()["crdtd.base"] == ""
    shard = "model.safetensors"
    assert (tmp_path / "with" / shard).read_bytes() == (tmp_path / "without" / shard).read_bytes()
    ModelMerge("task_arithmetic").merge_to_dir([a, b], tmp_path / "reads", base)
    with safe_open(str(tmp_path / "reads" / "model.safetensors"), "pt") as fh:
        assert fh.metadata()["crdtd.base"] == source_content_id(open_checkpoint(base)).hex()


def test_same_set_from_different_paths_gives_identical_bytes(tmp_path: Path) -> None:
    tensors = [tiny_tensors(i) for i in range(3)]
    for where in ("x", "y"):
        dirs = [
            save_checkpoint(tmp_path / where / f"m{i}", t, shards=1 + i)
            for i, t in enumerate(tensors)
        ]
        ModelMerge("linear").merge_to_dir(dirs, tmp_path / f"out-{where}", shard_size=500)
    assert hash_dir(tmp_path / "out-x") == hash_dir(tmp_path / "out-y")


def _no_output(tmp_path: Path) -> bool:
    out = tmp_path / "out"
    return not out.exists() or not any(out.iterdir())


def test_a_missing_tensor_is_named_before_anything_is_written(tmp_path: Path) -> None:
    a = tiny_tensors(1)
    b = dict(tiny_tensors(2))
    del b["model.layers.1.norm.weight"]
    with pytest.raises(TensorMismatchError, match=r"model.layers.1.norm.weight"):
        ModelMerge("linear").merge_to_dir([a, b], tmp_path / "out")
    assert _no_output(tmp_path)


def test_a_shape_mismatch_is_named(tmp_path: Path) -> None:
    a = tiny_tensors(1)
    b = dict(tiny_tensors(2))
    b["lm_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(TensorMismatchError, match=r"lm_head.weight.*\[12, 6\].*\[3, 3\]"):
        ModelMerge("linear").merge_to_dir([a, b], tmp_path / "out")
    assert _no_output(tmp_path)


def test_a_dtype_clash_is_an_error_unless_an_output_dtype_is_chosen() -> None:
    a = tiny_tensors(1, dtype=torch.bfloat16)
    b = tiny_tensors(2, dtype=torch.float16)
    with pytest.raises(TensorMismatchError, match=r"dtype BF16.*F16.*--dtype"):
        ModelMerge("linear").merge([a, b])
    out = ModelMerge("linear").merge([a, b], dtype="float32")
    assert out.tensor["lm_head.weight"].dtype == torch.float32
    ints = {k: torch.zeros(v.shape, dtype=torch.int32) for k, v in a.items()}
    with pytest.raises(TensorMismatchError, match="I32"):
        ModelMerge("linear").merge([a, ints], dtype="float32")


def test_a_missing_base_tensor_is_named() -> None:
    base = dict(tiny_tensors(0))
    del base["model.embed_tokens.weight"]
    with pytest.raises(TensorMismatchError, match=r"embed_tokens.*base"):
        ModelMerge("ties").merge([tiny_tensors(1), tiny_tensors(2)], base=base)


def test_unknown_strategy_and_bad_params_fail_with_the_name(tmp_path: Path) -> None:
    a, b = tiny_tensors(1), tiny_tensors(2)
    with pytest.raises(UnknownStrategyError, match=r"tiez.*ties"):
        ModelMerge("tiez").merge([a, b])
    with pytest.raises(StrategyParamError, match="densty"):
        ModelMerge(ModelMergeSchema.single("ties", {"densty": 0.5})).merge([a, b], base=a)
    with pytest.raises(StrategyParamError, match="density"):
        ModelMerge(ModelMergeSchema.single("ties", {"density": 7})).merge([a, b], base=a)
    with pytest.raises(StrategyParamError, match="needs a base"):
        ModelMerge("ties").merge_to_dir([a, b], tmp_path / "out")
    assert _no_output(tmp_path)


def test_weights_that_sum_to_zero_fail_before_the_first_tensor_is_written(tmp_path: Path) -> None:
    a, b = tiny_tensors(1), tiny_tensors(2)
    items = [Contribution(a, {"weight": 1.0}), Contribution(b, {"weight": -1.0})]
    with pytest.raises(StrategyParamError, match="sums to zero"):
        ModelMerge("linear").merge_to_dir(items, tmp_path / "out")
    assert _no_output(tmp_path)


def test_same_content_with_different_params_is_refused() -> None:
    a = tiny_tensors(1)
    with pytest.raises(StrategyParamError, match="same content"):
        ModelMerge("linear").merge(
            [
                Contribution(a, {"weight": 1.0}),
                Contribution(dict(a), {"weight": 2.0}),
                tiny_tensors(2),
            ]
        )


def test_too_many_distinct_inputs_for_slerp_is_an_error_but_duplicates_are_fine() -> None:
    a, b, c = tiny_tensors(1), tiny_tensors(2), tiny_tensors(3)
    ModelMerge("slerp").merge([a, b, a, b])
    with pytest.raises(StrategyParamError, match="at most 2"):
        ModelMerge("slerp").merge([a, b, c])


def test_output_directory_with_a_checkpoint_is_refused(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a", tiny_tensors(1))
    with pytest.raises(MergeError, match="already holds a checkpoint"):
        ModelMerge("linear").merge_to_dir([a], a)


def test_elementwise_strategies_merged_in_row_blocks_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row blocks are used only for strategies that declare `elementwise`; same output."""

    @dataclasses.dataclass(frozen=True)
    class Elementwise(Strategy):
        elementwise: bool = True

    base = save_checkpoint(tmp_path / "base", tiny_tensors(0))
    dirs = [save_checkpoint(tmp_path / f"m{i}", tiny_tensors(i + 1)) for i in range(3)]
    schema = ModelMergeSchema.single("task_arithmetic", {"lambda": 0.7})
    ModelMerge(schema).merge_to_dir(dirs, tmp_path / "whole", base)
    plain = registry.get("task_arithmetic")
    fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)}
    monkeypatch.setitem(registry._REGISTRY, "task_arithmetic", Elementwise(**fields))
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 13)
    blocks: list[int] = []
    real = merge_mod._merge_block

    def spy(plan, job, buf, rows):  # type: ignore[no-untyped-def]
        blocks.append(0 if rows is None else rows.stop - rows.start)
        return real(plan, job, buf, rows)

    monkeypatch.setattr(merge_mod, "_merge_block", spy)
    plan = ModelMerge(schema).plan(dirs, base)
    merge_mod.write_plan(plan, tmp_path / "blocks")
    plan.close()
    assert any(b > 0 for b in blocks)
    assert hash_dir(tmp_path / "whole") == hash_dir(tmp_path / "blocks")


def test_empty_tensors_pass_through_with_their_shape() -> None:
    a = {"w": torch.ones(2), "empty": torch.zeros(0, 4)}
    b = {"w": 3 * torch.ones(2), "empty": torch.zeros(0, 4)}
    out = ModelMerge("ties").merge([a, b], base={"w": torch.zeros(2), "empty": torch.zeros(0, 4)})
    assert out.tensor["empty"].shape == (0, 4)
    torch.testing.assert_close(out.tensor["w"], 2 * torch.ones(2))  # disjoint mean of 1 and 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["input", "base"])
def test_nan_or_inf_in_an_input_is_refused_naming_the_tensor_and_model(
    tmp_path: Path, bad: float, where: str
) -> None:
    base = tiny_tensors(0)
    good = save_checkpoint(tmp_path / "good", tiny_tensors(1, around=base))
    broken = dict(tiny_tensors(2, around=base) if where == "input" else base)
    broken["model.layers.1.mlp.weight"] = broken["model.layers.1.mlp.weight"].clone()
    broken["model.layers.1.mlp.weight"][2, 3] = bad
    bad_dir = save_checkpoint(tmp_path / "broken", broken)
    inputs = [good, bad_dir] if where == "input" else [good, tiny_tensors(3, around=base)]
    base_spec = base if where == "input" else bad_dir
    pattern = r"model\.layers\.1\.mlp\.weight.*broken.*position 15"
    # linear never reads the base, so a base it ignores is not checked
    strategies = ("linear", "ties", "slerp") if where == "input" else ("ties", "task_arithmetic")
    for strategy in strategies:
        with pytest.raises(NonFiniteTensorError, match=pattern):
            ModelMerge(strategy).merge_to_dir(inputs, tmp_path / "out", base=base_spec)
        assert _no_output(tmp_path)


def test_nan_in_a_large_blockwise_tensor_is_refused_after_nothing_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 64)
    a = {"w": torch.randn(40, 10)}
    b = {"w": torch.randn(40, 10)}
    b["w"][37, 1] = float("nan")
    with pytest.raises(NonFiniteTensorError, match=r"'w'.*input 1.*position 371"):
        ModelMerge("linear").merge_to_dir([a, b], tmp_path / "out")
    assert _no_output(tmp_path)


def test_a_per_model_parameter_typo_names_the_model_not_a_tensor() -> None:
    a, b = tiny_tensors(1), tiny_tensors(2)
    items = [Contribution(a, {"density": 0.5}), Contribution(b, {"densty": 0.5}, label="code")]
    with pytest.raises(
        StrategyParamError, match=r"^code: unknown per-model parameter 'densty'"
    ) as e:
        ModelMerge("ties").merge(items, base=tiny_tensors(0))
    assert "tensor" not in str(e.value)


def test_a_global_parameter_typo_names_the_rule_not_a_tensor() -> None:
    a, b = tiny_tensors(1), tiny_tensors(2)
    schema = ModelMergeSchema({"re:mlp": {"strategy": "ties", "params": {"lamda": 0.5}}})
    with pytest.raises(StrategyParamError, match=r"^rule 're:mlp': unknown parameter 'lamda'") as e:
        ModelMerge(schema).merge([a, b], base=tiny_tensors(0))
    assert "tensor" not in str(e.value)
