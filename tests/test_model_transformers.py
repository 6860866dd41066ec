"""Merged checkpoints load in transformers; merged adapters load in peft (tiny local models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from crdtd.errors import InputReadError, TensorMismatchError  # noqa: E402
from crdtd.model import ModelMerge, ModelMergeSchema  # noqa: E402
from crdtd.model.cli import main  # noqa: E402
from crdtd.model.lora import merge_adapters  # noqa: E402
from tests.model_generators import hash_dir  # noqa: E402


def _config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama base and three fine-tunes (bf16), plus LoRA adapters of ranks 2, 4, 8."""
    root = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(_config()).to(torch.bfloat16)
    base.save_pretrained(root / "base")
    for i in range(3):
        torch.manual_seed(i + 1)
        m = transformers.LlamaForCausalLM.from_pretrained(root / "base")
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        m.save_pretrained(root / f"ft{i}", max_shard_size="40KB")
    targets = (["q_proj", "v_proj"], ["q_proj", "o_proj"], ["q_proj", "v_proj", "up_proj"])
    for i, (r, tm) in enumerate(zip((2, 4, 8), targets)):
        torch.manual_seed(10 + i)
        m = transformers.LlamaForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=tm, init_lora_weights=False)
        peft.get_peft_model(m, cfg).save_pretrained(root / f"lora{i}")
    return root


def test_merged_model_loads_with_automodel_and_holds_the_weighted_mean(
    models: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    dirs = [models / f"ft{i}" for i in range(3)]
    ModelMerge("linear").merge_to_dir(dirs, out, models / "base", shard_size=20_000)
    assert (out / "model.safetensors.index.json").exists()
    merged = transformers.AutoModel.from_pretrained(out)
    tuned = [transformers.AutoModel.from_pretrained(d) for d in dirs]
    name = "layers.1.mlp.down_proj.weight"
    want = sum(dict(t.named_parameters())[name].float() for t in tuned) / 3
    got = dict(merged.named_parameters())[name]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.to(torch.bfloat16).float(), atol=1e-2, rtol=0)


def test_cli_merge_of_a_model_set_loads_for_causal_lm_and_ignores_order(
    models: Path, tmp_path: Path
) -> None:
    dirs = [str(models / f"ft{i}") for i in range(3)]
    common = [
        "merge",
        "--strategy",
        "ties",
        "--param",
        "density=0.5",
        "--base",
        str(models / "base"),
    ]
    assert main([*common, "--out", str(tmp_path / "a"), *dirs, "--shard-size", "50KB"]) == 0
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "b"),
                *reversed(dirs),
                dirs[0],
                "--shard-size",
                "50KB",
            ]
        )
        == 0
    )
    assert hash_dir(tmp_path / "a") == hash_dir(tmp_path / "b")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 96) and torch.isfinite(logits.float()).all()


def _peft_delta(model: torch.nn.Module, module: str) -> torch.Tensor:
    layer = model.get_submodule(f"base_model.model.{module}")
    a = layer.lora_A["default"].weight.float()
    b = layer.lora_B["default"].weight.float()
    return (b @ a) * layer.scaling["default"]


def _input_delta(path: Path, module: str, shape: tuple[int, int]) -> torch.Tensor:
    """Δ = B·A·scale of `module` in the adapter at `path`; zeros when it does not touch it."""
    from crdtd.model.lora import LoraAdapter

    adapter = LoraAdapter(path)
    if module not in adapter.modules:
        return torch.zeros(shape)
    return adapter.delta(module)


def test_mixed_rank_adapters_merge_into_an_adapter_peft_loads(models: Path, tmp_path: Path) -> None:
    adapters = [models / f"lora{i}" for i in range(3)]
    report = merge_adapters(adapters, tmp_path / "merged", schema="linear", rank=14)
    assert report.relative_error < 1e-5  # rank 14 = 2 + 4 + 8 holds the mean exactly
    base = transformers.LlamaForCausalLM.from_pretrained(models / "base", dtype=torch.float32)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "merged")
    for module, shape in (
        ("model.layers.0.self_attn.q_proj", (32, 32)),
        ("model.layers.1.self_attn.o_proj", (32, 32)),
        ("model.layers.1.mlp.up_proj", (64, 32)),
    ):
        want = sum(_input_delta(a, module, shape) for a in adapters) / 3
        torch.testing.assert_close(_peft_delta(loaded, module), want, atol=1e-5, rtol=1e-4)


def test_energy_truncation_reports_its_error_and_sets_per_module_ranks(
    models: Path, tmp_path: Path
) -> None:
    adapters = [models / f"lora{i}" for i in range(3)]
    report = merge_adapters(adapters, tmp_path / "m", schema="ties", energy=0.8)
    assert 0.0 < report.relative_error <= (1 - 0.8) ** 0.5 + 1e-9
    assert all(e.relative_error <= (1 - 0.8) ** 0.5 + 1e-9 for e in report.modules)
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["r"] == report.rank and cfg["lora_alpha"] == report.rank
    ranks = {e.module: e.rank for e in report.modules}
    assert len(set(ranks.values())) > 1  # energy picks per-module ranks
    base = transformers.LlamaForCausalLM.from_pretrained(models / "base", dtype=torch.float32)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "m")
    for module, r in ranks.items():
        layer = loaded.get_submodule(f"base_model.model.{module}")
        assert layer.lora_A["default"].weight.shape[0] == r
        assert layer.scaling["default"] == pytest.approx(1.0)


def test_adapter_merge_is_order_and_duplicate_independent(models: Path, tmp_path: Path) -> None:
    a = [models / f"lora{i}" for i in range(3)]
    merge_adapters(a, tmp_path / "x", schema="dare_ties", rank=4)
    merge_adapters([a[2], a[0], a[1], a[0]], tmp_path / "y", schema="dare_ties", rank=4)
    assert hash_dir(tmp_path / "x") == hash_dir(tmp_path / "y")


def test_cli_detects_adapters_and_prints_the_reconstruction_error(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = [str(models / f"lora{i}") for i in range(2)]
    assert (
        main(["merge", "--strategy", "linear", "--rank", "3", "--out", str(tmp_path / "o"), *a])
        == 0
    )
    out = capsys.readouterr().out
    assert "relative reconstruction error:" in out
    assert (
        main(
            [
                "merge",
                "--strategy",
                "linear",
                "--out",
                str(tmp_path / "p"),
                a[0],
                str(models / "ft0"),
            ]
        )
        == 1
    )
    assert "mix of LoRA adapter" in capsys.readouterr().err


def test_dora_adapters_and_foreign_tensors_are_refused(models: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(models / "lora0", bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputReadError, match="DoRA"):
        merge_adapters([bad], tmp_path / "o", rank=2)


def test_adapters_for_different_model_shapes_are_refused(models: Path, tmp_path: Path) -> None:
    cfg = _config()
    cfg.hidden_size, cfg.intermediate_size = 16, 32
    other = transformers.LlamaForCausalLM(cfg)
    lc = peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    peft.get_peft_model(other, lc).save_pretrained(tmp_path / "small")
    with pytest.raises(TensorMismatchError, match="q_proj"):
        merge_adapters([models / "lora0", tmp_path / "small"], tmp_path / "o", rank=2)


def test_schema_rules_apply_to_adapter_modules(models: Path, tmp_path: Path) -> None:
    adapters = [models / "lora0", models / "lora2"]
    schema = ModelMergeSchema({"re:v_proj": "ties"}, default="linear")
    report = merge_adapters(adapters, tmp_path / "o", schema=schema, rank=32)
    assert report.relative_error < 1e-5  # full rank: the factors hold the merge exactly
    base = transformers.LlamaForCausalLM.from_pretrained(models / "base", dtype=torch.float32)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "o")
    q, v = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"
    deltas = [{"w": _input_delta(a, v, (16, 32))} for a in adapters]
    ties = ModelMerge("ties").merge(deltas, base={"w": torch.zeros(16, 32)}).tensor["w"]
    torch.testing.assert_close(_peft_delta(loaded, v), ties, atol=1e-5, rtol=1e-4)
    mean = sum(_input_delta(a, q, (32, 32)) for a in adapters) / 2
    torch.testing.assert_close(_peft_delta(loaded, q), mean, atol=1e-5, rtol=1e-4)
