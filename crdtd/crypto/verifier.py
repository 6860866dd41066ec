"""Ed25519 checks for many signatures at once, in worker processes.

cryptography's Ed25519 `verify` holds the GIL (its Rust binding does not release it), so
threads check one signature at a time, and a catch-up spends much of its CPU there. A
`SignatureWorkers` keeps a few worker processes (`python -m crdtd.crypto.verifier`: nothing
but this module and cryptography is imported there) and splits a list of
(public key, message, signature) triples between them; each answers exactly what
`verify_ed25519` answers for each triple. Lists shorter than `POOL_MIN`, a machine with one
core, a call while another is in flight, and a worker that died all fall back to checking in
this process, so the answer never depends on the pool.

Frames on the pipes: 4-byte big-endian length, then msgpack `[[key, message, sig], ...]`
one way and one byte per triple (1 = valid) back. A worker exits when its stdin closes:
when the daemon stops (`close_shared`), when this process exits, also when it is killed. It
ignores SIGINT, so a Ctrl-C at a terminal stops the daemon, which then closes its workers.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

import msgpack

from crdtd.crypto.schemes import verify_ed25519

POOL_MIN = 512
"""Fewer triples are checked in this process (a frame round trip is not worth it)."""
MAX_WORKERS = 4

Triple = tuple[bytes, bytes, bytes]


def check_here(triples: Sequence[Triple]) -> list[bool]:
    """`verify_ed25519` for each (public key, message, signature), in this process."""
    return [verify_ed25519(k, m, s) for k, m, s in triples]


class SignatureWorkers:
    """Worker processes that check Ed25519 signatures; started on first use."""

    def __init__(self, workers: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.size = workers if workers is not None else min(MAX_WORKERS, cores)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._broken = False

    def verify_many(self, triples: Sequence[Triple]) -> list[bool]:
        """One bool per triple, as `verify_ed25519` answers it."""
        if len(triples) < POOL_MIN or self.size < 2 or self._broken or not sys.executable:
            return check_here(triples)
        if not self._lock.acquire(blocking=False):
            return check_here(triples)  # another caller has the workers: no waiting
        try:
            return self._spread(triples)
        except (OSError, ValueError, EOFError):
            self._stop()
            self._broken = True  # do not restart workers that keep failing
            return check_here(triples)
        finally:
            self._lock.release()

    def _spread(self, triples: Sequence[Triple]) -> list[bool]:
        procs = self._start()
        n = len(procs)
        step = -(-len(triples) // n)
        parts = [triples[i : i + step] for i in range(0, len(triples), step)]
        for proc, part in zip(procs, parts):
            assert proc.stdin is not None
            _write(proc.stdin, msgpack.packb([list(t) for t in part], use_bin_type=True))
        out: list[bool] = []
        for proc, part in zip(procs, parts):
            assert proc.stdout is not None
            answer = _read(proc.stdout)
            if len(answer) != len(part):
                raise ValueError("signature worker answered the wrong number of results")
            out.extend(b == 1 for b in answer)
        return out

    def _start(self) -> list[subprocess.Popen[bytes]]:
        if not self._procs:
            env = dict(os.environ)
            self._procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "crdtd.crypto.verifier"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                )
                for _ in range(self.size)
            ]
        return self._procs

    def _stop(self) -> None:
        for proc in self._procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        self._procs = []

    def close(self) -> None:
        """Stop the workers (they also stop when this process exits)."""
        with self._lock:
            self._stop()


def _write(stream: IO[bytes], data: bytes) -> None:
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def _read(stream: IO[bytes]) -> bytes:
    head = stream.read(4)
    if len(head) < 4:
        raise EOFError("signature worker closed its pipe")
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("signature worker closed its pipe")
    return data


_shared: SignatureWorkers | None = None
_shared_lock = threading.Lock()


def shared() -> SignatureWorkers:
    """The process's workers (one set for every node and session in it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SignatureWorkers()
            atexit.register(_shared.close)
        return _shared


def close_shared() -> None:
    """Stop the process's workers if any were started (the daemon's stop; a later check
    starts them again)."""
    with _shared_lock:
        workers = _shared
    if workers is not None:
        workers.close()


def main() -> None:
    """Worker: answer frames of triples until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            frame = _read(inp)
        except EOFError:
            return
        triples = msgpack.unpackb(frame, raw=False, use_list=True)
        _write(out, bytes(verify_ed25519(k, m, s) for k, m, s in triples))


if __name__ == "__main__":
    main()
