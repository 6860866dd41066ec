"""The daemon's side of `crdtd.sync`: start a SyncNode over the node's state and report it.

The sync layer owns the Peer service, sessions, gossip and the peer table; this module
wires them to the daemon's metrics (sessions, bytes, durations, rejections), Watch events
(entries that arrived by sync, peers that came and went) and Status (the peer table), and to
trust: what a peer sent that shows misbehaviour becomes evidence entries signed by this node
(`crdtd.node.observe`), spread at once by push-notify. The node serves and offers every
entry it holds, gated authors' contributions included: gating decides what a materialisation
merges, not what honest nodes replicate, so honest nodes reach the same state root whatever
trust has decided (revoked keys' entries above the cutoff are refused by the state itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from crdtd.node.core import NodeCore, PeerView
from crdtd.node.events import EventBus, NodeEvent
from crdtd.node.logs import event, get_logger
from crdtd.node.metrics import NodeMetrics
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import Identity, PeerIdentity
from crdtd.sync.membership import PeerState
from crdtd.sync.node import SyncNode
from crdtd.sync.receive import Misbehaviour
from crdtd.sync.session import SessionResult
from crdtd.sync.tls import security_for_node
from crdtd.sync.transport import GrpcTransport

log = get_logger("crdtd.node.sync")


class _DaemonSyncNode(SyncNode):
    """SyncNode that also tells the daemon about entries pushed to it and peers it meets."""

    core: NodeCore
    metrics: NodeMetrics
    _tasks: set[asyncio.Task[None]]
    _detecting: bool = False
    _detect_again: bool = False

    def peer_seen(self, peer: PeerIdentity) -> None:
        known = peer.advertise and self.table.get(peer.advertise) is not None
        super().peer_seen(peer)
        self.metrics.sync_session("inbound", "ok")
        if not known:
            self.core.events.publish(
                NodeEvent("peer_up", author=peer.key_id, detail=peer.advertise or "inbound")
            )

    def received(self, ids: Sequence[bytes], peer: PeerIdentity) -> None:
        super().received(ids, peer)
        self._announce(ids, f"pushed by {peer.advertise or peer.key_id.hex()[:16]}")

    def report(self, peer: PeerIdentity, items: Sequence[Misbehaviour]) -> None:
        """on_misbehaviour: sign evidence off the event loop, then push-notify peers."""
        event(
            log,
            "sync.misbehaviour",
            level=30,
            peer=peer.key_id,
            kinds=",".join(sorted({m.kind for m in items})),
        )
        self._evidence(self.core.evidence.observe, peer.key_id, list(items))

    def flush_evidence(self) -> None:
        """Sign observations the budget held back, once a new epoch allows them."""
        if self.core.evidence.queue:
            self._evidence(self.core.evidence.flush)

    def _evidence(self, fn: Any, *args: Any) -> None:
        async def run() -> None:
            published = await asyncio.to_thread(fn, *args)
            if published:
                self.gossip.notify_peers()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def want_models(self) -> None:
        """Run the model-outlier detector soon (once at a time; again if asked meanwhile)."""
        if not self.core.config.trust.detect_model_outliers:
            return
        if self._detecting:
            self._detect_again = True
            return
        self._detecting = True

        async def run() -> None:
            try:
                while True:
                    self._detect_again = False
                    published = await asyncio.to_thread(self.core.detect_models)
                    if published:
                        self.gossip.notify_peers()
                    if not self._detect_again:
                        return
            finally:
                self._detecting = False

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _announce(self, ids: Sequence[bytes], detail: str) -> None:
        if ids:
            self.want_models()
        for eid in ids:
            try:
                entry = self.state.store.get_entry(eid)
            except Exception:  # purged meanwhile (a revocation): nothing to announce
                continue
            self.core.entry_applied_elsewhere(entry, detail)


class _Observer:
    """SyncObserver: outbound sessions into metrics, logs and events."""

    def __init__(self, core: NodeCore, metrics: NodeMetrics) -> None:
        self.core = core
        self.metrics = metrics
        self.node: _DaemonSyncNode | None = None
        self._down: set[str] = set()

    def round_done(self) -> None:
        self.metrics.gossip_rounds.inc()

    def session_done(
        self, address: str, result: SessionResult | None, error: BaseException | None
    ) -> None:
        if result is not None:
            self.metrics.sync_session(
                "outbound",
                "ok",
                result.seconds,
                result.stats.bytes_sent,
                result.stats.bytes_received,
            )
            for eid, why in result.rejected:
                self.core.entry_rejected_elsewhere(_Rejected(why), eid)
            if self.node is not None:
                self.node.flush_evidence()
            if result.pulled and self.node is not None:
                self.node._announce(result.pulled, f"pulled from {address}")
            if address in self._down:
                self._down.discard(address)
                self.core.events.publish(NodeEvent("peer_up", detail=address))
            if result.pulled or result.pushed:
                event(
                    log,
                    "sync.session",
                    peer=address,
                    pulled=len(result.pulled),
                    pushed=len(result.pushed),
                    rejected=len(result.rejected),
                    bytes=result.stats.bytes_total,
                    seconds=round(result.seconds, 3),
                )
            return
        from crdtd.errors import PeerRefusedError

        outcome = "refused" if isinstance(error, PeerRefusedError) else "error"
        self.metrics.sync_session("outbound", outcome)
        if address not in self._down:
            self._down.add(address)
            self.core.events.publish(NodeEvent("peer_down", detail=f"{address}: {error}"))
            event(log, "sync.failed", level=30, peer=address, result=outcome, error=str(error))


class _Rejected(Exception):
    """A rejection the sync layer reported as text (counted under reason "other")."""


class SyncHandle:
    """What the daemon holds: nudge peers after local writes, report peers, stop."""

    def __init__(self, node: _DaemonSyncNode) -> None:
        self.node = node

    def nudge(self) -> None:
        """Push-notify peers now, and look for model outliers (call on the event loop)."""
        self.node.gossip.notify_peers()
        self.node.want_models()

    def peers(self) -> list[PeerView]:
        names = self.node.core.member_names()
        now = time.monotonic()
        out = []
        for r in self.node.table.records():
            last = r.last_ok
            out.append(
                PeerView(
                    name=names.get(r.key_id, "") if r.key_id else "",
                    address=r.address,
                    key_id=r.key_id or b"",
                    alive=r.state is PeerState.ALIVE,
                    in_sync=r.in_sync,
                    last_sync=None if last is None else now - (self.node.clock() - last),
                )
            )
        return out

    def repair_peers(self) -> list[str]:
        """Addresses worth asking for a chunk to repair the store: peers not dead and not
        revoked, in address order."""
        state = self.node.state
        return [
            r.address
            for r in self.node.table.records()
            if r.state is not PeerState.DEAD and not (r.key_id and state.is_revoked(r.key_id))
        ]

    async def fetch_chunks(self, address: str, wanted: dict[bytes, int]) -> set[bytes]:
        """Fetch and store (verified) chunks from one peer (SyncNode.fetch_chunks)."""
        return await self.node.fetch_chunks(address, wanted)

    async def stop(self, grace: float = 1.0) -> None:
        await self.node.stop(grace=grace)


async def start_sync(core: NodeCore, events: EventBus, metrics: NodeMetrics) -> Any:
    """Serve crdtd.v1.Peer on the configured address and start gossip."""
    cfg = core.config.node
    tls = security_for_node(cfg)
    sync_config = SyncConfig.from_gossip_settings(cfg.gossip)
    identity = Identity(
        core.key,
        cfg.membership_bytes(),
        cfg.federation.id,
        cfg.federation.admin,
        cfg.federation.policy,
        cfg.advertise,
    )
    observer = _Observer(core, metrics)
    node = _DaemonSyncNode(
        core.state,
        identity,
        GrpcTransport(tls, sync_config),
        sync_config,
        bootstrap=cfg.bootstrap,
        observer=observer,
        loopback_only=tls is None,
    )
    node.core, node.metrics = core, metrics
    node._tasks = set()
    node.on_misbehaviour = node.report
    observer.node = node
    await node.start(f"{cfg.peer_host}:{cfg.peer_port}")
    handle = SyncHandle(node)
    core.peer_source = handle.peers
    core.served_bytes = lambda: node.local.stats.chunk_bytes_served
    return handle
