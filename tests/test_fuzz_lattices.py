"""Generated hostile bytes against every lattice decoder: only DecodeError comes out."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd import lattice
from crdtd.errors import DecodeError
from crdtd.lattice import decode
from tests.generators import ALL_LATTICES
from tests.mutations import QUICK_AND_DEEP, corrupted

NAMES = sorted(ALL_LATTICES)


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
@pytest.mark.parametrize("name", NAMES)
def test_corrupted_lattice_bytes_decode_canonically_or_raise_decode_error(name, examples):
    cls = getattr(lattice, name)
    encodings = ALL_LATTICES[name].map(lambda v: v.to_bytes())

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(corrupted(encodings))
    def check(data):
        for decoder in (decode, cls.from_bytes):
            try:
                value = decoder(data)
            except DecodeError:
                continue
            assert value.to_bytes() == data  # whatever decodes is canonical and re-encodes
            value.join(value)  # and is a usable value

    check()


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=256))
def test_random_bytes_get_decode_error_from_every_lattice_type(data):
    for name in NAMES:
        with contextlib.suppress(DecodeError):
            getattr(lattice, name).from_bytes(data)
