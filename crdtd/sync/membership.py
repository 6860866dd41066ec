"""Who we gossip with: known peers, their liveness, and when to try a failed one again.

Pure bookkeeping driven by a clock value passed in (no I/O, no wall clock): peers start from
the configured bootstrap addresses and grow by peer exchange (every handshake carries a
list); a failed contact makes an alive peer *suspect*; a suspect peer whose contacts keep
failing for the suspicion timeout is *dead* and is retried with exponential backoff (seeded
jitter), and any successful contact re-admits it as alive. memberlist's states, without its
UDP probes: every session is a probe. The decisions that use this table (whom to pick,
probe, notify) live in `crdtd.sync.protocol`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from crdtd.crypto.node_config import is_loopback_host
from crdtd.sync.config import SyncConfig


class PeerState(enum.Enum):
    """Liveness of a known peer."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class Introduction(Protocol):
    """What a verified handshake tells us about a peer (crdtd.sync.handshake.PeerIdentity)."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def advertise(self) -> str: ...

    @property
    def peers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(slots=True)
class PeerRecord:
    """One known peer address and what we know about it."""

    address: str
    key_id: bytes | None = None
    state: PeerState = PeerState.ALIVE
    failures: int = 0
    suspect_since: float | None = None
    retry_at: float = 0.0
    last_ok: float | None = None
    in_sync: bool = False
    source: str = "bootstrap"
    last_error: str = ""


def valid_address(address: str) -> bool:
    """True for a plausible host:port (port 1..65535)."""
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def is_loopback(address: str) -> bool:
    """True when the host part of host:port is a loopback address or `localhost`."""
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    return is_loopback_host(host)


class PeerTable:
    """Known peers by address, with alive/suspect/dead states and retry times.

    Indexes (sorted addresses, key id -> address, dead and suspect sets) keep every query
    cheap at a thousand peers: the simulator runs a thousand of these tables.
    """

    def __init__(
        self,
        config: SyncConfig,
        rng: random.Random,
        own_address: str = "",
        own_key_id: bytes | None = None,
        loopback_only: bool = False,
    ) -> None:
        self.config = config
        self.rng = rng
        self.own_address = own_address
        self.own_key_id = own_key_id
        self.loopback_only = loopback_only
        self._peers: dict[str, PeerRecord] = {}
        self._order: list[str] | None = []
        self._by_key: dict[bytes, set[str]] = {}
        self._dead: set[str] = set()
        self._suspect: set[str] = set()

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, address: str) -> PeerRecord | None:
        """The record for `address`, if known."""
        return self._peers.get(address)

    def key_of(self, address: str) -> bytes:
        """The key id known for `address` (b"" when none is)."""
        rec = self._peers.get(address)
        return b"" if rec is None or rec.key_id is None else rec.key_id

    def addresses(self) -> list[str]:
        """Every known address, sorted (cached until the set of peers changes)."""
        if self._order is None:
            self._order = sorted(self._peers)
        return self._order

    def records(self) -> list[PeerRecord]:
        """Every known peer, by address."""
        return [self._peers[a] for a in self.addresses()]

    def add(
        self, address: str, key_id: bytes | None = None, source: str = "exchange", now: float = 0.0
    ) -> PeerRecord | None:
        """Learn an address (ignored when it is ours, malformed, or not allowed here)."""
        rec = self._peers.get(address)
        if rec is None:
            if not valid_address(address) or address == self.own_address:
                return None
            if key_id is not None and key_id == self.own_key_id:
                return None
            if self.loopback_only and not is_loopback(address):
                return None
            rec = PeerRecord(address, key_id, source=source, retry_at=now)
            self._peers[address] = rec
            self._order = None
            if key_id is not None:
                self._by_key.setdefault(key_id, set()).add(address)
        elif key_id is not None and rec.key_id is None:
            rec.key_id = key_id
            self._by_key.setdefault(key_id, set()).add(address)
        return rec

    def learn(self, peer: Introduction, now: float) -> None:
        """Peer exchange: a verified peer's own address and the peers it listed."""
        if peer.advertise:
            self.add(peer.advertise, peer.key_id, "inbound", now)
        for address, key_id in peer.peers:
            self.add(address, key_id, "exchange", now)

    def is_candidate(self, address: str, now: float) -> bool:
        """True when gossip may pick `address` now (alive or suspect, not waiting)."""
        rec = self._peers.get(address)
        return rec is not None and rec.state is not PeerState.DEAD and rec.retry_at <= now

    def candidates(self, now: float) -> list[str]:
        """Addresses gossip may pick now: alive or suspect and not waiting for a retry."""
        peers = self._peers
        return [
            a
            for a in self.addresses()
            if peers[a].state is not PeerState.DEAD and peers[a].retry_at <= now
        ]

    def due_dead(self, now: float) -> list[str]:
        """Dead peers whose backoff has expired (to try re-admitting them), by address."""
        peers = self._peers
        return sorted(
            a for a in self._dead if peers[a].state is PeerState.DEAD and peers[a].retry_at <= now
        )

    def due_suspects(self, now: float) -> list[str]:
        """Suspect peers due another contact, longest suspected first (to confirm or clear)."""
        peers = self._peers
        due = [
            a
            for a in self._suspect
            if peers[a].state is PeerState.SUSPECT and peers[a].retry_at <= now
        ]
        return sorted(due, key=lambda a: (peers[a].suspect_since or 0.0, a))

    def alive(self) -> list[str]:
        """Addresses currently believed alive."""
        return [r.address for r in self.records() if r.state is PeerState.ALIVE]

    def exchange_list(self) -> list[tuple[str, bytes]]:
        """(address, key id) of peers worth telling others about: not dead, key id known."""
        return [
            (r.address, r.key_id)
            for r in self.records()
            if r.state is not PeerState.DEAD and r.key_id is not None
        ]

    def success(
        self, address: str, key_id: bytes | None, now: float, in_sync: bool = False
    ) -> None:
        """A contact worked: the peer is alive (re-admitted if it was dead)."""
        rec = self.add(address, key_id, "bootstrap", now) or self._peers.get(address)
        if rec is None:
            return
        if key_id is not None:
            if rec.key_id is not None and rec.key_id != key_id:
                self._by_key.get(rec.key_id, set()).discard(address)
            rec.key_id = key_id
            for other in sorted(self._by_key.get(key_id, set()) - {address}):
                self._drop(other)  # the node moved to this address
            self._by_key[key_id] = {address}
        rec.state = PeerState.ALIVE
        self._dead.discard(address)
        self._suspect.discard(address)
        rec.failures = 0
        rec.suspect_since = None
        rec.retry_at = now
        rec.last_ok = now
        rec.in_sync = in_sync
        rec.last_error = ""

    def failure(self, address: str, now: float, error: str = "") -> None:
        """A contact failed: alive -> suspect -> (after the suspicion timeout) dead."""
        rec = self._peers.get(address)
        if rec is None:
            return
        rec.failures += 1
        rec.in_sync = False
        rec.last_error = error
        if rec.state is PeerState.ALIVE:
            rec.state = PeerState.SUSPECT
            self._suspect.add(address)
            rec.suspect_since = now
            rec.retry_at = now + self.config.probe_interval
            return
        if rec.state is PeerState.SUSPECT:
            since = rec.suspect_since if rec.suspect_since is not None else now
            if now - since < self.config.suspicion_timeout(len(self._peers)):
                rec.retry_at = now + self.config.probe_interval
                return
            rec.state = PeerState.DEAD
        self._suspect.discard(address)
        self._dead.add(address)
        rec.retry_at = now + self.backoff(rec.failures)

    def backoff(self, failures: int) -> float:
        """Retry delay after `failures` consecutive failures: doubling, capped, +-25 % jitter."""
        base = min(self.config.backoff_max, self.config.backoff_base * 2 ** max(0, failures - 1))
        return base * (0.75 + 0.5 * self.rng.random())

    def forget(self, addresses: Iterable[str]) -> None:
        """Drop addresses (e.g. peers that turned out to be revoked)."""
        for a in addresses:
            self._drop(a)

    def _drop(self, address: str) -> None:
        rec = self._peers.pop(address, None)
        if rec is None:
            return
        self._order = None
        self._dead.discard(address)
        self._suspect.discard(address)
        if rec.key_id is not None:
            same = self._by_key.get(rec.key_id)
            if same is not None:
                same.discard(address)
                if not same:
                    del self._by_key[rec.key_id]
