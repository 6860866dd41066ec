"""Who we gossip with: known peers, their liveness, and when to try a failed one again.

Pure bookkeeping driven by a clock value passed in (no I/O, no wall clock): peers start from
the configured bootstrap addresses and grow by peer exchange (every handshake carries a
list); a failed contact makes an alive peer *suspect*; a suspect peer that stays silent for
the suspicion timeout is *dead* and is retried with exponential backoff (seeded jitter), and
any successful contact re-admits it as alive. memberlist's states, without its UDP probes:
every session is a probe.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass

from crdtd.crypto.node_config import is_loopback_host
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import PeerIdentity


class PeerState(enum.Enum):
    """Liveness of a known peer."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass
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
    """Known peers by address, with alive/suspect/dead states and retry times."""

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

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, address: str) -> PeerRecord | None:
        """The record for `address`, if known."""
        return self._peers.get(address)

    def records(self) -> list[PeerRecord]:
        """Every known peer, by address."""
        return [self._peers[a] for a in sorted(self._peers)]

    def add(
        self, address: str, key_id: bytes | None = None, source: str = "exchange", now: float = 0.0
    ) -> PeerRecord | None:
        """Learn an address (ignored when it is ours, malformed, or not allowed here)."""
        if not valid_address(address) or address == self.own_address:
            return None
        if key_id is not None and key_id == self.own_key_id:
            return None
        if self.loopback_only and not is_loopback(address):
            return None
        rec = self._peers.get(address)
        if rec is None:
            rec = PeerRecord(address, key_id, source=source, retry_at=now)
            self._peers[address] = rec
        elif key_id is not None and rec.key_id is None:
            rec.key_id = key_id
        return rec

    def learn(self, peer: PeerIdentity, now: float) -> None:
        """Peer exchange: a verified peer's own address and the peers it listed."""
        if peer.advertise:
            self.add(peer.advertise, peer.key_id, "inbound", now)
        for address, key_id in peer.peers:
            self.add(address, key_id, "exchange", now)

    def candidates(self, now: float) -> list[str]:
        """Addresses gossip may pick now: alive or suspect and not waiting for a retry."""
        return [
            r.address for r in self.records() if r.state is not PeerState.DEAD and r.retry_at <= now
        ]

    def due_dead(self, now: float) -> list[str]:
        """Dead peers whose backoff has expired (to try re-admitting them)."""
        return [
            r.address for r in self.records() if r.state is PeerState.DEAD and r.retry_at <= now
        ]

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
            rec.key_id = key_id
            for other in list(self._peers.values()):
                if other is not rec and other.key_id == key_id:
                    del self._peers[other.address]  # the node moved to this address
        rec.state = PeerState.ALIVE
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
            rec.suspect_since = now
            rec.retry_at = now + self.config.probe_interval
            return
        if rec.state is PeerState.SUSPECT:
            since = rec.suspect_since if rec.suspect_since is not None else now
            if now - since < self.config.suspicion_timeout(len(self._peers)):
                rec.retry_at = now + self.config.probe_interval
                return
            rec.state = PeerState.DEAD
        rec.retry_at = now + self.backoff(rec.failures)

    def backoff(self, failures: int) -> float:
        """Retry delay after `failures` consecutive failures: doubling, capped, +-25 % jitter."""
        base = min(self.config.backoff_max, self.config.backoff_base * 2 ** max(0, failures - 1))
        return base * (0.75 + 0.5 * self.rng.random())

    def forget(self, addresses: Iterable[str]) -> None:
        """Drop addresses (e.g. peers that turned out to be revoked)."""
        for a in addresses:
            self._peers.pop(a, None)
