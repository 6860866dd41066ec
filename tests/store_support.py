"""A small real node store for the store tests: a member, a safetensors payload of four
tensors, a small record, and one erased contribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save

from crdtd.state import E4State
from crdtd.state.testing import Federation
from crdtd.store.chunks import BytesSource


def small_store(tmp_path: Path) -> Path:
    """The data directory of a store holding 5 entries, 2 live payloads and 6 chunks."""
    fed = Federation()
    d = tmp_path / "node"
    rng = np.random.default_rng(1)
    model = save({f"t{i}": rng.standard_normal(40_000).astype(np.float32) for i in range(4)})
    with E4State.open(d, fed.admin.public_keys) as s:
        s.apply(fed.add_member("alice"))
        s.apply(fed.contribute("alice", model, payload_kind="safetensors"), BytesSource(model))
        s.apply(fed.contribute("alice", b"small record"), BytesSource(b"small record"))
        gone = fed.contribute("alice", b"to be erased")
        s.apply(gone, BytesSource(b"to be erased"))
        s.apply(fed.remove("alice", [gone.id]))
    return d
