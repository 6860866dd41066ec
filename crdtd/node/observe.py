"""From what sync saw to trust evidence: observations, then signed evidence entries.

`observations_for(peer, items, state)` is pure over its inputs (and a read of the store for a
chain-fork's earlier entry): each `crdtd.sync.receive.Misbehaviour` becomes at most one
`Observation`, self-proving where the bytes allow it:

| sync saw | evidence | subject | proof |
| --- | --- | --- | --- |
| equivocation (`EquivocationError.proof`) | causality −1000 | the author | `equivocation` (self-proving) |
| broken chain link, earlier entry held | causality −1000 | the author | `chain_fork` (self-proving) |
| manifest names the signed digest, sizes differ | integrity −1000 | the author | `manifest_mismatch` (self-proving) |
| bad signature, malformed record | integrity −1000 | the relaying peer | `bad_signature` with the bytes (subjective) |
| another manifest/arrival failure | integrity −1000 | the relaying peer | none (subjective) |
| an entry not asked for (id mismatch) | consistency −1000 | the relaying peer | none (subjective) |

`EvidencePublisher` signs observations as this node's evidence entries, through the node's
chain lock, and applies them like any entry (so they replicate by sync). It never publishes
a proof its own `check_proof` would call false, publishes each fault and each (subject,
dimension) accusation once, and keeps subjective weight within the observer budget of its
logical epoch: the epoch is a counter stored in the entries; it advances (at most once per
`epoch_seconds` of the monotonic clock) only when the current one is spent. Self-proving
evidence costs no budget.

`model_observations(core)` runs the model-dimension detector (crdtd.trust.outliers) over each
safetensors namespace's visible contributions, as task vectors against the namespace's base
(its configured `base`, else the one `base_id` every contribution names), when the
federation's `[trust] detect_model_outliers` is on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from crdtd.crypto.schemes import PublicKeys
from crdtd.errors import (
    EvidenceError,
    MalformedEntryError,
    MalformedManifestError,
    ValidationError,
)
from crdtd.kinds.rounds import declared_int, is_global
from crdtd.node.logs import event, get_logger
from crdtd.state.entry import Entry, EquivocationProof, Kind
from crdtd.store import sqlite as db
from crdtd.store.chunks import Manifest
from crdtd.trust.evidence import (
    PROVEN_DIMENSION,
    WEIGHT_UNIT,
    Evidence,
    Observation,
    ProofKind,
    Verdict,
    check_proof,
    evidence_entry,
    proof_for_bad_signature,
    proof_for_chain_fork,
    proof_for_equivocation,
    proof_for_manifest_mismatch,
)

if TYPE_CHECKING:
    from crdtd.node.core import NodeCore
    from crdtd.state.e4 import E4State
    from crdtd.store.store import NodeStore
    from crdtd.sync.receive import Misbehaviour

log = get_logger("crdtd.node.trust")

MAX_WIRE_IN_PROOF = 128 * 1024
"""Bytes of a relayed record attached to a bad-signature observation (larger: no bytes)."""


def _relayed(peer: bytes, m: Misbehaviour, dimension: str, what: str) -> Observation:
    """Subjective evidence against the peer that sent `m`."""
    reason = f"{what}: {m.detail}"[:500]
    if m.kind in ("bad_signature", "malformed") and len(m.wire) <= MAX_WIRE_IN_PROOF:
        return Observation(
            peer,
            dimension,
            -WEIGHT_UNIT,
            reason,
            ProofKind.BAD_SIGNATURE,
            proof_for_bad_signature(m.wire),
        )
    return Observation(peer, dimension, -WEIGHT_UNIT, reason)


def _chain_fork(m: Misbehaviour, state: E4State) -> Observation | None:
    try:
        later = Entry.from_bytes(m.wire)
    except MalformedEntryError:
        return None
    if later.seq < 2:
        return None
    with state.store.reading() as c:
        row = c.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq = ? ORDER BY id LIMIT 1",
            (later.author, later.seq - 1),
        ).fetchone()
    if row is None:
        return None
    earlier = Entry.from_bytes(bytes(row[0]))
    if later.prev == earlier.id:
        return None
    return Observation(
        later.author,
        "causality",
        -WEIGHT_UNIT,
        f"chain fork: seq {later.seq} ({later.id.hex()[:16]}) does not follow seq "
        f"{earlier.seq} ({earlier.id.hex()[:16]})",
        ProofKind.CHAIN_FORK,
        proof_for_chain_fork(earlier, later),
    )


def _manifest(peer: bytes, m: Misbehaviour) -> Observation:
    """Self-proving against the author when the manifest is the signed digest's and its size
    contradicts the signed size; otherwise the relaying peer sent a wrong manifest."""
    try:
        entry = Entry.from_bytes(m.wire)
        manifest = Manifest.from_bytes(m.manifest)
    except (MalformedEntryError, MalformedManifestError):
        return _relayed(peer, m, "integrity", "relayed a bad manifest")
    if (
        entry.kind is Kind.CONTRIBUTION
        and manifest.digest == entry.payload_digest
        and manifest.size != entry.payload_size
    ):
        return Observation(
            entry.author,
            "integrity",
            -WEIGHT_UNIT,
            f"contribution {entry.id.hex()[:16]} declares {entry.payload_size} bytes, "
            f"its manifest {manifest.size}",
            ProofKind.MANIFEST_MISMATCH,
            proof_for_manifest_mismatch(entry, manifest),
        )
    return _relayed(peer, m, "integrity", "relayed a bad manifest")


def observations_for(
    peer: bytes, items: Sequence[Misbehaviour], state: E4State
) -> list[Observation]:
    """What `peer` (the key that sent the records) and the authors did, as observations."""
    out: list[Observation] = []
    for m in items:
        if m.kind == "equivocation":
            if isinstance(m.proof, EquivocationProof):
                out.append(equivocation_observation(m.proof))
        elif m.kind == "chain":
            fork = _chain_fork(m, state)
            if fork is not None:
                out.append(fork)
        elif m.kind == "bad_manifest":
            out.append(_manifest(peer, m))
        elif m.kind == "unasked":
            out.append(
                Observation(peer, "consistency", -WEIGHT_UNIT, f"id mismatch: {m.detail}"[:500])
            )
        elif m.kind in ("bad_signature", "malformed"):
            out.append(_relayed(peer, m, "integrity", "relayed an entry that fails"))
        else:
            out.append(_relayed(peer, m, "integrity", "relayed an invalid entry"))
    return out


def equivocation_observation(proof: EquivocationProof) -> Observation:
    """The self-proving observation of an equivocation (both signed headers)."""
    return Observation(
        proof.author,
        "causality",
        -WEIGHT_UNIT,
        f"equivocation at seq {proof.a.seq}",
        ProofKind.EQUIVOCATION,
        proof_for_equivocation(proof.a, proof.b),
    )


def _tensors(store: NodeStore, e: Entry) -> dict[str, object]:
    """A contribution's tensors (numpy), read whole from the store."""
    from safetensors.numpy import load

    return dict(load(store.read_payload(e.payload_digest)))


def _history(load: Callable[[], _History]) -> _History:
    """The cohort's history, or none when this node cannot build it (a global it no longer
    holds): the ascent statistic is then skipped, the others still judge the cohort."""
    from crdtd.errors import CrdtdError

    try:
        return load()
    except (CrdtdError, ValueError, OSError):
        return None, {}


def _previous(store: NodeStore, e: Entry | None) -> dict[str, object] | None:
    """An author's previous-round update's tensors, None when absent or already reclaimed."""
    from crdtd.errors import CrdtdError

    if e is None:
        return None
    try:
        return _tensors(store, e)
    except (CrdtdError, ValueError, OSError):
        return None


def _common_base(entries: Sequence[Entry]) -> bytes | None:
    """The one base id every contribution (but the base itself) names, if there is one."""
    named = {e.base_id for e in entries if e.base_id is not None}
    if len(named) != 1:
        return None
    (base,) = named
    return base if all(e.base_id == base or e.id == base for e in entries) else None


def cohorts(entries: Sequence[Entry]) -> dict[int, list[Entry]]:
    """Contributions grouped by the round they declare (0 when none), leaving out global
    models: entries that say so, and entries another contribution names as its base."""
    bases = {e.base_id for e in entries if e.base_id is not None}
    out: dict[int, list[Entry]] = {}
    for e in entries:
        if is_global(e) or e.id in bases:
            continue
        out.setdefault(max(0, declared_int(e, "round") or 0), []).append(e)
    return out


def model_observations(core: NodeCore, seen: dict[str, tuple[bytes, ...]]) -> list[Observation]:
    """This node's model reports for every cohort (round) of every safetensors namespace
    whose contributions changed since `seen` ((namespace, round) -> ids, updated here).

    In a rounds namespace a cohort is a round's fresh updates, judged as task vectors
    against the round's base global (`crdtd.kinds.rounds`); elsewhere the visible
    contributions grouped by the round they declare, against the namespace's base.
    """
    from crdtd.errors import CrdtdError
    from crdtd.trust.outliers import (
        ModelContribution,
        OutlierParams,
        model_outliers,
        report_observation,
    )

    state = core.state
    params = OutlierParams.for_federation(len(state.members(include_revoked=True)))
    out: list[Observation] = []
    for name, round_, entries, base_of, history_of in _model_cohorts(core):
        ids = tuple(e.id for e in entries)
        key = f"{name}\x00{round_}"
        if seen.get(key) == ids or len(entries) < params.min_contributions:
            continue
        try:
            base = base_of()
            previous_base, before = _history(history_of)
            contributions = [
                ModelContribution(
                    e.id,
                    e.author,
                    _tensors(state.store, e),
                    declared_int(e, "num_examples"),
                    e.seq,
                    _previous(state.store, before.get(e.author)),
                )
                for e in entries
            ]
            stats = model_outliers(contributions, base, params, previous_base)
        except (CrdtdError, ValueError, OSError) as exc:
            event(log, "trust.model_check_failed", level=30, namespace=name, error=str(exc))
            continue
        seen[key] = ids
        out.append(report_observation(stats, name, round_, core.key_id))
    return out


_History = tuple[Mapping[str, object] | None, dict[bytes, Entry]]
"""The global a cohort's previous round trained from, and each author's update of that round."""


_Cohort = tuple[
    str, int, list[Entry], Callable[[], Mapping[str, object] | None], Callable[[], _History]
]
"""(namespace, round, contributions, base loader, history loader) of one cohort to judge."""


def _model_cohorts(core: NodeCore) -> list[_Cohort]:
    """(namespace, round, contributions, base loader, history loader) for every cohort to
    judge; the history (a rounds namespace from round 2 on) feeds the ascent statistic."""
    from crdtd.kinds.rounds import round_global, select_cohort

    state = core.state
    by_ns: dict[str, list[Entry]] = {}
    for e in state.visible():
        if e.payload_kind == "safetensors":
            by_ns.setdefault(e.namespace, []).append(e)
    out: list[_Cohort] = []

    def no_history() -> _History:
        return None, {}

    for name in sorted(by_ns):
        ns = core.config.namespace(name)
        if ns is None or ns.payload_kind != "safetensors" or ns.encrypted:
            continue  # an encrypted namespace's tensors are not read for trust
        if ns.rounds:
            held = _held_updates(core, name)
            for r in sorted({declared_int(e, "round") or 0 for e, _ in held} - {0}):
                fresh = [e for e, s in select_cohort(held, r, 0).members if s == 0]

                def base(_ns=ns, _r=r) -> Mapping[str, object] | None:
                    return round_global(core, _ns, _r - 1).params

                def history(_ns=ns, _r=r, _held=held) -> _History:
                    if _r < 2:
                        return None, {}
                    before = select_cohort(_held, _r - 1, 0).members
                    return round_global(core, _ns, _r - 2).params, {
                        e.author: e for e, s in before if s == 0
                    }

                out.append((name, r, fresh, base, history))
            continue
        for round_, entries in sorted(cohorts(by_ns[name]).items()):
            base_id = ns.base or _common_base(entries)
            entries = [e for e in entries if e.id != base_id]

            def legacy(_b=base_id) -> Mapping[str, object] | None:
                if _b is not None and state.store.entry_status(_b) == db.LIVE:
                    return _tensors(state.store, state.store.get_entry(_b))
                return None

            out.append((name, round_, entries, legacy, no_history))
    return out


def _held_updates(core: NodeCore, namespace: str) -> list[tuple[Entry, int]]:
    """A rounds namespace's updates whose bytes this node holds (live or just superseded)."""
    with core.state.store.reading() as c:
        rows = c.execute(
            "SELECT raw, status FROM entries WHERE kind = ? AND namespace = ? AND status IN (?, ?)",
            (int(Kind.CONTRIBUTION), namespace, db.LIVE, db.SUPERSEDED),
        ).fetchall()
    return [(Entry.from_bytes(bytes(r)), int(st)) for r, st in rows]


class EvidencePublisher:
    """Signs observations as this node's evidence entries, within its budget; thread-safe."""

    def __init__(
        self,
        core: NodeCore,
        epoch_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.epoch_seconds = epoch_seconds
        self.clock = clock
        self.queue: list[Observation] = []
        self.published = 0
        self._lock = threading.Lock()
        self._loaded = False
        self._epoch = 0
        self._used = 0
        self._epoch_started = 0.0
        self._done: set[tuple[bytes, str, bytes]] = set()

    # -- bookkeeping from the node's own evidence ---------------------------------------------

    def _load(self) -> None:
        """Epoch, spent budget and what was already said, from this node's own evidence."""
        if self._loaded:
            return
        own = [
            e
            for e, _ in self.core.state.store.iter_entries(Kind.EVIDENCE, db.LIVE)
            if e.author == self.core.key_id
        ]
        decoded: list[Evidence] = []
        for e in own:
            try:
                decoded.append(Evidence.from_entry(e))
            except EvidenceError:
                continue
        self._epoch = max((ev.epoch for ev in decoded), default=0)
        for ev in decoded:
            self._done.add(self._key_of(ev.subject, ev.dimension, ev.proof_kind, ev.proof_data))
            if not ev.self_proving and ev.epoch == self._epoch and ev.weight:
                self._used += abs(ev.weight)
        self._epoch_started = self.clock()
        self._loaded = True

    @staticmethod
    def _key_of(
        subject: bytes, dimension: str, kind: ProofKind, data: bytes
    ) -> tuple[bytes, str, bytes]:
        if kind in PROVEN_DIMENSION or kind is ProofKind.MODEL_REPORT:
            return (subject, kind.name, data)
        return (subject, dimension, b"")

    # -- publishing ---------------------------------------------------------------------------

    def observe(self, peer: bytes, items: Sequence[Misbehaviour]) -> list[Entry]:
        """Turn what `peer` sent into observations and publish what the budget allows."""
        return self.publish(observations_for(peer, items, self.core.state))

    def publish(self, observations: Sequence[Observation]) -> list[Entry]:
        """Queue `observations` and sign what may go out now; returns the entries applied."""
        with self._lock:
            self._load()
            self.queue.extend(observations)
            return self._flush()

    def flush(self) -> list[Entry]:
        """Sign queued observations that now fit (a new epoch may have begun)."""
        with self._lock:
            self._load()
            return self._flush()

    def _flush(self) -> list[Entry]:
        state = self.core.state
        keys = state.members(include_revoked=True)
        budget = self.core.config.trust.params.budget
        faults = self.core.assessment().scores.faults
        known = {f.fault_id for fs in faults.values() for f in fs}
        out: list[Entry] = []
        left: list[Observation] = []
        for obs in self.queue:
            key = self._key_of(obs.subject, obs.dimension, obs.kind, obs.data)
            report = obs.kind is ProofKind.MODEL_REPORT
            if key in self._done or (obs.subject == self.core.key_id and not report):
                continue
            if report:  # a verdict on one cohort: costs no budget, said once
                self._done.add(key)
                entry = self._sign(obs)
                if entry is not None:
                    out.append(entry)
                continue
            if obs.subject not in keys or state.is_revoked(obs.subject):
                continue
            if not self._checks_out(obs, keys, known):
                self._done.add(key)
                continue
            cost = 0 if obs.self_proving else abs(obs.weight)
            if cost > budget:
                self._done.add(key)  # could never fit an epoch
                continue
            if self._used + cost > budget:
                if self.clock() - self._epoch_started < self.epoch_seconds:
                    left.append(obs)  # waits for the next epoch
                    continue
                self._epoch += 1
                self._used = 0
                self._epoch_started = self.clock()
            self._done.add(key)
            entry = self._sign(obs)
            if entry is None:
                continue
            self._used += cost
            out.append(entry)
        self.queue = left
        self.published += len(out)
        return out

    def _checks_out(
        self, obs: Observation, keys: Mapping[bytes, PublicKeys], known: set[bytes]
    ) -> bool:
        """False for a proof our own check calls false, or a fault already in the set."""
        if obs.kind is ProofKind.NONE:
            return True
        ev = Evidence(
            self.core.key_id,
            0,
            b"",
            obs.subject,
            obs.dimension,
            obs.weight,
            self._epoch,
            obs.kind,
            obs.data,
            obs.reason,
        )
        finding = check_proof(ev, keys)
        if finding.verdict is Verdict.FALSE:
            event(log, "trust.evidence_skipped", level=30, subject=obs.subject, why=finding.detail)
            return False
        return finding.verdict is not Verdict.PROVEN or finding.fault_id not in known

    def _sign(self, obs: Observation) -> Entry | None:
        core = self.core
        try:
            with core._chain:
                seq, prev = core.state.chain_next(core.key_id)
                entry = evidence_entry(
                    core.key,
                    seq,
                    prev,
                    obs.subject,
                    obs.dimension,
                    obs.weight,
                    epoch=self._epoch,
                    proof_kind=obs.kind,
                    proof_data=obs.data,
                    reason=obs.reason,
                    policy=core.config.node.federation.policy,
                )
                result = core.state.apply(entry)
        except (EvidenceError, ValidationError) as exc:
            event(log, "trust.evidence_failed", level=30, subject=obs.subject, error=str(exc))
            return None
        core.evidence_published(entry, result)
        event(
            log,
            "trust.evidence",
            entry=entry.id,
            subject=obs.subject,
            dimension=obs.dimension,
            proof=obs.kind.name.lower(),
            epoch=self._epoch,
        )
        return entry
