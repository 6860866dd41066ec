"""Merkle descent: compare roots, then only the children of differing nodes, level by level.

Compare roots (full 32 bytes); where they differ, ask for the children of every differing
node, one round per tree level, all differing nodes of a level in one call. Children travel
as a 32-byte presence bitmap plus `hash_bytes`-truncated hashes of the present ones; a
subtree holding at most `ids_threshold` ids (or a leaf) is answered with its ids instead. A
child only we hold needs no question: all of its ids are missing there. A child only the
peer holds is probed with `list` set, and answered with its ids while the reply stays under
`MAX_LISTED_BYTES` (a node that starts empty learns a large set in a few calls instead of
one probe per leaf); servers of the previous version ignore the flag and answer children.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdtd.errors import ProtocolError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.store.merkle import EMPTY_HASH, FANOUT, ID_SIZE, LEAF_DEPTH
from crdtd.sync.config import SyncConfig
from crdtd.sync.reconcile.base import Ask, Difference, DigestSource, split_ids

BITMAP_BYTES = FANOUT // 8
MAX_PROBES_ANSWERED = 1024
"""A Digest call with more probes than this is refused (clients send max_probes_per_round)."""
MAX_LISTED_BYTES = 1024 * 1024
"""Ids sent for `list` probes in one answer, at most (beyond it those probes get children)."""
LIST_PROBES_PER_ROUND = 32
"""`list` probes sent in one Digest call (each may bring hundreds of ids)."""


def _bit(bitmap: bytes, i: int) -> bool:
    return bool(bitmap[i >> 3] & (1 << (i & 7)))


def _bitmap(flags: Sequence[bool]) -> bytes:
    out = bytearray(BITMAP_BYTES)
    for i, on in enumerate(flags):
        if on:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


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
        listed = 0
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
            count = local.count_under(prefix) if len(prefix) < self.leaf_depth else 0
            wanted = probe.list and listed + ID_SIZE * count <= MAX_LISTED_BYTES
            if len(prefix) == self.leaf_depth or count <= threshold or wanted:
                ids = b"".join(local.ids_under(prefix))
                listed += len(ids) if probe.list else 0
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
        while frontier:
            following: list[pb.MerkleProbe] = []
            for batch in self._batches(frontier):
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

    def _batches(self, frontier: list[pb.MerkleProbe]) -> list[list[pb.MerkleProbe]]:
        """One level's probes cut into calls of at most max_probes_per_round, of which at
        most LIST_PROBES_PER_ROUND are `list` probes of inner nodes (each may bring many ids)."""
        out: list[list[pb.MerkleProbe]] = [[]]
        heavy = 0
        for probe in frontier:
            big = probe.list and len(probe.prefix) < self.leaf_depth
            if len(out[-1]) >= self.config.max_probes_per_round or (
                big and heavy >= LIST_PROBES_PER_ROUND
            ):
                out.append([])
                heavy = 0
            out[-1].append(probe)
            heavy += big
        return out

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
                    if not mine_here:
                        following.append(pb.MerkleProbe(prefix=child, list=True))
                    elif ours_children[i][:h] != theirs_h:
                        following.append(pb.MerkleProbe(prefix=child))
                elif mine_here:
                    diff.missing_there.extend(local.ids_under(child))
        return following
