"""mergekit-style YAML configs (plus crdtd rules) drive the same merge as the flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crdtd.errors import ConfigError
from crdtd.model.cli import main
from crdtd.model.yaml_config import load_config
from tests.model_generators import hash_dir, save_checkpoint, tiny_tensors


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    base = tiny_tensors(0)
    save_checkpoint(tmp_path / "base", base)
    for i in range(2):
        save_checkpoint(tmp_path / f"m{i}", tiny_tensors(i + 1, around=base))
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mergekit_ties_config_matches_the_equivalent_flags(models: Path) -> None:
    cfg = _write(
        models / "merge.yml",
        """
merge_method: ties
base_model: base
models:
  - model: m0
    parameters: {weight: 0.7, density: 0.5}
  - model: m1
    parameters: {weight: 0.3, density: 0.5}
parameters:
  normalize: true
  int8_mask: true
dtype: float32
semantics: crdtd
""",
    )
    assert main(["merge", "--config", str(cfg), "--out", str(models / "a")]) == 0
    flags = ["merge", "-s", "ties", "--base", str(models / "base"), "--param", "weight=0.7,0.3"]
    flags += ["--param", "density=0.5", "--param", "normalize=true", "--dtype", "float32"]
    assert main([*flags, "-o", str(models / "b"), str(models / "m0"), str(models / "m1")]) == 0
    a = load_file(str(models / "a" / "model.safetensors"))
    b = load_file(str(models / "b" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name])


def test_rules_and_gradients_select_per_tensor_strategies(models: Path) -> None:
    cfg = _write(
        models / "merge.yml",
        """
merge_method: linear
semantics: crdtd
models: [m0, m1]
rules:
  - match: model.layers.0-1.mlp.*
    merge_method: slerp
    parameters:
      t: [0.0, 1.0]
""",
    )
    assert main(["merge", "-c", str(cfg), "-o", str(models / "o")]) == 0
    out = load_file(str(models / "o" / "model.safetensors"))
    m0 = tiny_tensors(1, around=tiny_tensors(0))
    m1 = tiny_tensors(2, around=tiny_tensors(0))
    torch.testing.assert_close(
        out["lm_head.weight"], (m0["lm_head.weight"] + m1["lm_head.weight"]) / 2
    )
    for layer in (0, 1):  # slerp at t=0 and t=1 returns one endpoint each: a model, not a mean
        got = out[f"model.layers.{layer}.mlp.weight"]
        ends = [m[f"model.layers.{layer}.mlp.weight"] for m in (m0, m1)]
        assert any(torch.allclose(got, e, atol=1e-6) for e in ends)


def test_config_paths_resolve_against_the_config_file_not_the_cwd(
    models: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cfg = _write(models / "merge.yml", "merge_method: linear\nmodels: [m0, m1]\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    loaded = load_config(cfg)
    assert [Path(c.weights) for c in loaded.inputs] == [models / "m0", models / "m1"]


def test_config_merge_is_order_independent(models: Path) -> None:
    one = _write(models / "one.yml", "merge_method: linear\nmodels: [m0, m1]\n")
    two = _write(models / "two.yml", "merge_method: linear\nmodels: [m1, m0, m1]\n")
    assert main(["merge", "-c", str(one), "-o", str(models / "x")]) == 0
    assert main(["merge", "-c", str(two), "-o", str(models / "y")]) == 0
    assert hash_dir(models / "x") == hash_dir(models / "y")


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: [m0]\n", "merge_method"),
        ("merge_method: linear\nmodels: [m0]\nbogus: 1\n", "bogus"),
        ("merge_method: linear\nslices: []\n", "slices"),
        ("merge_method: linear\nmodels: [org/hub-model]\n", "not a local path"),
        ("merge_method: linear\nmodels: [{model: m0, colour: red}]\n", "colour"),
        ("merge_method: linear\nmodels: [m0]\nrules: [{merge_method: ties}]\n", "match"),
        ("merge_method: linear\nmodels: [m0]\ntokenizer_source: union\n", "tokenizer_source"),
        ("merge_method: linear\nmodels: [m0]\nsemantics: mergekitt\n", "semantics"),
        ("merge_method: ties\nmodels: [m0]\ndtype: float8\n", "dtype"),
        ("merge_method: linear\nmodels: [m0]\n  bad: [indent\n", "invalid YAML"),
    ],
)
def test_bad_configs_name_the_key(models: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(models / "bad.yml", text))


def test_config_and_flags_are_not_mixed(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(models / "merge.yml", "merge_method: linear\nmodels: [m0, m1]\n")
    assert main(["merge", "-c", str(cfg), "-s", "ties", "-o", str(models / "o")]) == 1
    assert "--config" in capsys.readouterr().err


def test_a_per_model_parameter_typo_is_reported_against_the_config_entry(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _write(
        models / "merge.yml",
        """
merge_method: ties
base_model: base
models:
  - model: m0
    parameters: {weight: 0.5, density: 0.5}
  - model: m1
    parameters: {weight: 0.5, densty: 0.5}
""",
    )
    assert main(["merge", "-c", str(cfg), "-o", str(models / "o")]) == 1
    err = capsys.readouterr().err
    assert "models[1] (m1)" in err and "'densty'" in err
    assert "tensor" not in err
    assert not (models / "o").exists()
