"""Set reconciliation with a rateless IBLT, falling back to Merkle descent past a budget.

Client side (`reconcile`):

1. ask for symbols [0, riblt_first_symbols), sending our Merkle root: an equal root is
   answered `equal` (one call, no symbols: replicas in sync pay what a root compare costs);
2. otherwise subtract our own set's symbols (same salt) and peel; while the residue is not
   empty ask for as many symbols again as received so far (the stream is rateless: d never
   needs to be known), so d = 10 takes one or two calls;
3. give up when the symbols would pass `riblt_max_symbols`, when symbol 0 already shows a
   size difference the budget cannot cover or that would cost more than listing the peer's
   set (a node that starts empty goes to the descent after one call), or when the peer's set changed mid-stream (`stale`): the Merkle descent
   then runs in the same session (`Difference.method` = "riblt+merkle").

A decoded result is checked before it is trusted: every id it says only we hold must be
ours, and no id it says only the peer holds may be ours; anything else is treated as a
failed decode (the descent runs).

Server side (`answer`): the coded-symbol stream of the current state is computed once per
Merkle root and extended as far as peers ask (`riblt.Encoder`), under a salt drawn once per
process; the last few roots' encodings are kept so a stream continues across a commit.
Merkle requests are answered by the descent, so one instance serves both methods.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import OrderedDict

import numpy as np

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.sync.config import SyncConfig
from crdtd.sync.reconcile.base import Ask, Difference, DigestSource
from crdtd.sync.reconcile.merkle import MerkleDescent
from crdtd.sync.reconcile.riblt import ID_BYTES, SYMBOL_BYTES, Decoder, Encoder, Symbols

MAX_SYMBOLS_PER_ANSWER = 16_384
"""Symbols in one Digest answer, at most (~700 KB)."""
MAX_STREAM = 1 << 18
"""A request past this symbol index is refused (bounds what one encoding may grow to)."""
SYMBOLS_PER_DIFFERENCE = 1.35
"""Coded symbols a difference costs on average (Yang et al.); used to bail out early."""
ENCODINGS_KEPT = 3


class _Encodings:
    """Encodings by (root, salt), most recent first, at most ENCODINGS_KEPT."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[bytes, int], Encoder] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, root: bytes, salt: int) -> Encoder | None:
        with self._lock:
            enc = self._items.get((root, salt))
            if enc is not None:
                self._items.move_to_end((root, salt))
            return enc

    def put(self, root: bytes, salt: int, enc: Encoder) -> None:
        with self._lock:
            self._items[(root, salt)] = enc
            while len(self._items) > ENCODINGS_KEPT:
                self._items.popitem(last=False)


def snapshot_ids(local: DigestSource) -> tuple[bytes, bytes]:
    """(root, concatenated ids) read consistently: the root is read again after the ids."""
    for _ in range(8):
        root = local.merkle_root()
        ids = b"".join(local.ids_under(b""))
        if local.merkle_root() == root:
            return root, ids
    raise ProtocolError("the local set kept changing while it was read for reconciliation")


class RatelessReconciliation:
    """DigestExchange: rateless IBLT first, Merkle descent past the budget (riblt/1)."""

    def __init__(self, config: SyncConfig | None = None, salt: int | None = None) -> None:
        self.config = config or SyncConfig()
        self.merkle = MerkleDescent(self.config)
        self.salt = secrets.randbits(64) if salt is None else salt
        self._served = _Encodings()
        self._own = _Encodings()
        self._lock = threading.Lock()

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
        with self._lock:  # one thread extends an encoding at a time
            if req.start == 0:
                root = local.merkle_root()
                if bytes(req.root) == root:
                    return _reply(pb.RibltSymbols(equal=True, salt=self.salt, root=root))
                enc = self._served.get(root, self.salt)
                if enc is None:
                    root, ids = snapshot_ids(local)
                    enc = Encoder.of_ids(ids, self.salt)
                    self._served.put(root, self.salt, enc)
            else:
                root = bytes(req.root)
                found = self._served.get(root, self.salt) if req.salt == self.salt else None
                if found is None:
                    return _reply(pb.RibltSymbols(stale=True, salt=self.salt))
                enc = found
            symbols = enc.symbols(req.start, req.start + req.count)
        sums, checks, counts = symbols.to_wire()
        return _reply(
            pb.RibltSymbols(
                salt=self.salt,
                root=root,
                size=len(enc),
                start=req.start,
                sums=sums,
                checks=checks,
                counts=counts,
            )
        )

    # -- client side -------------------------------------------------------------------------

    async def reconcile(self, local: DigestSource, ask: Ask) -> Difference:
        """Symbols until the residue is empty, or the Merkle descent past the budget."""
        root = local.merkle_root()
        want = min(self.config.riblt_first_symbols, self.config.riblt_max_symbols)
        first = await ask(pb.DigestRequest(riblt=pb.RibltRequest(root=root, start=0, count=want)))
        rounds = 1
        got = _symbols_of(first)
        if got.equal:
            return Difference(rounds=rounds, method="riblt")
        their_root, salt = bytes(got.root), got.salt
        decoder = Decoder(await asyncio.to_thread(self._own_encoding, local, salt))
        budget = self.config.riblt_max_symbols
        while True:
            if got.stale:
                return await self._fall_back(local, ask, rounds)
            symbols = _parse(got, decoder.size, want)
            await asyncio.to_thread(decoder.add, symbols)
            if decoder.decoded:
                break
            if _hopeless(decoder, budget, got.size):
                return await self._fall_back(local, ask, rounds)
            want = min(decoder.size, budget - decoder.size, MAX_SYMBOLS_PER_ANSWER)
            request = pb.RibltRequest(root=their_root, start=decoder.size, count=want, salt=salt)
            got = _symbols_of(await ask(pb.DigestRequest(riblt=request)))
            rounds += 1
        here, there = decoder.remote_only(), decoder.local_only()
        if not _consistent(decoder.local, here, there):
            return await self._fall_back(local, ask, rounds)
        return Difference(here, there, rounds, "riblt")

    def _own_encoding(self, local: DigestSource, salt: int) -> Encoder:
        """Our set's encoder under the peer's salt (cached per root and salt)."""
        root = local.merkle_root()
        enc = self._own.get(root, salt)
        if enc is None:
            root, ids = snapshot_ids(local)
            enc = Encoder.of_ids(ids, salt)
            self._own.put(root, salt, enc)
        return enc

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


def _consistent(local: Encoder, remote_only: list[bytes], local_only: list[bytes]) -> bool:
    """True when every id decoded as ours is ours and none decoded as theirs is."""
    if not remote_only and not local_only:
        return True
    ours = np.ascontiguousarray(local.keys, dtype="<u8").view(np.dtype((np.void, 32))).ravel()
    here = np.frombuffer(b"".join(remote_only), dtype=np.dtype((np.void, 32)))
    there = np.frombuffer(b"".join(local_only), dtype=np.dtype((np.void, 32)))
    return bool(np.isin(there, ours).all()) and not bool(np.isin(here, ours).any())
