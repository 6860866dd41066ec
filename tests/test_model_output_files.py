"""Direct (O_DIRECT) and buffered output files write the same checkpoint bytes."""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from crdtd.errors import MergeError
from crdtd.model.io import TensorInfo
from crdtd.model.output_files import ALIGN, AlignedStaging, DirectFile
from crdtd.model.writer import ShardedWriter

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I8": torch.int8}


def _direct_works(tmp_path: Path) -> None:
    probe = DirectFile.open(tmp_path / "probe", ALIGN, AlignedStaging())
    if probe is None:
        pytest.skip("this file system refuses O_DIRECT")
    probe.close()


def _write(
    out: Path,
    tensors: dict[str, torch.Tensor],
    infos: list[TensorInfo],
    block: int,
    direct: bool,
    seed: int,
) -> None:
    """Every tensor in blocks of `block` entries, the blocks in a shuffled order, 3 threads."""
    with ShardedWriter(out, infos, {"format": "pt"}, shard_size=3000, direct=direct) as w:
        assert w.direct == direct
        work = [
            (name, a) for name, t in tensors.items() for a in range(0, max(1, t.numel()), block)
        ]
        random.Random(seed).shuffle(work)

        def put(item: tuple[str, int]) -> None:
            name, a = item
            flat = tensors[name].reshape(-1)
            w.write_block(
                name,
                a,
                flat[a : a + block].float() if flat.is_floating_point() else flat[a : a + block],
            )

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(put, work))
        w.commit()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(
        st.tuples(st.sampled_from(sorted(DTYPES)), st.integers(0, 2500)), min_size=1, max_size=6
    ),
    block=st.integers(1, 1500),
    seed=st.integers(0, 1000),
)
def test_direct_and_buffered_writes_give_identical_bytes_in_any_block_order(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[tuple[str, int]],
    block: int,
    seed: int,
) -> None:
    tmp = tmp_path_factory.mktemp("out")
    _direct_works(tmp)
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    infos = []
    for i, (dt, n) in enumerate(sizes):
        dtype = DTYPES[dt]
        t = torch.randn(n, generator=g) * 50
        tensors[f"t.{i}"] = t.to(dtype)
        infos.append(TensorInfo(f"t.{i}", dt, (n,)))
    _write(tmp / "buffered", tensors, infos, block, False, seed)
    _write(tmp / "direct", tensors, infos, block, True, seed + 1)
    files = sorted(p.name for p in (tmp / "buffered").iterdir())
    assert files == sorted(p.name for p in (tmp / "direct").iterdir())
    for name in files:
        assert (tmp / "direct" / name).read_bytes() == (tmp / "buffered" / name).read_bytes()
    loaded: dict[str, torch.Tensor] = {}
    for f in (tmp / "direct").glob("*.safetensors"):
        loaded.update(load_file(str(f)))
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)


def test_a_page_never_completed_is_an_error_not_a_hole(tmp_path: Path) -> None:
    _direct_works(tmp_path)
    out = DirectFile.open(tmp_path / "f", 3 * ALIGN, AlignedStaging())
    assert out is not None
    out.write(0, torch.ones(ALIGN // 4 + 3), torch.float32)  # one whole page and a part
    with pytest.raises(MergeError, match="page 1 never arrived"):
        out.finish(False)
    out.close()


def test_bytes_written_twice_are_refused(tmp_path: Path) -> None:
    _direct_works(tmp_path)
    out = DirectFile.open(tmp_path / "f", ALIGN, AlignedStaging())
    assert out is not None
    out.write_bytes(0, b"x" * 100)
    with pytest.raises(MergeError, match="more than once"):
        out.write_bytes(50, b"y" * (ALIGN - 50))
    out.close()


def test_a_platform_without_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr("os.O_DIRECT", raising=False)  # as on macOS: no such flag
    assert DirectFile.open(tmp_path / "probe", ALIGN, AlignedStaging()) is None
    t = torch.arange(5000, dtype=torch.float32)
    with ShardedWriter(tmp_path / "o", [TensorInfo("w", "F32", (5000,))], {}, direct=True) as w:
        w.write_block("w", 0, t)
        w.commit()
    assert torch.equal(load_file(str(tmp_path / "o" / "model.safetensors"))["w"], t)


def test_a_write_the_disk_refuses_fails_finish_with_the_os_error(tmp_path: Path) -> None:
    _direct_works(tmp_path)
    staging = AlignedStaging()
    out = DirectFile.open(tmp_path / "f", 4 * ALIGN, staging)
    assert out is not None
    (tmp_path / "ro").write_bytes(b"")
    os.close(out.fd)
    out.fd = os.open(tmp_path / "ro", os.O_RDONLY)  # the whole-page write now gets EBADF
    out.write(0, torch.ones(ALIGN), torch.float32)  # four whole pages: handed to the writers
    with pytest.raises(OSError):
        out.finish(False)
    staging.close()
    out.close()


def test_a_staging_buffer_is_not_reused_while_its_write_is_in_flight() -> None:
    staging = AlignedStaging()
    release = threading.Event()
    bufs = []
    for _ in range(AlignedStaging.DEPTH):  # every buffer of this thread busy writing
        buf, slot = staging.acquire(ALIGN)
        bufs.append(buf)
        staging.submit(slot, release.wait)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    t0 = time.monotonic()
    again, _ = staging.acquire(ALIGN)
    assert release.is_set(), "a buffer was handed out while its write was still running"
    assert time.monotonic() - t0 >= 0.2
    assert again is bufs[0]  # the first slot again, once its write was done
    staging.drain()
    staging.close()
    timer.join()
