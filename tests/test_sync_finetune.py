"""Chunks the receiver already holds are never sent: a fine-tune moves only changed tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crdtd.store.chunks import chunk_bytes, manifest_of
from tests.sync_support import SyncFederation, async_test, make_node, push_contribution

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def checkpoint(tensors: dict[str, np.ndarray]) -> bytes:
    return bytes(safetensors_numpy.save(tensors))


@async_test
async def test_fine_tune_of_a_known_base_transfers_only_its_changed_tensors(
    tmp_path: Path,
) -> None:
    tf = SyncFederation()
    tf.add("a")
    tf.add("b")
    rng = np.random.default_rng(0)
    base = {
        f"layer{i}.weight": rng.standard_normal((256, 1024), dtype=np.float32) for i in range(10)
    }
    tuned = dict(base)
    tuned["layer3.weight"] = base["layer3.weight"] + 0.01
    base_bytes, tuned_bytes = checkpoint(base), checkpoint(tuned)

    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    try:
        e_base = tf.fed.contribute("b", base_bytes, "model/demo", payload_kind="safetensors")
        await push_contribution(b, e_base, base_bytes)
        await a.sync_with(b.address)  # both hold the base

        e_tuned = tf.fed.contribute(
            "b", tuned_bytes, "model/demo", payload_kind="safetensors", base_id=e_base.id
        )
        await push_contribution(b, e_tuned, tuned_bytes)
        result = await a.sync_with(b.address)
        assert result.pulled == [e_tuned.id]

        base_chunks = {c.digest for c in manifest_of(chunk_bytes(base_bytes)).chunks}
        tuned_chunks = [c for c in manifest_of(chunk_bytes(tuned_bytes)).chunks]
        changed = [c for c in tuned_chunks if c.digest not in base_chunks]
        assert result.chunks_fetched == len(changed) == 1
        moved = result.stats.bytes_received
        assert moved < 0.12 * len(tuned_bytes), f"{moved} of {len(tuned_bytes)} bytes"
        digest = e_tuned.as_contribution().payload_digest
        assert a.state.store.read_payload(digest) == tuned_bytes
    finally:
        await a.stop()
        await b.stop()
