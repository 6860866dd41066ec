"""Rateless invertible Bloom lookup table over 32-byte ids, vectorised with numpy.

Yang, Gilad and Alizadeh, "Practical Rateless Set Reconciliation" (SIGCOMM 2024). Every id
maps to an endless increasing sequence of coded-symbol indices that starts at 0; index i is
hit with probability about rho(i) = 1 / (1 + i/2), so the first m symbols cost each id only
about 2 ln(1 + m/2) updates. A coded symbol holds the XOR of its ids (`sums`), the XOR of
their 64-bit hashes (`checks`) and how many they are (`counts`).

One side sends symbols 0, 1, 2, ... of its set; the other subtracts the same symbols of its
own set (XOR, count difference) and *peels*: a symbol with count +1 or -1 whose check equals
the hash of its sum holds exactly one id of the symmetric difference (+1: only the sender
has it, -1: only we have it), which is then XORed out of every symbol it maps to, exposing
more such symbols. About 1.35 symbols per difference decode, with no estimate of d needed:
the receiver asks for more symbols until the residue is empty.

The mapping follows the paper's reference code: a per-id PRNG state r <- r * C (mod 2^64)
and a gap of ceil((i + 1.5) * (2^32 / sqrt(r + 1) - 1)), at least 1. Hashes are keyed by a
64-bit salt the answering side derives from its state root, so the encoding of one state is
computed once and extended as symbols are asked for (`Encoder.extend`), and nobody can
prepare ids that collide under the salt of a state that does not exist yet.

Everything here is pure computation on numpy arrays: no I/O, no global RNG, deterministic on
every platform (IEEE double sqrt and division are correctly rounded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ID_BYTES = 32
LANES = ID_BYTES // 8
SYMBOL_BYTES = ID_BYTES + 8
"""Fixed bytes of one coded symbol on the wire (sum and check); the count adds 1-3 more."""

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STEP = np.uint64(0xDA942042E4DD58B5)
_INDEX_CAP = 1 << 53
"""Indices stop growing here (exact in float64); no session asks for that many symbols."""


def _mix(x: U64) -> U64:
    """splitmix64's finaliser: a bijection on uint64 with full avalanche."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def ids_to_keys(ids: bytes) -> U64:
    """Concatenated 32-byte ids -> an (n, 4) uint64 array (little-endian lanes)."""
    if len(ids) % ID_BYTES:
        raise ValueError(f"id blob of {len(ids)} bytes is not a multiple of {ID_BYTES}")
    return np.frombuffer(ids, dtype="<u8").astype(np.uint64).reshape(-1, LANES)


def keys_to_ids(keys: U64) -> list[bytes]:
    """The inverse of `ids_to_keys`, one bytes object per row."""
    raw = np.ascontiguousarray(keys, dtype="<u8").tobytes()
    return [raw[i : i + ID_BYTES] for i in range(0, len(raw), ID_BYTES)]


def hash_keys(keys: U64, salt: int) -> U64:
    """Keyed 64-bit hash of each row of `keys` (the check and the mapping seed)."""
    h = np.full(keys.shape[0], np.uint64(salt & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lane in range(LANES):
            h = _mix(h ^ keys[:, lane]) + _GOLDEN
        return _mix(h)


def _advance(prng: U64, index: I64) -> tuple[U64, I64]:
    """Next mapping state and index of each id (the reference code's `nextIndex`)."""
    with np.errstate(over="ignore"):
        prng = prng * _STEP
    scale = 4294967296.0 / np.sqrt(prng.astype(np.float64) + 1.0) - 1.0
    gap = np.ceil((index.astype(np.float64) + 1.5) * scale)
    gap = np.clip(gap, 1.0, float(_INDEX_CAP))
    return prng, np.minimum(index + gap.astype(np.int64), _INDEX_CAP)


class _Mapping:
    """Where each of a set of ids maps next, advanced as more symbols are needed."""

    def __init__(self, hashes: U64) -> None:
        self.prng = hashes.copy()
        self.next = np.zeros(hashes.shape[0], dtype=np.int64)

    def add(self, hashes: U64) -> None:
        """Start mapping more ids (they begin at index 0 like every other)."""
        self.prng = np.concatenate([self.prng, hashes])
        self.next = np.concatenate([self.next, np.zeros(hashes.shape[0], dtype=np.int64)])

    def take(self, stop: int, rows: npt.NDArray[np.intp] | None = None) -> tuple[I64, I64]:
        """(index, row) of every mapping below `stop` not taken yet, advancing past them.

        `rows` limits the walk to those ids (default: all)."""
        active = np.flatnonzero(self.next < stop) if rows is None else rows
        if rows is not None:
            active = active[self.next[active] < stop]
        indices: list[I64] = []
        owners: list[I64] = []
        while active.size:
            at = self.next[active]
            indices.append(at)
            owners.append(active.astype(np.int64))
            prng, nxt = _advance(self.prng[active], at)
            self.prng[active] = prng
            self.next[active] = nxt
            active = active[nxt < stop]
        if not indices:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(indices), np.concatenate(owners)


@dataclass
class Symbols:
    """Coded symbols [start, start + len): XOR of ids, XOR of their hashes, signed counts."""

    start: int
    sums: U64
    checks: U64
    counts: I64

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def empty(cls, start: int, count: int) -> Symbols:
        return cls(
            start,
            np.zeros((count, LANES), dtype=np.uint64),
            np.zeros(count, dtype=np.uint64),
            np.zeros(count, dtype=np.int64),
        )

    def to_wire(self) -> tuple[bytes, bytes, list[int]]:
        """(sums, checks, counts) as sent: 32 and 8 little-endian bytes per symbol."""
        return (
            np.ascontiguousarray(self.sums, dtype="<u8").tobytes(),
            np.ascontiguousarray(self.checks, dtype="<u8").tobytes(),
            self.counts.tolist(),
        )

    @classmethod
    def from_wire(cls, start: int, sums: bytes, checks: bytes, counts: list[int]) -> Symbols:
        """Parse symbols as sent; ValueError when the three parts disagree in length."""
        k = len(counts)
        if len(sums) != k * ID_BYTES or len(checks) != k * 8:
            raise ValueError(
                f"{k} coded symbols need {k * ID_BYTES} sum and {k * 8} check bytes, "
                f"got {len(sums)} and {len(checks)}"
            )
        return cls(
            start,
            ids_to_keys(sums),
            np.frombuffer(checks, dtype="<u8").astype(np.uint64),
            np.asarray(counts, dtype=np.int64),
        )


def _accumulate(
    out: Symbols, index: I64, keys: U64, hashes: U64, owner: I64, sign: I64 | int = 1
) -> None:
    """XOR keys[owner] and hashes[owner] into out at `index` (absolute), count += sign."""
    if not index.size:
        return
    at = index - out.start
    for lane in range(LANES):
        np.bitwise_xor.at(out.sums[:, lane], at, keys[owner, lane])
    np.bitwise_xor.at(out.checks, at, hashes[owner])
    np.add.at(out.counts, at, sign)


class Encoder:
    """The coded-symbol stream of one set under one salt, computed as far as asked."""

    def __init__(self, keys: U64, salt: int) -> None:
        self.keys = keys
        self.salt = salt
        self.hashes = hash_keys(keys, salt)
        self._mapping = _Mapping(self.hashes)
        self._symbols = Symbols.empty(0, 0)

    @classmethod
    def of_ids(cls, ids: bytes, salt: int) -> Encoder:
        """Encoder over concatenated 32-byte ids."""
        return cls(ids_to_keys(ids), salt)

    @property
    def size(self) -> int:
        """How many symbols have been computed."""
        return len(self._symbols)

    def __len__(self) -> int:
        """How many ids the set holds."""
        return int(self.keys.shape[0])

    def extend(self, stop: int) -> None:
        """Compute symbols up to `stop` (exclusive), continuing where the last call ended."""
        start = self.size
        if stop <= start:
            return
        fresh = Symbols.empty(start, stop - start)
        index, owner = self._mapping.take(stop)
        _accumulate(fresh, index, self.keys, self.hashes, owner)
        s = self._symbols
        self._symbols = Symbols(
            0,
            np.concatenate([s.sums, fresh.sums]),
            np.concatenate([s.checks, fresh.checks]),
            np.concatenate([s.counts, fresh.counts]),
        )

    def add(self, keys: U64) -> None:
        """Add ids to the set: their share of every symbol computed so far is XORed in, and
        later symbols include them (the code is linear, so no symbol is recomputed)."""
        if not keys.shape[0]:
            return
        hashes = hash_keys(keys, self.salt)
        base = self.keys.shape[0]
        self.keys = np.concatenate([self.keys, keys])
        self.hashes = np.concatenate([self.hashes, hashes])
        self._mapping.add(hashes)
        index, owner = self._mapping.take(self.size, np.arange(base, base + keys.shape[0]))
        _accumulate(self._symbols, index, self.keys, self.hashes, owner)

    def symbols(self, start: int, stop: int) -> Symbols:
        """Coded symbols [start, stop)."""
        self.extend(stop)
        s = self._symbols
        return Symbols(
            start,
            s.sums[start:stop].copy(),
            s.checks[start:stop].copy(),
            s.counts[start:stop].copy(),
        )


class Decoder:
    """Peels the difference between a remote symbol stream and our own set's stream.

    `remote_only` are ids only the sender holds, `local_only` ids only we hold; `decoded`
    turns True once every symbol received so far is empty after peeling.
    """

    def __init__(self, local: Encoder | Callable[[int, int], Symbols], salt: int = 0) -> None:
        """`local`: our set's encoder, or a function giving our symbols [start, stop) (with
        `salt`), for a caller that keeps the encoder elsewhere."""
        self._mine: Callable[[int, int], Symbols]
        if isinstance(local, Encoder):
            self._mine, self.salt = local.symbols, local.salt
        else:
            self._mine, self.salt = local, salt
        self.residue = Symbols.empty(0, 0)
        self._keys = np.zeros((0, LANES), dtype=np.uint64)
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._signs = np.zeros(0, dtype=np.int64)
        self._mapping = _Mapping(self._hashes)

    @property
    def size(self) -> int:
        """Symbols received so far."""
        return len(self.residue)

    @property
    def decoded(self) -> bool:
        """True when the symbols received so far are all empty after peeling."""
        r = self.residue
        return self.size > 0 and not r.counts.any() and not r.checks.any() and not r.sums.any()

    @property
    def size_difference(self) -> int:
        """|sender's set| - |our set| as far as not peeled yet (symbol 0 counts every id)."""
        return int(self.residue.counts[0]) if self.size else 0

    def remote_only(self) -> list[bytes]:
        """Ids recovered that only the sender holds, sorted."""
        return sorted(keys_to_ids(self._keys[self._signs > 0]))

    def local_only(self) -> list[bytes]:
        """Ids recovered that only we hold, sorted."""
        return sorted(keys_to_ids(self._keys[self._signs < 0]))

    def add(self, symbols: Symbols) -> None:
        """Take the sender's next symbols (they must continue the stream), then peel."""
        if symbols.start != self.size:
            raise ValueError(f"symbols start at {symbols.start}, expected {self.size}")
        stop = symbols.start + len(symbols)
        mine = self._mine(symbols.start, stop)
        fresh = Symbols(
            symbols.start,
            symbols.sums ^ mine.sums,
            symbols.checks ^ mine.checks,
            symbols.counts - mine.counts,
        )
        # ids recovered earlier map into these symbols too: take them out
        index, owner = self._mapping.take(stop)
        _accumulate(fresh, index, self._keys, self._hashes, owner, -self._signs[owner])
        r = self.residue
        self.residue = Symbols(
            0,
            np.concatenate([r.sums, fresh.sums]),
            np.concatenate([r.checks, fresh.checks]),
            np.concatenate([r.counts, fresh.counts]),
        )
        self._peel()

    def _peel(self) -> None:
        r = self.residue
        stop = self.size
        while self._keys.shape[0] <= 2 * stop + 64:  # more means a forged "pure" symbol
            candidates = np.flatnonzero(np.abs(r.counts) == 1)
            if not candidates.size:
                return
            sums = r.sums[candidates]
            pure = hash_keys(sums, self.salt) == r.checks[candidates]
            if not pure.any():
                return
            keys, first = np.unique(sums[pure], axis=0, return_index=True)
            signs = r.counts[candidates[pure]][first]
            hashes = hash_keys(keys, self.salt)
            base = self._keys.shape[0]
            self._keys = np.concatenate([self._keys, keys])
            self._hashes = np.concatenate([self._hashes, hashes])
            self._signs = np.concatenate([self._signs, signs])
            self._mapping.add(hashes)
            rows = np.arange(base, base + keys.shape[0])
            index, owner = self._mapping.take(stop, rows)
            _accumulate(r, index, self._keys, self._hashes, owner, -self._signs[owner])
