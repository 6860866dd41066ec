"""`crdtd fsck --data-dir DIR` (or `--config NODE.toml`) finds corruption and exits 1; a healthy store exits 0."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from crdtd.cli import main
from crdtd.node.config import load_daemon_config
from crdtd.store import cli
from crdtd.store.store import DB_NAME, NodeStore
from tests.node_support import federation
from tests.store_support import small_store


def run_fsck(data_dir: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="crdtd")
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["fsck", "--data-dir", str(data_dir), *extra])
    return int(args.func(args))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return small_store(tmp_path)


def test_healthy_store_passes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_fsck(data_dir) == 0
    out = capsys.readouterr().out
    assert ": ok: 5 entries, 2 live payloads, 6 chunks" in out


def test_flipped_byte_in_a_chunk_file_is_found(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with NodeStore.open(data_dir) as store:
        victim = store.chunks.path(sorted(store.chunks.iter_digests())[2])
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    victim.write_bytes(bytes(raw))
    assert run_fsck(data_dir) == 1
    err = capsys.readouterr().err
    assert str(victim) in err and "corrupted" in err


def test_flipped_byte_in_an_inline_chunk_is_found(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with NodeStore.open(data_dir) as store, store.transaction() as c:
        digest, data = c.execute("SELECT digest, data FROM small_chunks LIMIT 1").fetchone()
        bad = bytearray(data)
        bad[0] ^= 0x01
        c.execute("UPDATE small_chunks SET data = ? WHERE digest = ?", (bytes(bad), digest))
    assert run_fsck(data_dir) == 1
    assert bytes(digest).hex() in capsys.readouterr().err


def test_missing_chunk_of_a_live_payload_is_found(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store:
        store.chunks.path(next(store.chunks.iter_digests())).unlink()
    assert run_fsck(data_dir) == 1


def test_tampered_entry_bytes_are_found(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with NodeStore.open(data_dir) as store, store.transaction() as c:
        rid, raw = c.execute("SELECT id, raw FROM entries WHERE kind = 1 LIMIT 1").fetchone()
        bad = bytearray(raw)
        bad[-1] ^= 0x01  # last byte of the Ed25519 signature
        c.execute("UPDATE entries SET raw = ? WHERE id = ?", (bytes(bad), rid))
    assert run_fsck(data_dir, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["where"] for p in report["problems"]] == [f"entry {bytes(rid).hex()}"]
    assert "signature" in report["problems"][0]["what"]


def test_stale_merkle_cache_is_found(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store, store.transaction() as c:
        c.execute("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE depth = 1")
    assert run_fsck(data_dir) == 1


def test_kept_entry_counts_that_disagree_are_found(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store, store.transaction() as c:
        c.execute("UPDATE entry_counts SET entries = entries + 1")
    assert run_fsck(data_dir) == 1


def test_a_store_from_before_kept_counts_gets_them_on_its_next_open(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store:
        kept = store.counts()
        with store.transaction() as c:  # as the previous schema left it: nothing counted
            c.execute("DELETE FROM entry_counts")
            c.execute("DELETE FROM meta WHERE key = 'entry_counts'")
    with NodeStore.open(data_dir, maintenance=False) as reader:
        assert reader.counts() == kept  # counted on the fly, nothing written
    assert run_fsck(data_dir) == 0
    with NodeStore.open(data_dir) as store:
        assert store.counts() == kept == store.count_all()
        assert store.get_meta("entry_counts") is not None


def test_a_directory_without_a_store_is_an_error_not_corruption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fsck", "--data-dir", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("crdtd fsck: error: ") and "is not a crdtd data directory" in err
    assert "CORRUPT" not in err
    assert not (tmp_path / "nothing" / DB_NAME).exists()


def test_fsck_finds_the_data_directory_from_the_node_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config,) = federation(tmp_path, 1)
    assert main(["fsck", "--config", str(config)]) == 1  # the node never started: no store
    assert "is not a crdtd data directory" in capsys.readouterr().err
    data_dir = load_daemon_config(config, check_strategies=False).node.data_dir
    data_dir.rmdir()
    small_store(tmp_path).rename(data_dir)
    assert main(["fsck", "--config", str(config)]) == 0
    assert f"fsck {data_dir}: ok: 5 entries" in capsys.readouterr().out
