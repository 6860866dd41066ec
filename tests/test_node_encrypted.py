"""Encrypted namespaces on three real daemons (in-process: real gRPC, mutual TLS, real
stores): the admin gives the namespace a key for site-a and site-b only; site-c, without
it, stores, verifies and relays the ciphertext, cannot read or materialise it (a typed
error) and holds no plaintext on disk; a key holder materialises as usual; leaving a member
out of the next key epoch keeps it from later contributions."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save_file

from crdtd.cli import main
from crdtd.errors import CrdtdError
from crdtd.node.config import load_daemon_config
from crdtd.store.fsck import fsck
from tests.node_support import DEFAULT_NAMESPACES, InProcessNode, federation, wait_for

SECRET = "model/secret"
MARKER = b"PLAINTEXT-MARKER-7f3a9c"
VALUE = 1234.5678


def secret_checkpoint(path: Path, seed: int) -> Path:
    """A checkpoint whose header and tensor bytes are easy to find on a disk."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "w": torch.randn(128, 128, generator=g),
        "marker": torch.full((4096,), VALUE),
    }
    save_file(tensors, str(path), metadata={"note": MARKER.decode()})
    return path


def plaintext_on_disk(config: Path) -> list[str]:
    """Files under the node's data directory holding the marker or the tensor bytes."""
    data_dir = load_daemon_config(config, check_strategies=False).node.data_dir
    pattern = torch.full((16,), VALUE).numpy().tobytes()
    found = []
    for f in sorted(data_dir.rglob("*")):
        if f.is_file():
            raw = f.read_bytes()
            if MARKER in raw or pattern in raw:
                found.append(str(f.relative_to(data_dir)))
    return found


def holds(node: InProcessNode, entry_id: bytes) -> bool:
    return node.core.state.store.has_entry(entry_id)


def refused(call) -> CrdtdError:  # type: ignore[no-untyped-def]
    with pytest.raises(CrdtdError) as info:
        call()
    return info.value


def namespace_key(fed_dir: Path, members: str, via: Path) -> None:
    argv = ["federation", "namespace-key", SECRET, "--members", members, "--dir", str(fed_dir)]
    assert main([*argv, "--config", str(via)]) == 0


def test_a_node_without_the_key_relays_but_cannot_read_and_holds_no_plaintext(
    tmp_path: Path,
) -> None:
    namespaces = {**DEFAULT_NAMESPACES, SECRET: {"strategy": "fedavg", "encrypted": True}}
    cfg_a, cfg_b, cfg_c = federation(tmp_path, 3, namespaces=namespaces)
    fed_dir = tmp_path / "fed"
    a, c = InProcessNode(cfg_a), InProcessNode(cfg_c)
    b: InProcessNode | None = None
    try:
        namespace_key(fed_dir, "site-a,site-b", cfg_a)
        with a.client() as client:
            pushed = client.push(SECRET, secret_checkpoint(tmp_path / "a.safetensors", 1))
            want = client.materialise(SECRET, out=tmp_path / "a.out.safetensors").output_sha256
        wait_for(lambda: holds(c, pushed.entry_id), 60, "site-c to hold the contribution")

        # site-c holds ciphertext it can verify but not read
        with c.client() as client:
            err = refused(lambda: client.materialise(SECRET, out=tmp_path / "c.safetensors"))
            assert err.code is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            assert "holds no key" in str(err)
            err = refused(lambda: client.push(SECRET, tmp_path / "a.safetensors"))
            assert err.code is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        c_dir = load_daemon_config(cfg_c, check_strategies=False).node.data_dir
        assert fsck(c_dir).ok  # the digest covers the ciphertext: proven intact
        assert plaintext_on_disk(cfg_c) == []
        assert plaintext_on_disk(cfg_a) == []  # key holders store ciphertext too

        # site-b gets it from site-c alone (site-a is gone) and materialises the same bytes
        a.stop()
        b = InProcessNode(cfg_b)
        wait_for(lambda: holds(b, pushed.entry_id), 90, "site-c to relay to site-b")
        with b.client() as client:
            got = client.materialise(SECRET, out=tmp_path / "b.out.safetensors").output_sha256
        assert got == want
        assert plaintext_on_disk(cfg_c) == []
    finally:
        for n in (c, b):
            if n is not None:
                n.stop()


def test_removing_a_member_rotates_the_key_for_later_contributions(tmp_path: Path) -> None:
    namespaces = {SECRET: {"strategy": "fedavg", "encrypted": True}}
    cfg_a, cfg_b = federation(tmp_path, 2, namespaces=namespaces)
    fed_dir = tmp_path / "fed"
    a, b = InProcessNode(cfg_a), InProcessNode(cfg_b)
    try:
        with b.client() as client:  # no key envelope yet: nothing can be sealed
            err = refused(lambda: client.push(SECRET, secret_checkpoint(tmp_path / "x", 5)))
            assert "holds no key envelope" in str(err)
        namespace_key(fed_dir, "site-a,site-b", cfg_a)
        with a.client() as client:
            first = client.push(SECRET, secret_checkpoint(tmp_path / "1.safetensors", 1))
            again = client.push(SECRET, tmp_path / "1.safetensors")  # a retried push
            assert again.already_present and again.entry_id == first.entry_id
        wait_for(lambda: holds(b, first.entry_id), 60, "the first contribution at site-b")
        with b.client() as client:
            client.materialise(SECRET, out=tmp_path / "b1.safetensors")

        namespace_key(fed_dir, "site-a", cfg_a)  # epoch 2: site-b is left out
        wait_for(lambda: b.core.keys.envelopes(SECRET)[-1].epoch == 2, 60, "epoch 2 at site-b")
        with b.client() as client:
            err = refused(lambda: client.push(SECRET, secret_checkpoint(tmp_path / "y", 6)))
            assert "not among the members of key epoch 2" in str(err)
        with a.client() as client:
            later = client.push(SECRET, secret_checkpoint(tmp_path / "2.safetensors", 2))
            client.materialise(SECRET, out=tmp_path / "a2.safetensors")  # site-a reads both
        wait_for(lambda: holds(b, later.entry_id), 60, "the later contribution at site-b")
        with b.client() as client:
            err = refused(lambda: client.materialise(SECRET, out=tmp_path / "b2.safetensors"))
            assert err.code is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    finally:
        a.stop()
        b.stop()
