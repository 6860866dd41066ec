"""The scrub re-hashes every chunk live payloads need, at a bounded pace, and sets bad ones
aside so a fresh copy can be stored; a real store in tmp_path, bytes flipped on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtd.store.chunks import Manifest
from crdtd.store.fsck import fsck
from crdtd.store.scrub import QUARANTINE_DIR, Scrubber, needed_chunks
from crdtd.store.store import INLINE_MAX, NodeStore
from tests.store_support import small_store


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return small_store(tmp_path)


def flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_healthy_store_scrubs_clean_and_counts_every_byte(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store:
        needed = needed_chunks(store)
        seen: list[tuple[str, int]] = []
        report = Scrubber(store).run_pass(1 << 30, counted=lambda r, n: seen.append((r, n)))
    assert report.chunks == len(needed) == 6 and not report.damaged
    assert report.hashed == sum(needed.values()) == sum(n for _, n in seen)
    assert {r for r, _ in seen} == {"ok"}


def test_a_flipped_byte_is_quarantined_and_the_store_no_longer_claims_the_chunk(
    data_dir: Path,
) -> None:
    with NodeStore.open(data_dir) as store:
        digest = next(d for d in sorted(store.chunks.iter_digests()))
        path = store.chunks.path(digest)
        flip(path)
        report = Scrubber(store).run_pass(1 << 30)
        assert list(report.corrupt) == [digest] and not report.missing
        assert not path.exists() and not store.has_chunk(digest)
        assert len(list((data_dir / QUARANTINE_DIR).iterdir())) == 1
        assert store.missing_chunks([digest]) == [digest]  # a fresh copy may now be stored


def test_a_chunk_gone_from_disk_is_reported_missing(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store:
        digest = sorted(store.chunks.iter_digests())[1]
        store.chunks.path(digest).unlink()
        report = Scrubber(store).run_pass(1 << 30)
    assert list(report.missing) == [digest] and not report.corrupt


def test_a_corrupt_inline_chunk_row_is_moved_out_of_the_database(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store:
        with store.reading() as c:
            digest, data = c.execute("SELECT digest, data FROM small_chunks LIMIT 1").fetchone()
        assert len(data) <= INLINE_MAX
        with store.transaction() as c:
            c.execute(
                "UPDATE small_chunks SET data = ? WHERE digest = ?", (b"X" + data[1:], digest)
            )
        report = Scrubber(store).run_pass(1 << 30)
        assert list(report.corrupt) == [bytes(digest)]
        assert not store.has_chunk(bytes(digest))


def test_erased_payloads_are_not_scrubbed(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store, store.reading() as c:
        live = {
            ref.digest
            for (raw,) in c.execute("SELECT manifest FROM payloads").fetchall()
            for ref in Manifest.from_bytes(bytes(raw)).chunks
        }
    with NodeStore.open(data_dir) as store:
        assert set(needed_chunks(store)) == live  # the erased one's manifest is gone


def test_the_pass_is_paced_to_the_configured_rate(data_dir: Path) -> None:
    rate = 64 * 1024
    now = [0.0]  # a clock that moves only while the pass waits (hashing takes no time)

    def wait(seconds: float) -> bool:
        now[0] += seconds
        return False

    with NodeStore.open(data_dir) as store:
        report = Scrubber(store).run_pass(rate, clock=lambda: now[0], wait=wait)
    assert report.hashed > 4 * rate
    assert now[0] == pytest.approx(report.hashed / rate)


def test_fsck_is_clean_after_the_quarantined_chunk_is_stored_again(data_dir: Path) -> None:
    with NodeStore.open(data_dir) as store:
        digest = sorted(store.chunks.iter_digests())[0]
        good = store.chunks.path(digest).read_bytes()
        flip(store.chunks.path(digest))
        assert not fsck(data_dir).ok
        Scrubber(store).run_pass(1 << 30)
        store.put_chunk(good, digest)  # what the repair does with a peer's copy
    assert fsck(data_dir).ok
