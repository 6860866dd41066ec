"""What a node does for its clients, as plain blocking calls (the gRPC servicer adapts them).

`NodeCore` owns the node's `E4State` and signing key. Every method is safe to call from
worker threads (the store serialises its connection; entries this node signs are allocated
under one lock, so its hash chain never forks). The daemon runs these calls off the event
loop with `asyncio.to_thread`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crdtd import kinds
from crdtd.crypto.keys import NodeKey
from crdtd.crypto.sealing import KEYS_PAYLOAD_KIND, SEALED_META, KeyEnvelope, seal_file
from crdtd.errors import (
    ConfigError,
    CrdtdError,
    EquivocationError,
    MalformedEntryError,
    NotFoundError,
    NotMemberError,
    PayloadError,
    UnauthorizedError,
    UnknownNamespaceError,
    ValidationError,
    WrongKindError,
    echo,
)
from crdtd.kinds.base import ViewCache, check_payload_kind
from crdtd.node.config import DaemonConfig, NamespaceConfig, load_identity
from crdtd.node.events import EventBus, NodeEvent
from crdtd.node.keys import NamespaceKeys
from crdtd.node.metrics import KINDS, NodeMetrics, RoundSnapshot, StateSnapshot
from crdtd.node.observe import (
    EvidencePublisher,
    equivocation_observation,
    model_observations,
)
from crdtd.state.e4 import ApplyResult, ApplyStatus, E4State
from crdtd.state.entry import Entry, EquivocationProof, Kind, make_contribution, make_removal
from crdtd.store import sqlite as db
from crdtd.store.chunks import FileSource, Manifest
from crdtd.trust.gating import Assessment, assess, auto_revocation

STATUS_NAMES = {
    db.LIVE: "live",
    db.TOMBSTONED: "erased",
    db.QUARANTINED: "quarantined",
    db.SUPERSEDED: "superseded",
    db.RETIRED: "retired",
}


@dataclass(frozen=True)
class PushOutcome:
    """What a push did: the entry that holds the payload and whether it already existed."""

    entry: Entry
    already_present: bool


@dataclass(frozen=True)
class EntryView:
    """An entry with its local status and its author's member name (for List/Get)."""

    entry: Entry
    status: int
    author_name: str = ""

    @property
    def removed(self) -> bool:
        return self.status != db.LIVE


@dataclass
class PeerView:
    """A peer as the sync layer reports it (Status and metrics)."""

    name: str
    address: str
    key_id: bytes = b""
    alive: bool = False
    in_sync: bool = False
    last_sync: float | None = None  # time.monotonic() of the last successful sync
    revoked: bool = False  # its key is revoked in this node's state


@dataclass
class _TrustCache:
    root: bytes = b""
    assessment: Assessment | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class NodeCore:
    """A node's state, key and config, with the operations the client API offers."""

    def __init__(
        self,
        config: DaemonConfig,
        state: E4State,
        key: NodeKey,
        metrics: NodeMetrics | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.key = key
        self.metrics = metrics or NodeMetrics()
        self.events = events or EventBus()
        self.started = time.monotonic()
        self.peer_source: Callable[[], list[PeerView]] = list
        self.served_bytes: Callable[[], int] = lambda: 0
        self.health_address = ""  # the daemon's health-only listener, when it has one
        self._chain = threading.Lock()
        self._trust = _TrustCache()
        if config.trust.auto_revoke_equivocation and state.revocation_rule is None:
            state.revocation_rule = auto_revocation
        self.evidence = EvidencePublisher(self)
        self.keys = NamespaceKeys(self)
        state.store.namespace_key = self.keys.key_for
        self.views = ViewCache()
        self._models_seen: dict[str, tuple[bytes, ...]] = {}
        self._models_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        config: DaemonConfig,
        metrics: NodeMetrics | None = None,
        events: EventBus | None = None,
    ) -> NodeCore:
        """Open the store, load the key and make sure this node's membership entry is held."""
        node = config.node
        key, membership = load_identity(node)
        rule = auto_revocation if config.trust.auto_revoke_equivocation else None
        state = E4State.open(
            node.data_dir,
            node.federation.admin,
            node.federation.policy,
            revocation_rule=rule,
            latest_only=config.latest_only,
        )
        try:
            state.apply(membership)
        except BaseException:
            state.close()
            raise
        return cls(config, state, key, metrics, events)

    def close(self) -> None:
        """Close the store (the daemon calls this last)."""
        self.state.close()

    # -- identity ---------------------------------------------------------------------------

    @property
    def key_id(self) -> bytes:
        return self.key.key_id

    def member_names(self) -> dict[bytes, str]:
        """Key id -> member name, from the membership entries held."""
        out: dict[bytes, str] = {}
        for e, _ in self.state.store.iter_entries(Kind.MEMBERSHIP):
            out.setdefault(e.body.member, e.body.name)  # type: ignore[union-attr]
        return out

    def is_erased(self, entry_id: bytes) -> bool:
        """True when the entry is held as erased (a pushed entry can be erased on arrival:
        a removal of all of its author's entries covers later ones too)."""
        return self.state.store.entry_status(entry_id) == db.TOMBSTONED

    def author_names(self) -> dict[bytes, str]:
        """Key id -> what List shows as the author: member names, and `admin` for the
        federation admin (it signs memberships, revocations, key envelopes)."""
        return {**self.member_names(), self.state.admin.key_id: "admin"}

    def namespace(self, name: str) -> NamespaceConfig:
        """The namespace's config, or UnknownNamespaceError naming the declared ones."""
        ns = self.config.namespace(name)
        if ns is None:
            known = ", ".join(sorted(self.config.namespaces)) or "none"
            raise UnknownNamespaceError(
                f"namespace {echo(name)} is not declared in {self.config.path} (declared: {known})"
            )
        return ns

    # -- writing ----------------------------------------------------------------------------

    def check_push_header(self, namespace: str, payload_kind: str, size: int) -> NamespaceConfig:
        """Refuse a push before its bytes arrive: unknown namespace, wrong kind, too large."""
        from crdtd.errors import OversizedPayloadError

        ns = self.namespace(namespace)
        if payload_kind == KEYS_PAYLOAD_KIND and not ns.encrypted:
            raise WrongKindError(
                f"namespace {echo(namespace)} is not encrypted: it takes no key envelopes"
            )
        if payload_kind != KEYS_PAYLOAD_KIND:
            check_payload_kind(ns, payload_kind, kinds.get(ns.kind).takes(ns))
        if size > self.config.max_payload:
            raise OversizedPayloadError(
                f"payload of {size} bytes exceeds this node's maximum of "
                f"{self.config.max_payload} bytes ([limits] max_payload in {self.config.path})"
            )
        if size == 0:
            raise PayloadError("payload_size is 0: a contribution needs a payload")
        return ns

    def push_file(
        self,
        path: Path,
        namespace: str,
        payload_kind: str = "",
        metadata: Mapping[str, Any] | None = None,
        base_id: bytes | None = None,
        signed_entry: bytes = b"",
    ) -> PushOutcome:
        """Make the payload at `path` a contribution, signed by this node or carried in
        `signed_entry`; returns once the entry is durable. The namespace's kind checks the
        bytes first and names their payload kind."""
        size = path.stat().st_size
        ns = self.check_push_header(namespace, payload_kind, size)
        if payload_kind == KEYS_PAYLOAD_KIND:
            return self._push_envelope(path, ns, signed_entry)
        try:
            kind = kinds.get(ns.kind).check_push(ns, payload_kind, path)
            if ns.encrypted:
                metadata = self._seal(path, ns, metadata, signed_entry)
                path = path.with_name(path.name + ".sealed")
        except CrdtdError as exc:
            self.metrics.rejected(exc)
            raise
        try:
            return self._push_checked(path, namespace, kind, metadata, base_id, signed_entry)
        finally:
            if ns.encrypted:
                path.unlink(missing_ok=True)

    def _seal(
        self,
        path: Path,
        ns: NamespaceConfig,
        metadata: Mapping[str, Any] | None,
        signed_entry: bytes,
    ) -> dict[str, Any]:
        """Encrypt the checked plaintext at `path` into `path.sealed` with the namespace's
        newest key; returns the metadata naming that key."""
        if signed_entry:
            raise UnauthorizedError(
                f"namespace {echo(ns.name)} is encrypted: the node seals pushes itself, so "
                "they cannot come signed by the client"
            )
        if SEALED_META in (metadata or {}):
            raise MalformedEntryError(f"metadata key {SEALED_META!r} is reserved")
        key, env = self.keys.sealing_key(ns.name)
        seal_file(path, path.with_name(path.name + ".sealed"), key)
        return {**(metadata or {}), SEALED_META: env.key_id.hex()}

    def _push_envelope(self, path: Path, ns: NamespaceConfig, signed_entry: bytes) -> PushOutcome:
        """A key envelope: it must come signed by the federation admin and name this
        namespace (every node checks the same when it builds its keys)."""
        entry = Entry.from_bytes(signed_entry) if signed_entry else None
        if entry is None or entry.author != self.state.admin.key_id:
            raise UnauthorizedError(
                f"namespace {echo(ns.name)}: a key envelope must be signed by the federation "
                "admin (crdtd federation namespace-key)"
            )
        env = KeyEnvelope.from_bytes(path.read_bytes())
        if env.namespace != ns.name:
            raise MalformedEntryError(
                f"key envelope for namespace {echo(env.namespace)} pushed to {echo(ns.name)}"
            )
        return self._push_checked(path, ns.name, KEYS_PAYLOAD_KIND, None, None, signed_entry)

    def _push_checked(
        self,
        path: Path,
        namespace: str,
        kind: str,
        metadata: Mapping[str, Any] | None,
        base_id: bytes | None,
        signed_entry: bytes,
    ) -> PushOutcome:
        size = path.stat().st_size
        source = FileSource(path)
        manifest: Manifest = source.manifest
        try:
            if signed_entry:
                return self._push_signed(signed_entry, namespace, kind, manifest, source)
            with self._chain:
                existing = self._same_contribution(namespace, manifest.digest, metadata, base_id)
                if existing is not None:
                    return PushOutcome(existing, True)
                seq, prev = self.state.chain_next(self.key_id)
                entry = make_contribution(
                    self.key,
                    seq,
                    prev,
                    namespace,
                    manifest.digest,
                    manifest.size,
                    payload_kind=kind,
                    base_id=base_id or None,
                    metadata=dict(metadata or {}),
                    policy=self.config.node.federation.policy,
                )
                result = self.state.apply(entry, source)
        except ValidationError as exc:
            self.metrics.rejected(exc)
            self._equivocation_seen(exc)
            self._not_a_member_yet(exc)
            raise
        self._applied(entry, result, "client")
        self.metrics.push_bytes.inc(size)
        return PushOutcome(entry, result.status is ApplyStatus.DUPLICATE)

    def is_member(self) -> bool:
        """True once this node's own membership entry is in its state."""
        return self.key_id in self.state.members()

    def membership_wait(self) -> str:
        """Why this node's own membership is not in its state yet, and what makes it so."""
        bootstrap = ", ".join(self.config.node.bootstrap) or "none configured"
        return (
            "this node's own membership entry is not in its state yet: the admin signed it "
            "after earlier admin entries (the memberships of the nodes added before it) that "
            "this node has not received; it applies at the first sync with a node that holds "
            f"them ([peer] bootstrap: {bootstrap})"
        )

    def _not_a_member_yet(self, exc: BaseException) -> None:
        """A refusal of this node's own entry because its membership waits: say so."""
        if isinstance(exc, NotMemberError) and not self.is_member():
            raise NotMemberError(self.membership_wait()) from None

    def _push_signed(
        self, wire: bytes, namespace: str, kind: str, manifest: Manifest, source: FileSource
    ) -> PushOutcome:
        entry = Entry.from_bytes(wire)
        where = f"signed entry {entry.id.hex()}"
        if entry.kind is not Kind.CONTRIBUTION:
            raise MalformedEntryError(
                f"{where}: is a {entry.kind.name.lower()}, not a contribution"
            )
        body = entry.body
        if body.namespace != namespace:  # type: ignore[union-attr]
            raise MalformedEntryError(
                f"{where}: names namespace {echo(body.namespace)}, the push header {echo(namespace)}"  # type: ignore[union-attr]
            )
        if body.payload_kind != kind:  # type: ignore[union-attr]
            raise MalformedEntryError(
                f"{where}: payload_kind {echo(body.payload_kind)}, the namespace takes {echo(kind)}"  # type: ignore[union-attr]
            )
        if body.payload_size != manifest.size or body.payload_digest != manifest.digest:  # type: ignore[union-attr]
            from crdtd.errors import DigestMismatchError

            raise DigestMismatchError(
                f"{where}: declares payload {body.payload_digest.hex()} ({body.payload_size} "  # type: ignore[union-attr]
                f"bytes) but the bytes sent are {manifest.digest.hex()} ({manifest.size} bytes)"
            )
        result = self.state.apply(entry, source)
        self._applied(entry, result, "client")
        self.metrics.push_bytes.inc(manifest.size)
        return PushOutcome(entry, result.status is ApplyStatus.DUPLICATE)

    def _same_contribution(
        self,
        namespace: str,
        digest: bytes,
        metadata: Mapping[str, Any] | None,
        base_id: bytes | None,
    ) -> Entry | None:
        """This node's visible contribution with the same payload, metadata and base, if any
        (so a client retrying a push it did not see acknowledged creates no duplicate)."""
        for e in self.state.visible(namespace):
            b = e.body
            if (
                e.author == self.key_id
                and b.payload_digest == digest  # type: ignore[union-attr]
                and (b.base_id or None) == (base_id or None)  # type: ignore[union-attr]
                and dict(b.metadata) == _normalised_meta(metadata)  # type: ignore[union-attr]
            ):
                return e
        return None

    def submit(self, wire: bytes) -> ApplyResult:
        """Apply a signed entry that carries no payload (membership, removal, ...)."""
        entry = Entry.from_bytes(wire)
        if entry.kind is Kind.CONTRIBUTION:
            raise MalformedEntryError(
                f"entry {entry.id.hex()}: a contribution must be pushed with its payload "
                "(PushContribution with signed_entry)"
            )
        try:
            result = self.state.apply(entry)
        except ValidationError as exc:
            self.metrics.rejected(exc)
            self._equivocation_seen(exc)
            raise
        self._applied(entry, result, "client")
        return result

    def erase(
        self,
        ids: list[bytes],
        author: bytes | None = None,
        reason: str = "",
        signed_removal: bytes = b"",
    ) -> tuple[Entry, int]:
        """Apply a removal (signed by this node, or given signed); returns it and how many
        visible entries it erased here."""
        if signed_removal:
            entry = Entry.from_bytes(signed_removal)
            if entry.kind is not Kind.REMOVAL:
                raise MalformedEntryError(
                    f"entry {entry.id.hex()}: is a {entry.kind.name.lower()}, not a removal"
                )
            targets = list(entry.body.targets)  # type: ignore[union-attr]
            author = entry.body.target_author  # type: ignore[union-attr]
        else:
            if not ids and author is None:
                raise ConfigError("erase needs entry ids or an author")
            if author is not None and author != self.key_id:
                raise UnauthorizedError(
                    f"erasing every entry of {echo(author)} needs a removal signed by the "
                    "federation admin: crdtd erase --author MEMBER --admin-dir FED_DIR (it "
                    "continues the admin's chain kept there)"
                )
            for t in ids:
                try:
                    e = self.state.store.get_entry(t)
                except NotFoundError:
                    raise NotFoundError(f"entry {echo(t)} is not held by this node") from None
                if e.author != self.key_id:
                    raise UnauthorizedError(
                        f"entry {t.hex()} was signed by {e.author.hex()}, not this node "
                        f"({self.key_id.hex()}); its author (erase on its own node, or "
                        "--key MEMBER.key) or the federation admin (--admin-dir FED_DIR) must "
                        "sign the removal"
                    )
            targets = sorted(set(ids))
            entry = None
        before = self._live(targets, author)
        try:
            if entry is None:
                with self._chain:
                    seq, prev = self.state.chain_next(self.key_id)
                    entry = make_removal(
                        self.key,
                        seq,
                        prev,
                        targets,
                        target_author=author,
                        reason=reason,
                        policy=self.config.node.federation.policy,
                    )
                    result = self.state.apply(entry)
            else:
                result = self.state.apply(entry)
        except ValidationError as exc:
            self.metrics.rejected(exc)
            self._equivocation_seen(exc)
            if entry is not None and entry.author == self.key_id:
                self._not_a_member_yet(exc)
            raise
        erased = before - self._live(targets, author)
        self._applied(entry, result, "client")
        self._publish_erased([self.state.store.get_entry(t) for t in sorted(erased)], entry.id)
        return entry, len(erased)

    def _publish_erased(self, erased: list[Entry], removal_id: bytes) -> None:
        """One `entry_erased` Watch event per erased entry, with its namespace (so a watcher
        of that namespace sees it)."""
        for e in erased:
            ns = e.body.namespace if e.kind is Kind.CONTRIBUTION else ""  # type: ignore[union-attr]
            self.events.publish(
                NodeEvent(
                    "entry_erased",
                    e.id,
                    ns,
                    e.author,
                    e.kind.name.lower(),
                    f"removal {removal_id.hex()}",
                )
            )

    def _erased_by(self, removal: Entry) -> list[Entry]:
        """The entries a removal names that are erased here now, in id order."""
        store = self.state.store
        body = removal.body
        found: dict[bytes, Entry] = {}
        for t in body.targets:  # type: ignore[union-attr]
            if store.entry_status(t) == db.TOMBSTONED:
                found[t] = store.get_entry(t)
        author = body.target_author  # type: ignore[union-attr]
        if author is not None:
            for e, _ in store.iter_entries(status=db.TOMBSTONED):
                if e.author == author:
                    found[e.id] = e
        return [found[k] for k in sorted(found)]

    def _live(self, targets: list[bytes], author: bytes | None) -> set[bytes]:
        live = {t for t in targets if self.state.store.entry_status(t) == db.LIVE}
        if author is not None:
            live |= {
                e.id
                for e, st in self.state.store.iter_entries(status=db.LIVE)
                if e.author == author and e.kind in (Kind.CONTRIBUTION, Kind.EVIDENCE)
            }
        return live

    def _applied(self, entry: Entry, result: ApplyResult, source: str) -> None:
        """Metrics and Watch events for an entry that went in (and any it released)."""
        if result.status is ApplyStatus.DUPLICATE:
            return
        ids = [entry.id, *result.released]
        for eid in ids:
            e = entry if eid == entry.id else self.state.store.get_entry(eid)
            self.metrics.entries_applied.labels(e.kind.name.lower(), source).inc()
            ns = e.body.namespace if e.kind is Kind.CONTRIBUTION else ""  # type: ignore[union-attr]
            status = result.status.value if eid == entry.id else "applied"
            self.events.publish(
                NodeEvent(
                    "entry_" + ("held" if status == "held" else "applied"),
                    eid,
                    ns,
                    e.author,
                    e.kind.name.lower(),
                    status,
                )
            )

    def _equivocation_seen(self, exc: BaseException) -> None:
        """An apply found an equivocation: publish the proof, so every replica quarantines
        both headers (and, with auto_revoke_equivocation, revokes the author)."""
        proof = getattr(exc, "proof", None)
        if isinstance(exc, EquivocationError) and isinstance(proof, EquivocationProof):
            self.evidence.publish([equivocation_observation(proof)])

    def detect_models(self) -> list[Entry]:
        """With `[trust] detect_model_outliers`, publish model-dimension evidence for the
        outliers of each safetensors namespace whose visible set changed; returns it."""
        if not self.config.trust.detect_model_outliers:
            return []
        with self._models_lock:
            observations = model_observations(self, self._models_seen)
        return self.evidence.publish(observations) if observations else []

    def evidence_published(self, entry: Entry, result: ApplyResult) -> None:
        """Hook for the evidence publisher: an evidence entry this node signed went in."""
        self._applied(entry, result, "trust")

    def entry_applied_elsewhere(self, entry: Entry, status: str, source: str = "sync") -> None:
        """Hook for the sync layer: an entry it applied (metrics and Watch; a removal also
        announces the entries it erased here)."""
        self.metrics.entries_applied.labels(entry.kind.name.lower(), source).inc()
        ns = entry.body.namespace if entry.kind is Kind.CONTRIBUTION else ""  # type: ignore[union-attr]
        self.events.publish(
            NodeEvent("entry_applied", entry.id, ns, entry.author, entry.kind.name.lower(), status)
        )
        if entry.kind is Kind.REMOVAL and self.state.store.entry_status(entry.id) == db.LIVE:
            self._publish_erased(self._erased_by(entry), entry.id)

    def entry_rejected_elsewhere(self, exc: BaseException, entry_id: bytes = b"") -> None:
        """Hook for the sync layer: an entry it refused."""
        self.metrics.rejected(exc)
        self.events.publish(NodeEvent("entry_rejected", entry_id, detail=str(exc)))

    # -- reading ----------------------------------------------------------------------------

    def chain_head(self, author: bytes | None = None) -> tuple[bytes, int, bytes | None]:
        """(author, next seq, prev) for entries `author` (default: this node) signs next."""
        who = author or self.key_id
        seq, prev = self.state.chain_next(who)
        return who, seq, prev

    def list_entries(
        self, namespace: str = "", include_removed: bool = False, author: bytes = b""
    ) -> list[EntryView]:
        """Entries in the set, id order: contributions of a namespace, or every kind."""
        names = self.author_names()
        out: list[EntryView] = []
        for e, st in self.state.store.iter_entries():
            if namespace and (e.kind is not Kind.CONTRIBUTION or e.body.namespace != namespace):  # type: ignore[union-attr]
                continue
            if author and e.author != author:
                continue
            if st != db.LIVE and not include_removed:
                continue
            out.append(EntryView(e, st, names.get(e.author, "")))
        return out

    def get(self, entry_id: bytes) -> EntryView:
        """One entry (NotFoundError when absent)."""
        e = self.state.store.get_entry(entry_id)
        st = self.state.store.entry_status(entry_id)
        return EntryView(e, db.LIVE if st is None else st, self.author_names().get(e.author, ""))

    def payload_chunks(self, entry_id: bytes) -> Iterator[bytes]:
        """The payload of a visible contribution, chunk by chunk, each re-verified."""
        view = self.get(entry_id)
        e = view.entry
        if e.kind is not Kind.CONTRIBUTION:
            raise NotFoundError(f"entry {entry_id.hex()} is a {e.kind.name.lower()}: no payload")
        if view.status != db.LIVE:
            raise NotFoundError(
                f"entry {entry_id.hex()} was {STATUS_NAMES.get(view.status, 'removed')}: "
                "its payload is gone"
            )
        manifest = self.state.store.get_manifest(e.body.payload_digest)  # type: ignore[union-attr]
        for ref in manifest.chunks:
            yield self.state.store.read_chunk(ref.digest)

    def entry_counts(self) -> dict[tuple[str, str], int]:
        """(kind, state) -> count, plus held entries (from the counts the store keeps)."""
        counts: dict[tuple[str, str], int] = {}
        for (kind, status, _), (n, _size) in self.state.store.counts().items():
            state = "held" if status == db.HELD else STATUS_NAMES.get(status, "other")
            key = (Kind(kind).name.lower(), state)
            counts[key] = counts.get(key, 0) + n
        return counts

    def visible_counts(self) -> dict[str, tuple[int, int]]:
        """namespace -> (visible contributions, their payload bytes), from the kept counts."""
        return {
            ns: counts
            for (kind, status, ns), counts in self.state.store.counts().items()
            if kind == Kind.CONTRIBUTION and status == db.LIVE
        }

    def assessment(self) -> Assessment:
        """Trust scores and revocations from the evidence held (recomputed when the root moves)."""
        root = self.state.merkle_root()
        cache = self._trust
        with cache.lock:
            if cache.assessment is not None and cache.root == root:
                return cache.assessment
            entries = [
                e
                for kind in (Kind.EVIDENCE, Kind.REVOCATION)
                for e, _ in self.state.store.iter_entries(kind, db.LIVE)
            ]
            result = assess(entries, self.state.members(include_revoked=True), self.config.trust)
            cache.root, cache.assessment = root, result
            return result

    def snapshot(self, peers: list[PeerView] | None = None) -> StateSnapshot:
        """State-derived metric values (called at scrape time, off the event loop; `peers`
        is the peer list read on the loop, where the sync layer mutates it)."""
        from crdtd.node.metrics import PeerSnapshot
        from crdtd.trust.scores import SCALE

        counts = self.entry_counts()
        scores = self.assessment().scores
        names = self.member_names()
        now = time.monotonic()
        rows = []
        for p in self.peer_status(self.peers() if peers is None else peers):
            trust: dict[str, float] = {}
            if p.key_id in scores.dims:
                for dim in ("integrity", "causality", "consistency", "gossip", "model"):
                    trust[dim] = scores.dimension(p.key_id, dim) / SCALE
                trust["overall"] = scores.trust.get(p.key_id, 0) / SCALE
            rows.append(
                PeerSnapshot(
                    name=p.name or names.get(p.key_id, p.key_id.hex()[:16]),
                    alive=p.alive,
                    in_sync=p.in_sync,
                    seconds_since_sync=None if p.last_sync is None else now - p.last_sync,
                    trust=trust,
                    revoked=p.revoked,
                )
            )
        return StateSnapshot(
            entries={k: v for k, v in counts.items() if k[0] in KINDS},
            state_root=self.state.merkle_root(),
            peers=tuple(rows),
            served_bytes=self.served_bytes(),
            rounds=self.round_snapshots(),
        )

    def round_snapshots(self) -> tuple[RoundSnapshot, ...]:
        """Every rounds namespace's latest round, its participants and reported metrics."""
        from crdtd.kinds.rounds import round_progress

        out = []
        for name in sorted(self.config.namespaces):
            if self.config.namespaces[name].rounds:
                r, participants, reported = round_progress(self, name)
                out.append(RoundSnapshot(name, r, participants, reported))
        return tuple(out)

    def peer_status(self, peers: list[PeerView]) -> list[PeerView]:
        """`peers` with revoked keys marked: a revoked peer is neither alive nor in sync,
        whatever the peer table last saw (its sessions are refused from now on). Reads the
        store: call off the event loop."""
        out = []
        for p in peers:
            if p.key_id and self.state.is_revoked(p.key_id):
                p = replace(p, revoked=True, alive=False, in_sync=False)
            out.append(p)
        return out

    def peers(self) -> list[PeerView]:
        """Known peers as the sync layer reports them, sorted by name then address."""
        return sorted(self.peer_source(), key=lambda p: (p.name, p.address))


def _normalised_meta(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata as a contribution header stores it (floats become their repr)."""
    out: dict[str, Any] = {}
    for k, v in (metadata or {}).items():
        out[k] = repr(v) if isinstance(v, float) else v
    return out
