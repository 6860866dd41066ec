"""`--device cuda`: merging on a GPU agrees with the CPU for every strategy (needs a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crdtd.model.cli import main
from crdtd.strategies import registry
from tests.model_generators import MAX_INPUTS, cli_argv, save_checkpoint, tiny_tensors

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda-models")
    base = tiny_tensors(0)
    save_checkpoint(root / "base", base)
    for i in range(MAX_INPUTS):
        save_checkpoint(root / f"m{i}", tiny_tensors(i + 1, around=base))
    return root


def _load(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.mark.parametrize("name", registry.names())
def test_gpu_merge_matches_the_cpu_merge(model_dirs: Path, tmp_path: Path, name: str) -> None:
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert main(cli_argv(model_dirs, name, cpu)) == 0
    assert main([*cli_argv(model_dirs, name, gpu), "--device", "cuda"]) == 0
    a, b = _load(cpu), _load(gpu)
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=f"{name}: {key}")
