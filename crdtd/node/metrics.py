"""Every Prometheus metric the daemon exports, defined once (docs and dashboard check here).

Names start with `crdtd_`, counters end in `_total`, durations are histograms in seconds, and
every label takes values from a bounded set (kinds, directions, results, reasons, RPC method
names, and peers — bounded by the federation's membership; never entry or payload ids).
State-derived gauges (entries, state root, peers, trust) are computed at scrape time from a
`StateSnapshot` the daemon provides; event counters are bumped as things happen.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from crdtd import __version__, errors

KINDS = ("contribution", "removal", "evidence", "revocation", "membership")
ENTRY_STATES = ("live", "erased", "quarantined", "superseded", "retired", "held")
DIRECTIONS = ("inbound", "outbound")
BYTE_DIRECTIONS = ("sent", "received")
RESULTS = ("ok", "error", "refused")
SCRUB_RESULTS = ("ok", "corrupt", "missing")
REPAIR_RESULTS = ("repaired", "failed")
DIMENSIONS = ("integrity", "causality", "consistency", "gossip", "model", "overall")
REJECT_REASONS = (
    "malformed",
    "signature",
    "not_member",
    "revoked",
    "unauthorized",
    "oversized",
    "payload",
    "chain",
    "equivocation",
    "unknown_namespace",
    "bad_request",
    "other",
)

SYNC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
MATERIALISE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
disable_created_metrics()  # no `*_created` series: they double every counter's cardinality

RPC_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120)


def fingerprint(root: bytes) -> int:
    """A Merkle root as a gauge value: its first 6 bytes (exact in a float64)."""
    return int.from_bytes(root[:6], "big")


def reject_reason(exc: BaseException) -> str:
    """The bounded `reason` label for an entry or push that was refused."""
    table: tuple[tuple[type[BaseException], str], ...] = (
        (errors.EquivocationError, "equivocation"),
        (errors.ChainError, "chain"),
        (errors.MalformedEntryError, "malformed"),
        (errors.SignatureError, "signature"),
        (errors.NotMemberError, "not_member"),
        (errors.RevokedKeyError, "revoked"),
        (errors.UnauthorizedError, "unauthorized"),
        (errors.OversizedPayloadError, "oversized"),
        (errors.PayloadError, "payload"),
        (errors.InputReadError, "payload"),
        (errors.KindError, "kind"),
        (errors.UnknownNamespaceError, "unknown_namespace"),
        (errors.ConfigError, "bad_request"),
        (errors.ValidationError, "malformed"),
    )
    for cls, reason in table:
        if isinstance(exc, cls):
            return reason
    return "other"


@dataclass(frozen=True)
class PeerSnapshot:
    """What the daemon knows about one peer at scrape time."""

    name: str
    alive: bool
    in_sync: bool
    seconds_since_sync: float | None  # None: never synced
    trust: Mapping[str, float] = field(default_factory=dict)  # dimension -> 0..1
    revoked: bool = False  # key revoked here (then neither alive nor in sync)


@dataclass(frozen=True)
class RoundSnapshot:
    """A rounds namespace's latest round: who took part and what their updates reported."""

    namespace: str
    round: int
    participants: int
    reported: Mapping[str, float] = field(default_factory=dict)  # loss, accuracy: means


@dataclass(frozen=True)
class StateSnapshot:
    """State-derived values for one scrape."""

    entries: Mapping[tuple[str, str], int]  # (kind, state) -> count
    state_root: bytes
    peers: tuple[PeerSnapshot, ...] = ()
    served_bytes: int = 0
    rounds: tuple[RoundSnapshot, ...] = ()


class _StateCollector:
    """Gauges computed from a snapshot at scrape time (no stale values between scrapes)."""

    def __init__(self, snapshot: Callable[[], StateSnapshot | None]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        entries = GaugeMetricFamily(
            "crdtd_entries", "Entries held, by kind and state", labels=["kind", "state"]
        )
        root = GaugeMetricFamily(
            "crdtd_state_root_fingerprint",
            "First 6 bytes of the Merkle root as an integer; equal on converged nodes",
        )
        known = GaugeMetricFamily("crdtd_peers_known", "Peers this node knows of")
        alive = GaugeMetricFamily("crdtd_peers_alive", "Peers currently reachable")
        in_sync = GaugeMetricFamily(
            "crdtd_peer_in_sync",
            "1 when the last sync with the peer found equal roots",
            labels=["peer"],
        )
        revoked = GaugeMetricFamily(
            "crdtd_peer_revoked",
            "1 when the peer's key is revoked in this node's state (its sessions are refused)",
            labels=["peer"],
        )
        age = GaugeMetricFamily(
            "crdtd_peer_last_sync_age_seconds",
            "Seconds since the last successful sync with the peer",
            labels=["peer"],
        )
        converged = GaugeMetricFamily(
            "crdtd_sync_converged",
            "1 when the last sync with every live peer found equal state roots",
        )
        trust = GaugeMetricFamily(
            "crdtd_peer_trust",
            "Trust score (0..1) of a member, per dimension, as this node computes it",
            labels=["peer", "dimension"],
        )
        if snap is not None:
            for kind in KINDS:
                for state in ENTRY_STATES:
                    entries.add_metric([kind, state], snap.entries.get((kind, state), 0))
            root.add_metric([], fingerprint(snap.state_root))
            known.add_metric([], len(snap.peers))
            alive.add_metric([], sum(p.alive for p in snap.peers))
            converged.add_metric([], 1.0 if all(p.in_sync for p in snap.peers if p.alive) else 0.0)
            for p in snap.peers:
                in_sync.add_metric([p.name], 1.0 if p.in_sync else 0.0)
                revoked.add_metric([p.name], 1.0 if p.revoked else 0.0)
                if p.seconds_since_sync is not None:
                    age.add_metric([p.name], p.seconds_since_sync)
                for dim in DIMENSIONS:
                    if dim in p.trust:
                        trust.add_metric([p.name, dim], p.trust[dim])
        fl_round = GaugeMetricFamily(
            "crdtd_fl_round",
            "Latest round an update of the rounds namespace declares",
            labels=["namespace"],
        )
        fl_participants = GaugeMetricFamily(
            "crdtd_fl_participants",
            "Authors with an update in the namespace's latest round",
            labels=["namespace"],
        )
        fl_accuracy = GaugeMetricFamily(
            "crdtd_fl_reported_accuracy",
            "Mean accuracy the latest round's updates report (each site's evaluation of the "
            "global it trained from)",
            labels=["namespace"],
        )
        fl_loss = GaugeMetricFamily(
            "crdtd_fl_reported_loss",
            "Mean loss the latest round's updates report",
            labels=["namespace"],
        )
        if snap is not None:
            for r in snap.rounds:
                fl_round.add_metric([r.namespace], r.round)
                fl_participants.add_metric([r.namespace], r.participants)
                if "accuracy" in r.reported:
                    fl_accuracy.add_metric([r.namespace], r.reported["accuracy"])
                if "loss" in r.reported:
                    fl_loss.add_metric([r.namespace], r.reported["loss"])
        yield from (fl_round, fl_participants, fl_accuracy, fl_loss)
        served = CounterMetricFamily(
            "crdtd_sync_served_bytes",
            "Chunk bytes this node served to peers that pulled from it",
        )
        if snap is not None:
            served.add_metric([], snap.served_bytes)
        yield from (entries, root, known, alive, in_sync, converged, revoked, age, trust, served)


class NodeMetrics:
    """The daemon's metrics on their own registry (several daemons may share a process)."""

    def __init__(
        self,
        snapshot: Callable[[], StateSnapshot | None] = lambda: None,
        registry: CollectorRegistry | None = None,
        node: str = "",
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        info = GaugeMetricFamily(
            "crdtd_build_info",
            "Constant 1, labelled with the crdtd version",
            labels=["version", "python", "node"],
        )
        info.add_metric([__version__, platform.python_version(), node], 1)
        r.register(_Constant([info]))
        ProcessCollector(registry=r)
        r.register(_StateCollector(snapshot))
        self.sync_sessions = Counter(
            "crdtd_sync_sessions_total",
            "Anti-entropy sessions, by who started them and how they ended",
            ["direction", "result"],
            registry=r,
        )
        self.sync_bytes = Counter(
            "crdtd_sync_bytes_total",
            "Bytes moved by anti-entropy (sent or received), by the session's result",
            ["direction", "result"],
            registry=r,
        )
        self.sync_duration = Histogram(
            "crdtd_sync_duration_seconds",
            "Duration of anti-entropy sessions",
            ["direction"],
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.gossip_rounds = Counter(
            "crdtd_gossip_rounds_total",
            "Gossip rounds run (each syncs with `fanout` random peers)",
            registry=r,
        )
        self.entries_applied = Counter(
            "crdtd_entries_applied_total",
            "Entries accepted into the state, by kind and source",
            ["kind", "source"],
            registry=r,
        )
        self.entries_rejected = Counter(
            "crdtd_entries_rejected_total",
            "Entries or pushes refused, by reason",
            ["reason"],
            registry=r,
        )
        self.push_bytes = Counter(
            "crdtd_push_bytes_total", "Payload bytes received from clients", registry=r
        )
        self.materialise_duration = Histogram(
            "crdtd_materialise_duration_seconds",
            "Duration of Materialise calls (merge and write), by result",
            ["result"],
            buckets=MATERIALISE_BUCKETS,
            registry=r,
        )
        self.rpc_total = Counter(
            "crdtd_client_requests_total",
            "Client API calls, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "crdtd_client_request_duration_seconds",
            "Duration of client API calls, by method",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.scrub_passes = Counter(
            "crdtd_scrub_passes_total", "Completed scrub passes over the needed chunks", registry=r
        )
        self.scrub_bytes = Counter(
            "crdtd_scrub_bytes_total", "Chunk bytes re-hashed by the scrub", registry=r
        )
        self.scrub_chunks = Counter(
            "crdtd_scrub_chunks_total",
            "Chunks the scrub checked, by result (ok, corrupt: quarantined, missing)",
            ["result"],
            registry=r,
        )
        self.scrub_repairs = Counter(
            "crdtd_scrub_repairs_total",
            "Corrupt or missing chunks fetched again from a peer and verified (repaired), or "
            "found on no reachable peer this pass (failed)",
            ["result"],
            registry=r,
        )
        for res in SCRUB_RESULTS:
            self.scrub_chunks.labels(res)
        for res in REPAIR_RESULTS:
            self.scrub_repairs.labels(res)
        for d in DIRECTIONS:
            for res in RESULTS:
                self.sync_sessions.labels(d, res)
            self.sync_duration.labels(d)
        for d in BYTE_DIRECTIONS:
            for res in RESULTS:
                self.sync_bytes.labels(d, res)
        for reason in REJECT_REASONS:
            self.entries_rejected.labels(reason)
        for res in ("ok", "error"):
            self.materialise_duration.labels(res)

    def sync_session(
        self,
        direction: str,
        result: str,
        seconds: float | None = None,
        sent: int = 0,
        received: int = 0,
    ) -> None:
        """Record one anti-entropy session (outbound from the observer, inbound from the
        handshakes this node answers)."""
        direction = direction if direction in DIRECTIONS else "outbound"
        result = result if result in RESULTS else "error"
        self.sync_sessions.labels(direction, result).inc()
        if sent:
            self.sync_bytes.labels("sent", result).inc(sent)
        if received:
            self.sync_bytes.labels("received", result).inc(received)
        if seconds is not None:
            self.sync_duration.labels(direction).observe(seconds)

    def rejected(self, exc: BaseException) -> None:
        """Count a refused entry or push under its bounded reason."""
        self.entries_rejected.labels(reject_reason(exc)).inc()

    def render(self) -> bytes:
        """The exposition text for one scrape (runs the state snapshot)."""
        return generate_latest(self.registry)

    def names(self) -> list[str]:
        """Every metric family name this registry exports (for docs and dashboard checks)."""
        return sorted({m.name for m in self.registry.collect()})


class _Constant:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


async def serve_metrics(
    host: str, port: int, render: Callable[[], Awaitable[bytes]]
) -> asyncio.Server:
    """A minimal HTTP/1.1 server on the event loop answering `GET /metrics` (and `/`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1] if len(line) > 1 else "/"
            if line and line[0] not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path.split("?")[0] in ("/metrics", "/"):
                status, body, ctype = "200 OK", await render(), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + (b"" if line and line[0] == "HEAD" else body))
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.TimeoutError,
            ConnectionError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
