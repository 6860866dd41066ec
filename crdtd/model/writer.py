"""Deterministic sharded safetensors writer: same tensors and metadata → same bytes.

The shard plan is fixed before the first tensor is merged (names, shapes and output dtypes
are known up front), so every shard's header is written first and each tensor's place in
its file is known: blocks of any tensor may arrive in any order, from several threads, each
written where it belongs (`os.pwrite`). Tensor order is the natural order of names
(`layers.2` before `layers.10`); header JSON has sorted keys and no whitespace. Files appear under their final
names only when the whole checkpoint is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from crdtd.errors import MergeError
from crdtd.model.io import HF_SIDE_FILES, TensorInfo
from crdtd.model.output_files import (
    DIRECT_MIN_BYTES,
    AlignedStaging,
    OutputFile,
    open_output,
)

DEFAULT_SHARD_SIZE = 5 * 1000**3
CAST_SLICE = 1 << 22  # elements cast to the output dtype per write
INDEX_NAME = "model.safetensors.index.json"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from `5GB`, `500MB`, `2GiB`, `1e6`-free integers; decimal units, binary with `i`."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(text)
        if not m:
            raise MergeError(f"shard size {text!r} is not a size like 5GB, 500MB or 1048576")
        unit = (m.group(2) or "").lower().rstrip("b")
        base = 1024 if unit.endswith("i") else 1000
        power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
        value = int(float(m.group(1)) * base**power)
    if value <= 0:
        raise MergeError(f"shard size must be positive, got {text!r}")
    return value


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders digit runs numerically (`layers.2` < `layers.10`); total order."""
    parts = re.split(r"(\d+)", name)
    key = tuple((1, int(p), "") if p.isdigit() else (0, 0, p) for p in parts)
    return (*key, (2, 0, name))


def plan_shards(tensors: Sequence[TensorInfo], shard_size: int) -> list[list[TensorInfo]]:
    """Greedy split in natural name order: a new shard starts when the next tensor overflows."""
    shards: list[list[TensorInfo]] = []
    current: list[TensorInfo] = []
    size = 0
    for info in sorted(tensors, key=lambda i: natural_key(i.name)):
        if current and size + info.nbytes > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(info)
        size += info.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count: int, stem: str = "model") -> list[str]:
    """Hugging Face file names: `model.safetensors`, or `model-00001-of-00003.safetensors`."""
    if count == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def header_bytes(infos: Sequence[TensorInfo], metadata: Mapping[str, str]) -> bytes:
    """A safetensors header (length prefix + JSON padded to 8 bytes) for tensors in order."""
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for info in infos:
        doc[info.name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


@dataclass(frozen=True)
class WrittenCheckpoint:
    """What a writer produced: file names (relative to the directory) and total tensor bytes."""

    directory: Path
    files: tuple[str, ...]
    total_size: int


class ShardedWriter:
    """Streams tensors, in plan order, into deterministic shards plus an index.

    Use as a context manager: on error the partial files are removed and nothing under the
    final names is touched; on success `commit()` renames everything into place.
    """

    def __init__(
        self,
        out_dir: Path,
        tensors: Sequence[TensorInfo],
        metadata: Mapping[str, str],
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        stem: str = "model",
        write_index: bool | None = None,
        fsync: bool = False,
        direct: bool | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.metadata = dict(metadata)
        self.fsync = fsync
        self.shards = plan_shards(tensors, shard_size)
        self.names = shard_names(len(self.shards), stem)
        self.write_index = len(self.shards) > 1 if write_index is None else write_index
        self.order = [info for shard in self.shards for info in shard]
        self._info = {info.name: info for info in self.order}
        self._file_of = {
            info.name: fname for fname, shard in zip(self.names, self.shards) for info in shard
        }
        self._pos = 0  # index in `order` of the first tensor not yet complete
        self._done = {info.name: 0 for info in self.order}  # elements written per tensor
        self._complete: set[str] = set()
        self._place: dict[str, tuple[int, int]] = {}  # name -> (shard, byte offset in file)
        self._files: list[OutputFile] = []
        self._lock = threading.Lock()
        self._partials: list[Path] = []
        self.total_size = sum(i.nbytes for i in self.order)
        # large outputs bypass the page cache (see crdtd.model.output_files)
        self.direct = self.total_size >= DIRECT_MIN_BYTES if direct is None else direct
        self._staging = AlignedStaging()

    def __enter__(self) -> ShardedWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for index, (fname, shard) in enumerate(zip(self.names, self.shards)):
                path = self._partial(fname)
                self._partials.append(path)
                header = header_bytes(shard, self.metadata)
                size = len(header) + sum(info.nbytes for info in shard)
                out = open_output(path, size, self._staging, self.direct)
                self._files.append(out)
                out.write_bytes(0, header)
                at = len(header)
                for info in shard:
                    self._place[info.name] = (index, at)
                    at += info.nbytes
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()

    def _partial(self, fname: str) -> Path:
        return self.out_dir / f".{fname}.partial"

    def _close_all(self, finish: bool = False) -> None:
        files, self._files = self._files, []
        try:
            if finish:
                for out in files:
                    out.finish(self.fsync)
        finally:
            self._staging.close()  # no write may still be in flight when its file closes
            for out in files:
                out.close()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the whole tensor `name` (cast to the planned float dtype), in plan order."""
        info = self._expect(name)
        if tuple(tensor.shape) != info.shape:
            raise MergeError(
                f"tensor {name!r}: got shape {list(tensor.shape)}, planned {list(info.shape)}"
            )
        self.write_part(name, tensor)

    put = write

    def write_part(self, name: str, part: torch.Tensor) -> None:
        """Append the next entries of tensor `name`, the tensors in plan order (see
        `write_block` for blocks in any order)."""
        with self._lock:
            self._expect(name)
            start = self._done[name]
        self.write_block(name, start, part)

    put_part = write_part

    def write_block(self, name: str, start: int, part: torch.Tensor) -> None:
        """Write flat entries [start, start + part.numel()) of tensor `name` (cast to its
        planned dtype) straight to their place: any tensor, in any order, from any thread
        (every tensor's offset is fixed by the shard plan)."""
        place = self._place.get(name)
        if place is None:
            raise MergeError(f"writer has no tensor {name!r} in its plan")
        info = self._info[name]
        want = info.torch_dtype
        if part.dtype != want and not (part.dtype.is_floating_point and want.is_floating_point):
            raise MergeError(f"tensor {name!r}: got dtype {part.dtype}, planned {want}")
        if start < 0 or start + part.numel() > info.numel:
            raise MergeError(f"tensor {name!r}: more elements than its shape {list(info.shape)}")
        out = self._files[place[0]]
        at = place[1]
        flat = part.detach().reshape(-1)
        item = want.itemsize
        for s0 in range(0, flat.numel(), CAST_SLICE):  # cast slice by slice: no full copy
            out.write(at + (start + s0) * item, flat[s0 : s0 + CAST_SLICE], want)
        with self._lock:
            self._done[name] += part.numel()
            if self._done[name] > info.numel:
                raise MergeError(f"tensor {name!r}: more elements than its shape")
            if self._done[name] == info.numel:
                self._complete.add(name)
            while self._pos < len(self.order) and self.order[self._pos].name in self._complete:
                self._pos += 1

    put_block = write_block

    def _expect(self, name: str) -> TensorInfo:
        if self._pos >= len(self.order) or self.order[self._pos].name != name:
            want = self.order[self._pos].name if self._pos < len(self.order) else "nothing"
            raise MergeError(f"writer expected tensor {want!r} next, got {name!r}")
        return self.order[self._pos]

    def commit(self, side_files: Mapping[str, Path] | None = None) -> WrittenCheckpoint:
        """Rename the shards (and index) into place; copy `side_files` (name → source path)."""
        if self._pos != len(self.order):
            raise MergeError(f"writer closed after {self._pos} of {len(self.order)} tensors")
        self._close_all(finish=True)
        files = list(self.names)
        if self.write_index:
            index = {
                "metadata": {"total_size": self.total_size, **self.metadata},
                "weight_map": {name: self._file_of[name] for name in sorted(self._file_of)},
            }
            path = self._partial(INDEX_NAME)
            self._partials.append(path)
            path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            files.append(INDEX_NAME)
        for fname in sorted(side_files or {}):
            path = self._partial(fname)
            self._partials.append(path)
            shutil.copyfile((side_files or {})[fname], path)
            files.append(fname)
        for fname in files:
            os.replace(self._partial(fname), self.out_dir / fname)
        self._partials = []
        if self.fsync:
            dfd = os.open(self.out_dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return WrittenCheckpoint(self.out_dir, tuple(sorted(files)), self.total_size)

    def abort(self) -> None:
        """Remove partial files; the output directory is left as it was."""
        try:
            self._close_all()
        finally:
            for p in self._partials:
                p.unlink(missing_ok=True)
            self._partials = []


def side_files_of(root: Path | None) -> dict[str, Path]:
    """`config.json` and tokenizer files present in a model directory (name → path)."""
    if root is None:
        return {}
    return {n: root / n for n in HF_SIDE_FILES if (root / n).is_file()}


def check_output_dir(out_dir: Path) -> None:
    """Refuse to write into a directory that already holds a checkpoint."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MergeError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir():
        clash = sorted(
            p.name
            for p in out_dir.iterdir()
            if p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json")
        )
        if clash:
            raise MergeError(
                f"output directory {out_dir} already holds a checkpoint ({clash[0]}); "
                "choose an empty directory"
            )
