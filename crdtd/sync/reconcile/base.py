"""What every digest exchange shares: the interface, its result, and the replica it reads.

A `DigestExchange` computes, over the wire, which ids each of two replicas lacks: the client
side drives it (`reconcile(local, ask)`), the server side answers one request at a time
(`answer(local, request)`). Sessions, transports and the servicer only know this interface,
so Merkle descent and set reconciliation are interchangeable (crdtd.sync.reconcile picks one
per peer from the handshake's capabilities).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.store.merkle import ID_SIZE


class DigestSource(Protocol):
    """The read side of a replica's Merkle tree (crdtd.store.NodeStore satisfies it)."""

    def merkle_root(self) -> bytes: ...

    def merkle_children(self, prefix: bytes) -> list[bytes]: ...

    def ids_under(self, prefix: bytes) -> list[bytes]: ...

    def count_under(self, prefix: bytes) -> int: ...


Ask = Callable[[pb.DigestRequest], Awaitable[pb.DigestResponse]]
"""Send one DigestRequest to the peer and await its answer."""


@dataclass
class Difference:
    """What a digest exchange found: ids to fetch, ids to push, and what it cost.

    `method` names how it was found: "merkle", "riblt", or "riblt+merkle" when the
    rateless symbols did not decode within their budget and the descent finished the job.
    """

    missing_here: list[bytes] = field(default_factory=list)
    missing_there: list[bytes] = field(default_factory=list)
    rounds: int = 0
    method: str = "merkle"

    @property
    def in_sync(self) -> bool:
        """True when neither side lacks anything."""
        return not self.missing_here and not self.missing_there


class DigestExchange(Protocol):
    """One way of computing a Difference over the wire."""

    async def reconcile(self, local: DigestSource, ask: Ask) -> Difference:
        """Client side: drive the exchange against a peer."""
        ...

    def answer(self, local: DigestSource, request: pb.DigestRequest) -> pb.DigestResponse:
        """Server side: answer one request from the local replica."""
        ...


def split_ids(blob: bytes, prefix: bytes, where: str) -> list[bytes]:
    """Decode a concatenated id list, checking size, prefix and strict order."""
    if len(blob) % ID_SIZE:
        raise ProtocolError(f"{where}: id list of {len(blob)} bytes is not a multiple of 32")
    ids = [blob[i : i + ID_SIZE] for i in range(0, len(blob), ID_SIZE)]
    for i, x in enumerate(ids):
        if not x.startswith(prefix):
            raise ProtocolError(f"{where}: id {x.hex()} is not under prefix {prefix.hex()}")
        if i and ids[i - 1] >= x:
            raise ProtocolError(f"{where}: ids are not sorted and unique")
    return ids
