"""JSON nested too deep to parse is a typed error (or plain text), never a RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtd.errors import InputReadError, MemoryRecordError
from crdtd.kinds.memory import MemorySettings, check_records
from crdtd.model.io import SafetensorsFile
from crdtd.node.materialise import parse_param

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_safetensors_header_nested_too_deep_is_an_input_read_error(tmp_path: Path) -> None:
    header = DEEP.encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(InputReadError, match="nested too deep"):
        SafetensorsFile(path)


def test_a_materialise_parameter_nested_too_deep_stays_text() -> None:
    assert parse_param(DEEP) == DEEP


def test_a_memory_record_nested_too_deep_is_a_memory_record_error() -> None:
    line = '{"id": "m1", "text": ' + DEEP + "}\n"
    with pytest.raises(MemoryRecordError, match="nested too deep"):
        check_records(line.encode(), MemorySettings(), "memory/agents")
