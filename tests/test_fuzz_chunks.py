"""Corrupted safetensors headers against the chunker: a file that is not a valid
safetensors file is chunked as plain bytes, never a traceback."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.store.chunks import CHUNK_SIZE, chunk_plan, safetensors_boundaries
from crdtd.store.store import NodeStore
from tests.mutations import QUICK_AND_DEEP, corrupted


def _file(header: bytes, body: int) -> bytes:
    return struct.pack("<Q", len(header)) + header + bytes(body)


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """A small well-formed safetensors file: a JSON header of tensors, then their bytes."""
    sizes = draw(st.lists(st.integers(0, 64), min_size=1, max_size=4))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for i, n in enumerate(sizes):
        header[f"t{i}"] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
    return _file(json.dumps(header).encode(), offset)


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_safetensors_headers_give_boundaries_or_none(examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(corrupted(safetensors_files()))
    def check(data: bytes) -> None:
        cuts = safetensors_boundaries(data, len(data))
        if cuts is not None:
            assert cuts == sorted(cuts) and cuts[0] == 0 and cuts[-1] == len(data)

    check()


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_a_file_whose_header_nests_too_deep_is_chunked_as_plain_bytes(
    tmp_path: Path, opener: bytes, closer: bytes
) -> None:
    header = opener * 100_000 + b"1" + closer * 100_000
    data = _file(header, 10)
    assert safetensors_boundaries(data, len(data)) is None
    path = tmp_path / "deep.safetensors"
    path.write_bytes(data)
    assert len(data) <= CHUNK_SIZE and chunk_plan(path) == [(0, len(data))]
    with NodeStore.open(tmp_path / "store") as store:
        assert store.ingest_file(path).size == len(data)
