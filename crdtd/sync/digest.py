"""The digest exchange: find which ids two replicas hold that the other lacks.

`DigestExchange` is the interface a session uses (client side `reconcile`, server side
`answer`); `MerkleDescent` implements it over the store's 256-ary Merkle tree. A
set-reconciliation sketch (Minisketch, rateless IBLT) can replace it later by adding a
`DigestRequest.method` arm and another implementation; sessions do not change.

Merkle descent: compare roots (full 32 bytes); where they differ, ask for the children of
every differing node, one round per tree level, all differing nodes of a level in one call.
Children travel as a 32-byte presence bitmap plus `hash_bytes`-truncated hashes of the
present ones; a subtree holding at most `ids_threshold` ids (or a leaf) is answered with its
ids instead. A child only we hold needs no question: all of its ids are missing there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.store.merkle import EMPTY_HASH, FANOUT, ID_SIZE, LEAF_DEPTH
from crdtd.sync.config import SyncConfig

BITMAP_BYTES = FANOUT // 8
MAX_PROBES_ANSWERED = 1024
"""A Digest call with more probes than this is refused (clients send max_probes_per_round)."""


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
    """What a digest exchange found: ids to fetch, ids to push, and what it cost."""

    missing_here: list[bytes] = field(default_factory=list)
    missing_there: list[bytes] = field(default_factory=list)
    rounds: int = 0

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


def _bit(bitmap: bytes, i: int) -> bool:
    return bool(bitmap[i >> 3] & (1 << (i & 7)))


def _bitmap(flags: Sequence[bool]) -> bytes:
    out = bytearray(BITMAP_BYTES)
    for i, on in enumerate(flags):
        if on:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


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


class MerkleDescent:
    """Merkle descent with truncated child hashes and small-subtree id lists."""

    def __init__(self, config: SyncConfig | None = None, leaf_depth: int = LEAF_DEPTH) -> None:
        self.config = config or SyncConfig()
        self.leaf_depth = leaf_depth

    # -- server side -------------------------------------------------------------------------

    def answer(self, local: DigestSource, request: pb.DigestRequest) -> pb.DigestResponse:
        """Summaries of the probed nodes (equal, children, or ids)."""
        if request.WhichOneof("method") != "merkle":
            raise ProtocolError("digest request names no method this node speaks (merkle/1)")
        probes = request.merkle
        h = probes.hash_bytes or self.config.hash_bytes
        if not 4 <= h <= 32:
            raise ProtocolError(f"digest request: hash_bytes {h} outside [4, 32]")
        if len(probes.probes) > MAX_PROBES_ANSWERED:
            raise ProtocolError(
                f"digest request: {len(probes.probes)} probes exceed {MAX_PROBES_ANSWERED}"
            )
        threshold = probes.ids_threshold
        nodes = []
        for probe in probes.probes:
            prefix = bytes(probe.prefix)
            if len(prefix) > self.leaf_depth:
                raise ProtocolError(
                    f"digest request: prefix {prefix.hex()} is below leaf depth {self.leaf_depth}"
                )
            if probe.hash and self._node_hash(local, prefix)[: len(probe.hash)] == probe.hash:
                nodes.append(pb.MerkleNode(prefix=prefix, equal=True))
                continue
            if len(prefix) == self.leaf_depth or local.count_under(prefix) <= threshold:
                ids = b"".join(local.ids_under(prefix))
                nodes.append(pb.MerkleNode(prefix=prefix, ids=ids))
                continue
            children = local.merkle_children(prefix)
            present = [c != EMPTY_HASH for c in children]
            hashes = b"".join(c[:h] for c in children if c != EMPTY_HASH)
            nodes.append(
                pb.MerkleNode(
                    prefix=prefix,
                    children=pb.MerkleChildren(present=_bitmap(present), hashes=hashes),
                )
            )
        return pb.DigestResponse(merkle=pb.MerkleNodes(nodes=nodes))

    @staticmethod
    def _node_hash(local: DigestSource, prefix: bytes) -> bytes:
        if not prefix:
            return local.merkle_root()
        return local.merkle_children(prefix[:-1])[prefix[-1]]

    # -- client side -------------------------------------------------------------------------

    async def reconcile(self, local: DigestSource, ask: Ask) -> Difference:
        """Descend level by level; every differing node of a level goes in one request."""
        diff = Difference()
        frontier = [pb.MerkleProbe(prefix=b"", hash=local.merkle_root())]
        step = self.config.max_probes_per_round
        while frontier:
            following: list[pb.MerkleProbe] = []
            for start in range(0, len(frontier), step):
                batch = frontier[start : start + step]
                request = pb.DigestRequest(
                    merkle=pb.MerkleProbes(
                        probes=batch,
                        hash_bytes=self.config.hash_bytes,
                        ids_threshold=self.config.ids_threshold,
                    )
                )
                response = await ask(request)
                diff.rounds += 1
                following.extend(self._compare(local, batch, response, diff))
            frontier = following
        diff.missing_here.sort()
        diff.missing_there.sort()
        return diff

    def _compare(
        self,
        local: DigestSource,
        batch: Sequence[pb.MerkleProbe],
        response: pb.DigestResponse,
        diff: Difference,
    ) -> list[pb.MerkleProbe]:
        if response.WhichOneof("method") != "merkle":
            raise ProtocolError("digest response is not a merkle answer")
        nodes = response.merkle.nodes
        if len(nodes) != len(batch):
            raise ProtocolError(f"digest response has {len(nodes)} nodes for {len(batch)} probes")
        h = self.config.hash_bytes
        following: list[pb.MerkleProbe] = []
        for probe, node in zip(batch, nodes):
            prefix = bytes(probe.prefix)
            where = f"digest node {prefix.hex() or 'root'}"
            if bytes(node.prefix) != prefix:
                raise ProtocolError(f"{where}: answered for prefix {bytes(node.prefix).hex()}")
            kind = node.WhichOneof("summary")
            if kind == "equal":
                if not probe.hash:
                    raise ProtocolError(f"{where}: 'equal' for a probe that sent no hash")
                continue
            if kind == "ids":
                theirs = split_ids(bytes(node.ids), prefix, where)
                ours = local.ids_under(prefix)
                mine, other = set(ours), set(theirs)
                diff.missing_here.extend(x for x in theirs if x not in mine)
                diff.missing_there.extend(x for x in ours if x not in other)
                continue
            if kind != "children" or len(prefix) >= self.leaf_depth:
                raise ProtocolError(f"{where}: expected ids or children, got {kind}")
            present = bytes(node.children.present)
            hashes = bytes(node.children.hashes)
            if len(present) != BITMAP_BYTES:
                raise ProtocolError(f"{where}: presence bitmap has {len(present)} bytes")
            count = sum(bin(b).count("1") for b in present)
            if len(hashes) != count * h:
                raise ProtocolError(
                    f"{where}: {len(hashes)} hash bytes for {count} children of {h} bytes"
                )
            ours_children = local.merkle_children(prefix)
            k = 0
            for i in range(FANOUT):
                mine_here = ours_children[i] != EMPTY_HASH
                child = prefix + bytes([i])
                if _bit(present, i):
                    theirs_h = hashes[k * h : (k + 1) * h]
                    k += 1
                    if not mine_here or ours_children[i][:h] != theirs_h:
                        following.append(pb.MerkleProbe(prefix=child))
                elif mine_here:
                    diff.missing_there.extend(local.ids_under(child))
        return following
