"""Hypothesis strategies for signed entries (shared by entry, store and sync tests).

Keys are generated once per process (signing is real; key generation is the slow part).
"""

from __future__ import annotations

import functools
import hashlib

from hypothesis import strategies as st

from crdtd.crypto.keys import NodeKey
from crdtd.state.entry import (
    DIMENSIONS,
    Entry,
    make_contribution,
    make_evidence,
    make_membership,
    make_removal,
    make_revocation,
)


@functools.cache
def fixed_keys() -> tuple[NodeKey, ...]:
    """Three Ed25519 node keys reused across examples."""
    return tuple(NodeKey.generate() for _ in range(3))


@functools.cache
def admin_key() -> NodeKey:
    """An Ed25519 admin key reused across examples."""
    return NodeKey.generate()


SUCCESSOR = hashlib.sha256(b"successor key").digest()
digests = st.binary(min_size=32, max_size=32)
namespaces = st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,30}", fullmatch=True)
payload_kinds = st.sampled_from(["safetensors", "blob", "records", "lora"])
meta_keys = st.from_regex(r"[a-z_][a-z0-9_.]{0,15}", fullmatch=True)
meta_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
seq_prev = st.one_of(
    st.just((1, None)),
    st.tuples(st.integers(min_value=2, max_value=2**40), digests),
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    """A validly signed entry of any kind."""
    keys = fixed_keys()
    key = draw(st.sampled_from(keys))
    seq, prev = draw(seq_prev)
    kind = draw(st.sampled_from(["contribution", "removal", "evidence", "revocation", "member"]))
    if kind == "contribution":
        return make_contribution(
            key,
            seq,
            prev,
            draw(namespaces),
            draw(digests),
            draw(st.integers(min_value=0, max_value=2**40)),
            payload_kind=draw(payload_kinds),
            base_id=draw(st.none() | digests),
            metadata=draw(st.dictionaries(meta_keys, meta_values, max_size=4)),
        )
    if kind == "removal":
        targets = draw(st.lists(digests, max_size=4))
        author = draw(st.none() | digests) if targets else draw(digests)
        return make_removal(
            key, seq, prev, targets, target_author=author, reason=draw(st.text(max_size=10))
        )
    if kind == "evidence":
        return make_evidence(
            key,
            seq,
            prev,
            draw(digests),
            draw(st.sampled_from(DIMENSIONS)),
            draw(st.integers(min_value=-1000, max_value=1000)),
            reason=draw(st.text(max_size=10)),
            proof=draw(st.binary(max_size=40)),
        )
    if kind == "revocation":
        return make_revocation(
            key, seq, prev, key.key_id, successor=draw(st.none() | st.just(SUCCESSOR))
        )
    member = draw(st.sampled_from(keys))
    return make_membership(
        admin_key(),
        seq,
        prev,
        member.public_keys,
        draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
    )


def contribution(key: NodeKey, seq: int, prev: bytes | None, payload: bytes = b"x") -> Entry:
    """A plain signed contribution whose digest is sha256(payload)."""
    return make_contribution(
        key, seq, prev, "model/test", hashlib.sha256(payload).digest(), len(payload)
    )
