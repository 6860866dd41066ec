"""Reading checkpoints tensor by tensor: safetensors files, sharded indexes, HF directories.

Files are memory-mapped and each tensor is a zero-copy view of the map. After a tensor has
been used its pages are dropped from the process (`madvise(MADV_DONTNEED)`), so resident
memory stays near one tensor per input instead of growing to the whole model, which a
`safe_open` handle kept open for the merge would do.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from crdtd.errors import InputReadError, echo
from crdtd.model.identity import content_id, tensor_digest, tensor_hasher

ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST: dict[torch.dtype, str] = {v: k for k, v in ST_TO_TORCH.items()}

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}

MAX_HEADER = 100 << 20
MAX_HASH_THREADS = 8  # each holds at most one piece of file pages
DIGEST_PIECE = 8 << 20  # bytes hashed between page drops
PieceVisitor = Callable[[memoryview, int], None]
"""Sees a tensor's bytes piece by piece while they are hashed: (piece, its byte offset)."""
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+
PAGE = mmap.PAGESIZE
HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """A floating torch dtype from a user spelling (`bfloat16`, `bf16`, `fp32`, ...)."""
    if isinstance(name, torch.dtype):
        if not name.is_floating_point:
            raise InputReadError(f"output dtype must be floating point, got {name}")
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        known = ", ".join(sorted(_DTYPE_ALIASES))
        raise InputReadError(f"unknown dtype {echo(name)} (known: {known})")
    return _DTYPE_ALIASES[key]


def st_dtype(dtype: torch.dtype) -> str:
    """The safetensors spelling of a torch dtype."""
    try:
        return TORCH_TO_ST[dtype]
    except KeyError:
        raise InputReadError(f"dtype {dtype} cannot be stored in safetensors") from None


@dataclass(frozen=True)
class TensorInfo:
    """Name, safetensors dtype and shape of one stored tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return ST_TO_TORCH[self.dtype]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point


class SafetensorsFile:
    """One `.safetensors` file, memory-mapped; tensors are zero-copy views of the map."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fh = open(path, "rb")  # noqa: SIM115  (closed below; the map outlives it)
        except OSError as err:
            raise InputReadError(f"{path}: cannot open: {err.strerror}") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise InputReadError(f"{path}: not a safetensors file (only {size} bytes)")
            n = int.from_bytes(fh.read(8), "little")
            if n > min(size - 8, MAX_HEADER):
                raise InputReadError(f"{path}: not a safetensors file (header length {n})")
            try:
                header = json.loads(fh.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InputReadError(f"{path}: safetensors header is not JSON: {err}") from None
            except RecursionError:
                raise InputReadError(f"{path}: safetensors header is nested too deep") from None
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        if not isinstance(header, dict):
            raise InputReadError(f"{path}: safetensors header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in dict(meta).items()}
        self.infos: dict[str, TensorInfo] = {}
        self._span: dict[str, tuple[int, int]] = {}
        data_start = 8 + n
        for name in sorted(header):
            info, start, end = _parse_entry(path, name, header[name])
            if data_start + end > size:
                raise InputReadError(f"{path}: tensor {name!r} extends past the end of the file")
            self.infos[name] = info
            self._span[name] = (data_start + start, data_start + end)
        self._fd = os.open(path, os.O_RDONLY)

    def view(self, name: str) -> torch.Tensor:
        """Tensor `name` as a view of the map (no copy; valid until `close`)."""
        info = self.infos[name]
        start, end = self._span[name]
        if end == start:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        flat = torch.frombuffer(self._map, dtype=info.torch_dtype, count=info.numel, offset=start)
        return flat.view(info.shape)

    def raw(self, name: str) -> memoryview:
        """The raw little-endian bytes of tensor `name` (a view of the map)."""
        start, end = self._span[name]
        return memoryview(self._map)[start:end]

    def release(self, name: str) -> None:
        """Drop tensor `name`'s pages from this process; the next read faults them back in.

        Cheap to repeat: pages never touched, or already dropped, cost nothing.
        """
        start, end = self._span[name]
        self._drop(start, end)

    def _drop(self, start: int, end: int) -> None:
        aligned = start - start % PAGE
        if end > aligned:
            self._map.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)

    def read_into(self, name: str, start: int, stop: int, out: memoryview) -> None:
        """Entries [start, stop) of flat tensor `name`, raw, into `out` (its first bytes).

        A positioned read (`os.preadv`, GIL released): no pages mapped into this process,
        safe from several threads at once.
        """
        item = self.infos[name].torch_dtype.itemsize
        pos = self._span[name][0] + start * item
        want = (stop - start) * item
        done = 0
        while done < want:
            n = os.preadv(self._fd, [out[done:want]], pos + done)
            if n <= 0:
                raise InputReadError(f"{self.path}: tensor {name!r} is truncated on disk")
            done += n

    def digest(self, name: str, visit: PieceVisitor | None = None) -> bytes:
        """BLAKE3 digest of tensor `name`'s bytes, mapping each piece in one call before hashing it
        (`MADV_POPULATE_READ`, where the kernel has it) and dropping it after; `visit(piece,
        offset)` sees each piece (its byte offset in the tensor) while it is mapped."""
        start, end = self._span[name]
        h = tensor_hasher()
        view = memoryview(self._map)
        try:
            for lo in range(start, end, DIGEST_PIECE):
                hi = min(end, lo + DIGEST_PIECE)
                aligned = lo - lo % PAGE
                with contextlib.suppress(OSError, ValueError):
                    self._map.madvise(MADV_POPULATE_READ, aligned, hi - aligned)
                h.update(view[lo:hi])
                if visit is not None:
                    visit(view[lo:hi], lo - start)
                self._drop(lo, hi)
        finally:
            view.release()
        return h.digest()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(BufferError):  # a view is still alive; freed with it
            self._map.close()


def _parse_entry(path: Path, name: str, entry: object) -> tuple[TensorInfo, int, int]:
    """Validate one header entry; return its info and data offsets."""
    try:
        assert isinstance(entry, dict)
        dtype = str(entry["dtype"])
        shape = tuple(int(x) for x in entry["shape"])
        start, end = (int(x) for x in entry["data_offsets"])
    except (AssertionError, KeyError, TypeError, ValueError):
        raise InputReadError(f"{path}: malformed header entry for tensor {name!r}") from None
    if dtype not in ST_TO_TORCH:
        raise InputReadError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    info = TensorInfo(name, dtype, shape)
    if any(d < 0 for d in shape) or start < 0 or end - start != info.nbytes:
        raise InputReadError(
            f"{path}: tensor {name!r} offsets {start}..{end} do not fit shape {list(shape)} {dtype}"
        )
    return info, start, end


@runtime_checkable
class TensorSource(Protocol):
    """Named tensors read one at a time; what the merge engine consumes."""

    @property
    def label(self) -> str: ...

    @property
    def root(self) -> Path | None: ...

    @property
    def infos(self) -> Mapping[str, TensorInfo]: ...

    def view(self, name: str) -> torch.Tensor: ...

    def raw(self, name: str) -> memoryview: ...

    def release(self, name: str) -> None: ...

    def close(self) -> None: ...


class FileCheckpoint:
    """A checkpoint stored as one or more safetensors files (tensor names unique across files)."""

    def __init__(self, label: str, files: Sequence[Path], root: Path | None) -> None:
        self.label = label
        self.root = root
        self.files = [SafetensorsFile(p) for p in files]
        self._where: dict[str, SafetensorsFile] = {}
        infos: dict[str, TensorInfo] = {}
        for f in self.files:
            for name, info in f.infos.items():
                if name in infos:
                    raise InputReadError(f"{label}: tensor {name!r} appears in two files")
                infos[name] = info
                self._where[name] = f
        self.infos = infos

    def restrict(self, names: Iterable[str]) -> None:
        """Keep only `names` (an index's weight map may list a subset of a shard's tensors)."""
        keep = set(names)
        self.infos = {n: i for n, i in self.infos.items() if n in keep}

    def view(self, name: str) -> torch.Tensor:
        return self._where[name].view(name)

    def raw(self, name: str) -> memoryview:
        return self._where[name].raw(name)

    def release(self, name: str) -> None:
        self._where[name].release(name)

    def read_into(self, name: str, start: int, stop: int, out: memoryview) -> None:
        """Entries [start, stop) of flat tensor `name`, raw, into `out` (see SafetensorsFile)."""
        self._where[name].read_into(name, start, stop, out)

    def digest(self, name: str, visit: PieceVisitor | None = None) -> bytes:
        """BLAKE3 digest of tensor `name`'s bytes (see `SafetensorsFile.digest`)."""
        return self._where[name].digest(name, visit)

    def close(self) -> None:
        for f in self.files:
            f.close()


class DictCheckpoint:
    """An in-memory checkpoint: a mapping of names to tensors (the Python API's input)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str = "<dict>") -> None:
        self.label = label
        self.root: Path | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        infos: dict[str, TensorInfo] = {}
        for name in sorted(tensors):
            t = tensors[name]
            if not isinstance(t, torch.Tensor):
                raise InputReadError(f"{label}: value for {name!r} is not a torch.Tensor")
            t = t.detach()
            infos[str(name)] = TensorInfo(str(name), st_dtype(t.dtype), tuple(t.shape))
            self._tensors[str(name)] = t
        self.infos = infos

    def view(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def raw(self, name: str) -> memoryview:
        t = self._tensors[name].cpu().contiguous().reshape(-1)
        return t.view(torch.uint8).numpy().data

    def release(self, name: str) -> None:
        return None

    def close(self) -> None:
        return None


CheckpointLike = str | os.PathLike[str] | Mapping[str, torch.Tensor] | TensorSource


def open_checkpoint(spec: CheckpointLike, label: str | None = None) -> TensorSource:
    """Open a dict of tensors, a `.safetensors` file, an index JSON or a model directory."""
    if isinstance(spec, TensorSource):
        return spec
    if isinstance(spec, Mapping):
        return DictCheckpoint(spec, label or "<dict>")
    path = Path(os.fspath(spec))
    name = label or str(path)
    if path.is_dir():
        return _open_dir(path, name)
    if not path.exists():
        raise InputReadError(f"{path}: no such file or directory")
    if path.name.endswith(".index.json"):
        return _open_index(path, name)
    if path.suffix == ".safetensors":
        return FileCheckpoint(name, [path], path.parent)
    raise InputReadError(f"{path}: not a .safetensors file, index or model directory")


def _open_dir(path: Path, label: str) -> TensorSource:
    """A Hugging Face style directory: an index if there is one, else its safetensors files."""
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise InputReadError(f"{path}: several safetensors indexes: {[p.name for p in indexes]}")
    if indexes:
        return _open_index(indexes[0], label)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        hint = (
            " (only PyTorch .bin weights; convert them to safetensors)"
            if any(path.glob("*.bin"))
            else ""
        )
        raise InputReadError(f"{path}: no .safetensors files{hint}")
    return FileCheckpoint(label, files, path)


def _open_index(index: Path, label: str) -> TensorSource:
    """A sharded checkpoint described by `model.safetensors.index.json`."""
    try:
        doc = json.loads(index.read_text())
        weight_map = dict(doc["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputReadError(f"{index}: unreadable safetensors index: {err}") from None
    shard_names = sorted({str(v) for v in weight_map.values()})
    for s in shard_names:
        if Path(s).is_absolute() or ".." in Path(s).parts:
            raise InputReadError(f"{index}: shard path {s!r} leaves the checkpoint directory")
    ckpt = FileCheckpoint(label, [index.parent / s for s in shard_names], index.parent)
    for name in sorted(weight_map):
        where = ckpt._where.get(name)
        if where is None or where.path.name != Path(str(weight_map[name])).name:
            raise InputReadError(
                f"{index}: tensor {name!r} is not in shard {weight_map[name]!r} as the index says"
            )
    ckpt.restrict(weight_map)
    return ckpt


def iter_names(source: TensorSource) -> Iterator[str]:
    """Tensor names of `source`, sorted."""
    return iter(sorted(source.infos))


def source_content_id(source: TensorSource, pool: ThreadPoolExecutor | None = None) -> bytes:
    """Content id of one source (see `crdtd.model.identity`)."""
    return content_ids([source], pool)[0]


def content_ids(
    sources: Sequence[TensorSource],
    pool: ThreadPoolExecutor | None = None,
    visits: Mapping[tuple[int, str], PieceVisitor] | None = None,
) -> list[bytes]:
    """Content ids of many sources, hashing tensors in parallel threads (GIL released);
    `visits[(source index, name)]` sees that tensor's bytes piece by piece as they are
    hashed (only sources with their own `digest` have pieces to show)."""
    jobs = [(i, name) for i, s in enumerate(sources) for name in sorted(s.infos)]
    visits = visits or {}

    def digest(job: tuple[int, str]) -> bytes:
        src, name = sources[job[0]], job[1]
        own = getattr(src, "digest", None)
        if own is not None:
            visit = visits.get(job)
            return bytes(own(name) if visit is None else own(name, visit))
        data = src.raw(name)
        try:
            return tensor_digest(data, lambda: src.release(name))
        finally:
            data.release()

    if pool is None:
        workers = max(1, min(len(jobs), os.cpu_count() or 1, MAX_HASH_THREADS))
        with ThreadPoolExecutor(workers, thread_name_prefix="crdtd-hash") as own:
            digests = list(own.map(digest, jobs))
    else:
        digests = list(pool.map(digest, jobs))
    per: list[list[tuple[str, str, tuple[int, ...], bytes]]] = [[] for _ in sources]
    for (i, name), d in zip(jobs, digests):
        info = sources[i].infos[name]
        per[i].append((name, info.dtype, info.shape, d))
    return [content_id(rows) for rows in per]
