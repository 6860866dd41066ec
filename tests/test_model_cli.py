"""`crdtd merge` from the command line: every strategy, listing, params and error messages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crdtd.model.cli import main, parse_params
from crdtd.strategies import registry
from tests.model_generators import (
    MAX_INPUTS,
    TINY_SHAPES,
    cli_argv,
    save_checkpoint,
    tiny_tensors,
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-models")
    base = tiny_tensors(0, dtype=torch.bfloat16)
    save_checkpoint(root / "base", base)
    for i in range(MAX_INPUTS):
        save_checkpoint(root / f"m{i}", tiny_tensors(i + 1, around=base, dtype=torch.bfloat16))
    return root


@pytest.mark.parametrize("name", registry.names())
def test_cli_merges_a_tiny_model_set_with_every_strategy(
    model_dirs: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    assert main(cli_argv(model_dirs, name, out)) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(n for n, _ in TINY_SHAPES)
    for shard in set(index["weight_map"].values()):
        for t in load_file(str(out / shard)).values():
            assert t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all()
    assert (out / "config.json").exists()


def test_list_prints_every_registered_strategy_one_per_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["merge", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == registry.names()


def test_params_parse_scalars_gradients_and_per_model_lists() -> None:
    glob, per = parse_params(["density=0.2", "t=[0, 0.5, 1]", "weight=1,2.5", "normalize=false"], 2)
    assert glob == {"density": 0.2, "t": [0, 0.5, 1], "normalize": False}
    assert per == [{"weight": 1}, {"weight": 2.5}]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategy", "tiez", "M"], "unknown strategy 'tiez'"),
        (["--strategy", "ties", "--param", "density=2", "--base", "M", "M"], "density"),
        (["--strategy", "ties", "M"], "needs a base"),
        (["--strategy", "linear", "--param", "weight=1,2,3", "M"], "3 comma-separated values"),
        (["--strategy", "linear", "--param", "nonsense", "M"], "KEY=VALUE"),
        (["M"], "--strategy"),
        (["--strategy", "linear", "--device", "cuda", "M"], "cuda"),
        (["--strategy", "linear", "--rank", "4", "M"], "LoRA"),
        (["--strategy", "linear", "--extra", "fisher=x", "--extra", "fisher=y", "M"], "more times"),
    ],
)
def test_cli_errors_exit_1_with_a_message_naming_the_problem(
    model_dirs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present, so --device cuda is valid here")
    argv = [str(model_dirs / "m0") if a == "M" else a for a in argv]
    assert main(["merge", "--out", str(tmp_path / "o"), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_tensor_error_names_the_tensor_and_the_directory(
    model_dirs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = dict(tiny_tensors(1, dtype=torch.bfloat16))
    del partial["model.layers.1.mlp.weight"]
    save_checkpoint(tmp_path / "partial", partial)
    rc = main(
        [
            "merge",
            "-s",
            "linear",
            "-o",
            str(tmp_path / "o"),
            str(model_dirs / "m0"),
            str(tmp_path / "partial"),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.weight" in err and "partial" in err


def test_dtype_flag_sets_the_output_dtype(model_dirs: Path, tmp_path: Path) -> None:
    dirs = [str(model_dirs / "m0"), str(model_dirs / "m1")]
    assert (
        main(["merge", "-s", "linear", "--dtype", "float32", "-o", str(tmp_path / "o"), *dirs]) == 0
    )
    tensors = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}


def test_merge_verb_is_available_from_the_crdtd_command(capsys: pytest.CaptureFixture[str]) -> None:
    from crdtd import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "merge" not in sub.choices:
        pytest.skip("crdtd.cli does not wire crdtd.model.cli yet")
    assert cli.main(["merge", "--list"]) == 0
    assert "ties" in capsys.readouterr().out.split()
