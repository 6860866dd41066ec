"""Entry headers are canonical, content-addressed, and decoded strictly."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.errors import MalformedEntryError
from crdtd.state.entry import (
    MAX_NAMESPACE,
    Entry,
    EquivocationProof,
    Kind,
    chain_next,
    make_contribution,
    make_removal,
)
from tests.entry_generators import admin_key, entries, fixed_keys

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
D = hashlib.sha256(b"payload").digest()
AUTHOR = hashlib.sha256(b"author").digest()


def wire(header: list[object], sig: bytes = b"\x00" * 64) -> bytes:
    """Wrap a raw header array in the wire form with a placeholder Ed25519 signature."""
    return msgpack.packb([1, msgpack.packb(header), [["ed25519", sig]]])


def contribution_header(**over: object) -> list[object]:
    fields: dict[str, object] = {
        "version": 1,
        "kind": 1,
        "author": AUTHOR,
        "seq": 1,
        "prev": None,
        "body": ["model/x", "blob", D, 7, None, []],
    }
    fields.update(over)
    return list(fields.values())


@SETTINGS
@given(entries())
def test_entry_bytes_survive_round_trip_unchanged(entry: Entry) -> None:
    data = entry.to_bytes()
    again = Entry.from_bytes(data)
    assert again == entry
    assert again.to_bytes() == data
    assert again.header_bytes == entry.header_bytes
    assert again.id == hashlib.sha256(entry.header_bytes).digest()
    assert again.kind == entry.kind and again.body == entry.body


def test_contribution_fields_are_readable_on_the_entry() -> None:
    key = fixed_keys()[0]
    e = make_contribution(
        key, 1, None, "model/mlp", D, 7, payload_kind="safetensors", metadata={"num_examples": 12}
    )
    assert (e.kind, e.author, e.seq, e.prev) == (Kind.CONTRIBUTION, key.key_id, 1, None)
    assert e.namespace == "model/mlp" and e.payload_digest == D and e.payload_size == 7
    assert e.metadata == {"num_examples": 12}
    with pytest.raises(AttributeError, match="contribution entry has no field 'targets'"):
        _ = e.targets


def test_metadata_key_order_does_not_change_the_id() -> None:
    key = fixed_keys()[0]
    a = make_contribution(key, 1, None, "ns", D, 1, metadata={"b": 1, "a": "x", "c": None})
    b = make_contribution(key, 1, None, "ns", D, 1, metadata={"c": None, "a": "x", "b": 1})
    assert a.id == b.id


def test_float_metadata_is_stored_as_its_decimal_string() -> None:
    e = make_contribution(fixed_keys()[0], 1, None, "ns", D, 1, metadata={"accuracy": 0.93})
    assert e.metadata == {"accuracy": "0.93"}
    with pytest.raises(MalformedEntryError, match="accuracy"):
        make_contribution(fixed_keys()[0], 1, None, "ns", D, 1, metadata={"accuracy": float("nan")})


def test_chain_next_links_seq_and_prev() -> None:
    key = fixed_keys()[1]
    first = make_contribution(key, *chain_next(None), "ns", D, 1)
    second = make_contribution(key, *chain_next(first), "ns", D, 2)
    assert (first.seq, first.prev, second.seq, second.prev) == (1, None, 2, first.id)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (wire(contribution_header()) + b"\x00", "entry: not a single msgpack value"),
        (wire(contribution_header(kind=9)), "header.kind: unknown kind 9"),
        (wire(contribution_header(author=b"short")), "header.author: expected 32 bytes"),
        (wire(contribution_header(seq=0)), "header.seq"),
        (wire(contribution_header(seq=True)), "header.seq: expected integer, got bool"),
        (wire(contribution_header(prev=D)), "header.prev: must be nil exactly when seq is 1"),
        (wire(contribution_header(seq=2)), "header.prev: must be nil exactly when seq is 1"),
        (wire(contribution_header(version=2)), "header.version"),
        (wire(contribution_header(body={"namespace": "x"})), "contribution: expected array"),
        (
            wire(contribution_header(body=["x" * (MAX_NAMESPACE + 1), "blob", D, 7, None, []])),
            "contribution.namespace",
        ),
        (
            wire(contribution_header(body=["ns", "blob", D, 7, None, [["acc", 0.9]]])),
            "contribution.metadata['acc']",
        ),
        (
            wire(contribution_header(body=["ns", "blob", D, 7, None, [["b", 1], ["a", 2]]])),
            "contribution.metadata: keys must be sorted",
        ),
        (wire(contribution_header(body=["ns", "blob", D[:31], 7, None, []])), "payload_digest"),
        (wire(contribution_header(body=["ns", "blob", D, -1, None, []])), "payload_size"),
        (wire(contribution_header(kind=2, body=[[D, D], None, ""])), "removal.targets"),
        (wire(contribution_header(kind=2, body=[[], None, ""])), "names neither"),
        (wire(contribution_header(kind=3, body=[D, "mood", 1, "", b""])), "evidence.dimension"),
        (wire(contribution_header(kind=5, body=[D, D, None, "n"])), "membership.member"),
        (wire(contribution_header(), sig=b"\x00" * 63), "signatures[0].value"),
        (msgpack.packb([1, msgpack.packb(contribution_header()), []]), "first signature"),
        (
            msgpack.packb([1, msgpack.packb(contribution_header()), [["rsa", b"x"]]]),
            "unknown scheme 'rsa'",
        ),
        (msgpack.packb({"header": 1}), "entry: expected array"),
    ],
)
def test_malformed_entries_are_rejected_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(MalformedEntryError) as info:
        Entry.from_bytes(data)
    assert field in str(info.value)


def test_non_minimal_msgpack_encoding_is_rejected() -> None:
    good = msgpack.packb(contribution_header())
    # seq=1 re-encoded as uint16 (0xcd 0x00 0x01) instead of a positive fixint
    seq_at = good.index(AUTHOR) + len(AUTHOR)
    assert good[seq_at] == 0x01
    bad = good[:seq_at] + b"\xcd\x00\x01" + good[seq_at + 1 :]
    data = msgpack.packb([1, bad, [["ed25519", b"\x00" * 64]]])
    with pytest.raises(MalformedEntryError, match="not canonical"):
        Entry.from_bytes(data)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_malformed_entry_error(data: bytes) -> None:
    with pytest.raises(MalformedEntryError):
        Entry.from_bytes(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(entries()).to_bytes())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(min_value=1, max_value=255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif data:
            del data[pos]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_entries_decode_canonically_or_raise_malformed(data: bytes) -> None:
    try:
        entry = Entry.from_bytes(data)
    except MalformedEntryError:
        return
    assert entry.to_bytes() == data


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_are_never_an_equivocation_proof(data: bytes) -> None:
    with pytest.raises(MalformedEntryError):
        EquivocationProof.from_bytes(data)


def test_removal_targets_are_sorted_and_deduplicated() -> None:
    a, b = sorted([hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()])
    e = make_removal(admin_key(), 1, None, [b, a, b])
    assert e.targets == (a, b)
    assert Entry.from_bytes(e.to_bytes()).targets == (a, b)


def test_signatures_from_storage_rows_are_accepted_as_plain_pairs() -> None:
    e = make_contribution(fixed_keys()[0], 1, None, "ns", D, 1)
    rows = [(s.scheme, s.value) for s in e.signatures]
    assert Entry.from_parts(e.header_bytes, rows) == e
    with pytest.raises(MalformedEntryError, match=r"signatures\[0\]"):
        Entry.from_parts(e.header_bytes, [("ed25519",)])


def test_numpy_style_numbers_in_metadata_are_normalised() -> None:
    np = pytest.importorskip("numpy")
    e = make_contribution(
        fixed_keys()[0], 1, None, "ns", D, 1, metadata={"n": np.int64(12), "acc": np.float32(0.5)}
    )
    assert e.metadata == {"n": 12, "acc": "0.5"}
    with pytest.raises(MalformedEntryError, match="contribution"):
        make_contribution(fixed_keys()[0], 1, None, "ns", D, 1, metadata={"x": {1, 2}})
