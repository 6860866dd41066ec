"""Set reconciliation with a rateless IBLT, falling back to Merkle descent past a budget.

Client side (`reconcile`):

1. ask for symbols [0, riblt_first_symbols), sending our Merkle root: an equal root is
   answered `equal` (one call, no symbols: replicas in sync pay what a root compare costs);
2. otherwise subtract our own set's symbols (same salt) and peel; while the residue is not
   empty ask for as many symbols again as received so far (the stream is rateless: d never
   needs to be known), so d = 10 takes one or two calls;
3. give up when the symbols would pass `riblt_max_symbols`, when symbol 0 already shows a
   size difference the budget cannot cover or that would cost more than listing the peer's
   set (a node that starts empty goes to the descent after one call), or when the peer's
   set changed mid-stream twice (`stale`): the Merkle descent then runs in the same session
   (`Difference.method` = "riblt+merkle").

A decoded result is checked before it is trusted: every id it says only we hold must be
ours, and no id it says only the peer holds may be ours; anything else is treated as a
failed decode (the descent runs).

Server side (`answer`): symbols come from the node's own encoding (`EncodingCache`, one per
store, shared with the client side): kept while the Merkle root is unchanged, brought up to
date after commits by XORing in only the ids they added (the store's change journal), rebuilt
after a deletion. Every node encodes under the same salt (`SALT`; answers name it), so that
one encoding serves the node's own sessions and every peer's. A continuation whose root is
no longer the node's root is answered `stale`: the client starts once more, then runs the
descent. Merkle requests are answered by the descent, so one instance serves both methods.

A known salt lets a member grind entry ids (about 2^32 signatures or more) until some XOR of
them passes as a "pure" symbol; the damage is bounded to that session: the check above
or the decode budget sends it to the Merkle descent, and ids it was told to fetch but the
peer does not hold are reported as unserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import weakref
from collections import OrderedDict

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.sync.config import SyncConfig
from crdtd.sync.reconcile.base import Ask, Difference, DigestSource
from crdtd.sync.reconcile.merkle import MerkleDescent
from crdtd.sync.reconcile.riblt import (
    ID_BYTES,
    SYMBOL_BYTES,
    Decoder,
    Encoder,
    Symbols,
    ids_to_keys,
)

MAX_SYMBOLS_PER_ANSWER = 16_384
"""Symbols in one Digest answer, at most (~700 KB)."""
MAX_STREAM = 1 << 18
"""A request past this symbol index is refused (bounds what one encoding may grow to)."""
SYMBOLS_PER_DIFFERENCE = 1.35
"""Coded symbols a difference costs on average (Yang et al.); used to bail out early."""
SALT = int.from_bytes(hashlib.sha256(b"crdtd/riblt/v1 salt").digest()[:8], "little")
"""The salt every node encodes its set under, so one encoding per node serves its own sessions
and every peer's (answers name their salt, so it can change without a protocol version)."""
SALTS_KEPT = 4


class _Own:
    """One node's set encoded under one salt, kept current commit by commit."""

    def __init__(self, salt: int) -> None:
        self.salt = salt
        self.root: bytes | None = None
        self.generation = -1
        self.encoder: Encoder | None = None
        self.ids: set[bytes] = set()


class EncodingCache:
    """A replica's own encodings, by salt (at most SALTS_KEPT).

    `current(local, salt)` returns the encoder of the set as it is now: cached while the root
    is unchanged; after commits, only the ids they added are XORed in when the replica keeps
    a change journal (`NodeStore.changes_since`); otherwise (or after a deletion) rebuilt.
    Shared by everything that reconciles against the same replica (`cache_for`).
    """

    def __init__(self) -> None:
        self._by_salt: OrderedDict[int, _Own] = OrderedDict()
        self.lock = threading.RLock()
        self.rebuilds = 0

    def ids(self, salt: int) -> set[bytes]:
        """The ids the encoding under `salt` holds (hold `lock`; after `current`)."""
        return self._by_salt[salt].ids

    def forget(self) -> None:
        """Drop every encoding (the next use rebuilds; benchmarks measure that cold path)."""
        with self.lock:
            self._by_salt.clear()

    def current(self, local: DigestSource, salt: int) -> tuple[bytes, Encoder]:
        """(root, encoder) of the local set now. Hold `lock` while using the encoder."""
        with self.lock:
            own = self._by_salt.pop(salt, None) or _Own(salt)
            self._by_salt[salt] = own
            while len(self._by_salt) > SALTS_KEPT:
                self._by_salt.popitem(last=False)
            reading = getattr(local, "reading", None)
            with reading() if reading is not None else contextlib.nullcontext():
                root = local.merkle_root()
                if own.encoder is not None and own.root == root:
                    return root, own.encoder
                if own.encoder is not None and self._catch_up(local, own):
                    own.root = root
                    return root, own.encoder
                self.rebuilds += 1
                generation = getattr(local, "generation", -1)
                root, ids = snapshot_ids(local)
            own.encoder = Encoder.of_ids(ids, salt)
            own.ids = {ids[i : i + ID_BYTES] for i in range(0, len(ids), ID_BYTES)}
            own.root, own.generation = root, generation
            return root, own.encoder

    @staticmethod
    def _catch_up(local: DigestSource, own: _Own) -> bool:
        """XOR in the ids committed since the encoder was current; False when that cannot be
        done (no journal, journal too short, or an id was deleted: rebuild instead)."""
        since = getattr(local, "changes_since", None)
        present = getattr(local, "present", None)
        if since is None or present is None or own.encoder is None:
            return False
        changes = since(own.generation)
        if changes is None:
            return False
        generation, changed = changes
        now = present(sorted(changed))
        if any(i in own.ids and i not in now for i in changed):
            return False
        added = sorted(i for i in now if i not in own.ids)
        own.encoder.add(ids_to_keys(b"".join(added)))
        own.ids.update(added)
        own.generation = generation
        return True


def snapshot_ids(local: DigestSource) -> tuple[bytes, bytes]:
    """(root, concatenated ids) read consistently: the root is read again after the ids."""
    for _ in range(8):
        root = local.merkle_root()
        ids = b"".join(local.ids_under(b""))
        if local.merkle_root() == root:
            return root, ids
    raise ProtocolError("the local set kept changing while it was read for reconciliation")


_CACHES: weakref.WeakKeyDictionary[object, EncodingCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(local: DigestSource) -> EncodingCache:
    """The encoding cache of one replica (one per store object, shared by server and client)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(local)
        if cache is None:
            cache = _CACHES[local] = EncodingCache()
        return cache


class _LocalChanged(Exception):
    """Our own set changed during a session: its symbols no longer match what was used."""


class _Mine:
    """Our side of one session: symbols of our set as it was when the session began, read
    from the shared encoding without copying it (a commit meanwhile raises _LocalChanged)."""

    def __init__(self, local: DigestSource, salt: int) -> None:
        self.local = local
        self.salt = salt
        self.cache = cache_for(local)
        with self.cache.lock:
            self.root = self.cache.current(local, salt)[0]

    def _encoder(self) -> Encoder:
        root, enc = self.cache.current(self.local, self.salt)
        if root != self.root:
            raise _LocalChanged(f"local root changed to {root.hex()[:16]}")
        return enc

    def __call__(self, start: int, stop: int) -> Symbols:
        with self.cache.lock:
            return self._encoder().symbols(start, stop)

    def consistent(self, remote_only: list[bytes], local_only: list[bytes]) -> bool:
        """True when every id decoded as ours is ours and none decoded as theirs is."""
        with self.cache.lock:
            self._encoder()
            ours = self.cache.ids(self.salt)
            return all(i in ours for i in local_only) and not any(i in ours for i in remote_only)


class RatelessReconciliation:
    """DigestExchange: rateless IBLT first, Merkle descent past the budget (riblt/1)."""

    def __init__(self, config: SyncConfig | None = None, salt: int = SALT) -> None:
        self.config = config or SyncConfig()
        self.merkle = MerkleDescent(self.config)
        self.salt = salt

    # -- server side -------------------------------------------------------------------------

    def answer(self, local: DigestSource, request: pb.DigestRequest) -> pb.DigestResponse:
        """Coded symbols for a riblt request; a merkle request goes to the descent."""
        if request.WhichOneof("method") != "riblt":
            return self.merkle.answer(local, request)
        req = request.riblt
        if req.count > MAX_SYMBOLS_PER_ANSWER or req.start + req.count > MAX_STREAM:
            raise ProtocolError(
                f"riblt request for symbols [{req.start}, {req.start + req.count}) exceeds "
                f"{MAX_SYMBOLS_PER_ANSWER} per call or {MAX_STREAM} in all"
            )
        cache = cache_for(local)
        with cache.lock:  # one thread extends the encoding at a time
            root, enc = cache.current(local, self.salt)
            if req.start == 0 and bytes(req.root) == root:
                return _reply(pb.RibltSymbols(equal=True, salt=self.salt, root=root))
            if req.start > 0 and (bytes(req.root) != root or req.salt != self.salt):
                return _reply(pb.RibltSymbols(stale=True, salt=self.salt, root=root))
            symbols = enc.symbols(req.start, req.start + req.count)
            size = len(enc)
        sums, checks, counts = symbols.to_wire()
        return _reply(
            pb.RibltSymbols(
                salt=self.salt,
                root=root,
                size=size,
                start=req.start,
                sums=sums,
                checks=checks,
                counts=counts,
            )
        )

    # -- client side -------------------------------------------------------------------------

    async def reconcile(self, local: DigestSource, ask: Ask) -> Difference:
        """Symbols until the residue is empty, or the Merkle descent past the budget; a
        stream the peer's commits made stale is started once more, then the descent runs."""
        rounds = 0
        for _ in range(2):
            found, rounds = await self._stream(local, ask, rounds)
            if found is not None:
                return found
        return await self._fall_back(local, ask, rounds)

    async def _stream(
        self, local: DigestSource, ask: Ask, rounds: int
    ) -> tuple[Difference | None, int]:
        """One pass over the peer's stream: (difference, calls so far), or (None, calls) when
        the stream went stale; runs the descent itself when decoding is hopeless."""
        root = local.merkle_root()
        want = min(self.config.riblt_first_symbols, self.config.riblt_max_symbols)
        first = await ask(pb.DigestRequest(riblt=pb.RibltRequest(root=root, start=0, count=want)))
        rounds += 1
        got = _symbols_of(first)
        if got.equal:
            return Difference(rounds=rounds, method="riblt"), rounds
        their_root, salt = bytes(got.root), got.salt
        mine = _Mine(local, salt)
        decoder = Decoder(mine, salt)
        budget = self.config.riblt_max_symbols
        while True:
            if got.stale:
                return None, rounds
            symbols = _parse(got, decoder.size, want)
            try:
                await asyncio.to_thread(decoder.add, symbols)
            except _LocalChanged:
                return None, rounds
            if decoder.decoded:
                break
            if _hopeless(decoder, budget, got.size):
                return await self._fall_back(local, ask, rounds), rounds
            want = min(decoder.size, budget - decoder.size, MAX_SYMBOLS_PER_ANSWER)
            request = pb.RibltRequest(root=their_root, start=decoder.size, count=want, salt=salt)
            got = _symbols_of(await ask(pb.DigestRequest(riblt=request)))
            rounds += 1
        here, there = decoder.remote_only(), decoder.local_only()
        try:
            consistent = await asyncio.to_thread(mine.consistent, here, there)
        except _LocalChanged:
            return None, rounds
        if not consistent:
            return await self._fall_back(local, ask, rounds), rounds
        return Difference(here, there, rounds, "riblt"), rounds

    async def _fall_back(self, local: DigestSource, ask: Ask, rounds: int) -> Difference:
        diff = await self.merkle.reconcile(local, ask)
        diff.rounds += rounds
        diff.method = "riblt+merkle"
        return diff


def _hopeless(decoder: Decoder, budget: int, their_size: int) -> bool:
    """True when decoding cannot finish within `budget` symbols, or would cost more bytes
    than listing the peer's whole set (a node that starts empty): symbol 0 counts every id,
    so its residue is a lower bound on the differences still to find."""
    least = SYMBOLS_PER_DIFFERENCE * abs(decoder.size_difference)
    if decoder.size >= budget or decoder.size + least > budget:
        return True
    return least * (SYMBOL_BYTES + 1) > ID_BYTES * their_size


def _reply(symbols: pb.RibltSymbols) -> pb.DigestResponse:
    return pb.DigestResponse(riblt=symbols)


def _symbols_of(response: pb.DigestResponse) -> pb.RibltSymbols:
    if response.WhichOneof("method") != "riblt":
        raise ProtocolError("digest response is not a riblt answer")
    return response.riblt


def _parse(got: pb.RibltSymbols, start: int, asked: int) -> Symbols:
    """The symbols of an answer, checked to continue the stream with at most what was asked."""
    if got.start != start or not 0 < len(got.counts) <= asked:
        raise ProtocolError(
            f"riblt answer holds {len(got.counts)} symbols from {got.start}; "
            f"asked for {asked} from {start}"
        )
    try:
        return Symbols.from_wire(start, bytes(got.sums), bytes(got.checks), list(got.counts))
    except ValueError as exc:
        raise ProtocolError(f"riblt answer: {exc}") from None
