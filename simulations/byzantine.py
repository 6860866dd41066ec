"""Byzantine harness: N nodes with real stores, real signatures, real trust; f adversaries.

Every node holds a real `E4State` on a SQLite store in a temporary directory, signs real
entries, and judges peers with `crdtd.trust`. Nodes gossip push-pull: each round every node
opens a session with `fanout` peers chosen by a seeded RNG; a session pulls the entries the
peer advertises and the caller lacks, then pushes the other way. Honest nodes relay every
entry they hold, gated authors' contributions included: gating decides what a node merges,
not what it replicates, so honest nodes end on one state root.

The session here is a direct in-process exchange of entry ids and wire bytes (the same
push-pull semantics as crdtd.sync, without its Merkle descent), because adversaries must be
able to twist every reply and honest nodes must see the raw bytes they reject. `--grpc`
runs a reduced attack set on real `crdtd start` daemons instead (simulations/byzantine_grpc.py).

Adversaries (each plays one attack; the assignment cycles through `ATTACK_ORDER`):

- forged_signature: slips entries with broken signatures (its own and impersonated) into replies
- equivocation: signs two contributions with one seq, gives each half of the peers one
- praise_ring: floods praise for its fellow adversaries (far over the evidence budget)
- false_accusation: accuses every honest node (within budget) of withholding
- withholding: refuses every sync session with honest peers, except one friend
- replay: answers every request with old entries the peer already holds
- sign_flip / noise / alie: poisoned model contributions (−3·update; large-norm noise;
  "a little is enough": mean − z·std of the honest updates, identical across colluders)

Honest nodes turn what they see into evidence: bad signatures (with the bytes), proven
equivocations, withholding and replay (subjective), and model outliers of the namespace.
After the attack rounds the adversaries stop writing and the honest nodes settle; the
report says whether honest nodes hold identical trust vectors and materialise identical
bytes, how many rounds each adversary took to be gated at every honest node, and how far
the merged model is from the merge of honest contributions only.

A round here is one gossip pass (fanout 2), not a training round: a model attacker is gated
once `model_flags` (3) of its rounds are outliers in the reports of observers holding half
the trust mass, and a round's reports reach them one or two passes later, so model attackers
are gated after about 5 rounds (self-proving faults after 1-3). benchmarks/bench_fl.py, whose
rounds gossip until nothing moves, gates an attacker flagged every round at round 3.

    python simulations/byzantine.py --nodes 10 --byzantine 2
    python simulations/byzantine.py --nodes 10 --table
    python simulations/byzantine.py --grpc --nodes 10 --byzantine 3
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519
from crdtd.errors import (
    EquivocationError,
    MalformedEntryError,
    NotFoundError,
    SignatureError,
    ValidationError,
)
from crdtd.kinds.rounds import declared_int
from crdtd.node.observe import cohorts
from crdtd.state.e4 import JOIN_ORDER, ApplyStatus, E4State
from crdtd.state.entry import (
    ContributionBody,
    Entry,
    Kind,
    Signature,
    make_contribution,
    make_membership,
)
from crdtd.store import NodeStore
from crdtd.store.chunks import Manifest, chunk_bytes, manifest_of
from crdtd.store.sqlite import LIVE
from crdtd.trust import evidence
from crdtd.trust.evidence import (
    WEIGHT_UNIT,
    ProofKind,
    evidence_entry,
    proof_for_bad_signature,
    proof_for_equivocation,
)
from crdtd.trust.gating import (
    Assessment,
    FederationPolicy,
    NamespacePolicy,
    Revocations,
    assess,
    auto_revocation,
)
from crdtd.trust.outliers import (
    ModelContribution,
    OutlierParams,
    model_outliers,
    report_observation,
)
from crdtd.trust.scores import TrustParams, TrustScores, compute_scores
from crdtd.trust.weighting import WeightedInput, plan_materialisation

ATTACK_ORDER = (
    "sign_flip",
    "equivocation",
    "false_accusation",
    "forged_signature",
    "noise",
    "withholding",
    "praise_ring",
    "replay",
    "alie",
    "alie",
)
"""Adversary i plays ATTACK_ORDER[i % len]; ALIE appears twice so its colluders come in pairs."""

ATTACKS = tuple(sorted(set(ATTACK_ORDER)))
MODEL_ATTACKS = ("alie", "noise", "sign_flip")
FRACTIONS = (0, 10, 20, 30, 34, 40)
NAMESPACE = "model/sim"


@dataclass(frozen=True)
class SimConfig:
    """One scenario: sizes, seed and which attacks the adversaries play."""

    nodes: int = 10
    byzantine: int = 2
    seed: int = 7
    fanout: int = 2
    max_rounds: int = 30
    settle_rounds: int = 4
    epoch_rounds: int = 1
    attacks: tuple[str, ...] = ATTACK_ORDER
    strategy: str = "fedavg"
    model_dim: int = 16
    auto_revoke: bool = True
    store_dir: str | None = None

    def __post_init__(self) -> None:
        if self.nodes < 3 or not 0 <= self.byzantine < self.nodes:
            raise ValueError(f"need nodes >= 3 and 0 <= byzantine < nodes, got {self}")
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown or not self.attacks:
            raise ValueError(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")


@dataclass
class SimResult:
    """What one scenario showed (see `format_result`)."""

    config: SimConfig
    adversaries: dict[str, str]
    rounds: int
    trust_identical: bool
    sha_identical: bool
    materialised_sha256: str
    rounds_to_gate: dict[str, int | None]
    honest_gated: list[str]
    distance: float
    distance_no_trust: float
    evidence_entries: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Honest nodes agree on trust and on the materialised bytes."""
        return self.trust_identical and self.sha_identical

    @property
    def max_rounds_to_gate(self) -> int | None:
        """Rounds until the last adversary was gated everywhere (None if one never was)."""
        values = list(self.rounds_to_gate.values())
        if any(v is None for v in values):
            return None
        return max((v for v in values if v is not None), default=0)


# -- payloads ---------------------------------------------------------------------------------


def _to_safetensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    import torch
    from safetensors.torch import save

    return save(
        {
            k: torch.from_numpy(np.ascontiguousarray(tensors[k], dtype=np.float32))
            for k in sorted(tensors)
        }
    )


def _from_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.torch import load

    return {k: v.numpy().astype(np.float64) for k, v in load(data).items()}


class ModelWorld:
    """The task: a base model, the true update, and each honest site's noisy version of it."""

    def __init__(self, seed: int, dim: int, nodes: int) -> None:
        rng = np.random.default_rng(seed)
        self.shapes = {"layer.bias": (dim,), "layer.weight": (dim, dim)}
        self.base = {k: rng.normal(0.0, 1.0, s) for k, s in sorted(self.shapes.items())}
        self.delta = {k: rng.normal(0.0, 0.1, s) for k, s in sorted(self.shapes.items())}
        self.honest = [
            {
                k: self.base[k] + self.delta[k] + rng.normal(0.0, 0.03, s)
                for k, s in sorted(self.shapes.items())
            }
            for _ in range(nodes)
        ]
        self._rng = rng

    def update(self, index: int, round_: int) -> dict[str, np.ndarray]:
        """Site `index`'s honest contribution in round `round_` (round 1: `honest[index]`)."""
        if round_ <= 1:
            return self.honest[index]
        rng = np.random.default_rng([round_, index])
        return {k: v + rng.normal(0.0, 0.01, v.shape) for k, v in self.honest[index].items()}

    def poisoned(
        self, attack: str, index: int, honest_indices: Sequence[int], round_: int = 1
    ) -> dict[str, np.ndarray]:
        """The contribution an adversary of kind `attack` pushes in round `round_`."""
        mine = self.update(index, round_)
        if attack == "sign_flip":
            return {k: self.base[k] - 3.0 * (mine[k] - self.base[k]) for k in mine}
        if attack == "noise":
            rng = np.random.default_rng([1000 + index, round_])
            return {k: self.base[k] + rng.normal(0.0, 1.0, v.shape) for k, v in mine.items()}
        if attack == "alie":
            n = len(self.honest)
            f = n - len(honest_indices)
            s = n // 2 + 1 - f
            z = _norm_ppf((n - s) / n) if 0 < (n - s) / n < 1 else 1.0
            ups = {
                k: np.stack([self.update(i, round_)[k] - self.base[k] for i in honest_indices])
                for k in mine
            }
            return {k: self.base[k] + ups[k].mean(0) - z * ups[k].std(0) for k in mine}
        return mine


def _norm_ppf(p: float) -> float:
    """Inverse standard normal CDF by bisection (only the ALIE z needs it)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class _Source:
    """A payload source over several stores/byte payloads (what a peer can serve)."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def get_manifest(self, digest: bytes) -> Manifest:
        for s in self.sources:
            try:
                return s.get_manifest(digest)
            except NotFoundError:
                continue
        raise NotFoundError(f"manifest {digest.hex()} not offered")

    def read_chunk(self, digest: bytes) -> bytes:
        for s in self.sources:
            try:
                return s.read_chunk(digest)
            except NotFoundError:
                continue
        raise NotFoundError(f"chunk {digest.hex()} not offered")


class _Bytes:
    def __init__(self, data: bytes) -> None:
        chunks = chunk_bytes(data)
        self.manifest = manifest_of(chunks)
        self.chunks = {hashlib.sha256(c).digest(): c for c in chunks}

    def get_manifest(self, digest: bytes) -> Manifest:
        if digest != self.manifest.digest:
            raise NotFoundError(digest.hex())
        return self.manifest

    def read_chunk(self, digest: bytes) -> bytes:
        try:
            return self.chunks[digest]
        except KeyError:
            raise NotFoundError(digest.hex()) from None


# -- shared pure-function caches --------------------------------------------------------------


class Caches:
    """Memoised pure results shared by all nodes (same input → same output everywhere)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.assessments: dict[tuple[frozenset[bytes], frozenset[bytes]], Assessment] = {}
        self.tensors: dict[bytes, dict[str, np.ndarray]] = {}
        self.outliers: dict[tuple[bytes, ...], Any] = {}


# -- nodes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation(evidence.Observation):
    """An observation with a tag so each fault is reported once per observer."""

    tag: str = ""


class Node:
    """One site: a real E4State, a key, and (for adversaries) an attack."""

    def __init__(
        self, sim: Simulation, index: int, key: NodeKey, attack: str | None, path: Path
    ) -> None:
        self.sim = sim
        self.index = index
        self.key = key
        self.attack = attack
        rule = auto_revocation if sim.cfg.auto_revoke else None
        self.state = E4State(NodeStore.open(path), sim.admin.public_keys, revocation_rule=rule)
        self.reported: set[str] = set()
        self.queue: list[Observation] = []
        self.used: dict[int, int] = {}
        self.side_payloads: list[_Bytes] = []
        self.twins: dict[bytes, Entry] = {}  # equivocation: twin id -> twin entry
        self.twin_of: dict[bytes, bytes] = {}  # original id -> twin id
        self.active = True
        self._rows: list[tuple[bytes, int, bytes, int]] | None = None

    @property
    def honest(self) -> bool:
        return self.attack is None

    @property
    def kid(self) -> bytes:
        return self.key.key_id

    # -- local writes -----------------------------------------------------------------------

    def write(self, entry: Entry, source: Any = None) -> None:
        self.state.apply(entry, source)
        self._rows = None

    def next_link(self) -> tuple[int, bytes | None]:
        return self.state.chain_next(self.kid)

    def contribute(self, tensors: Mapping[str, np.ndarray], round_: int = 1) -> Entry:
        data = _to_safetensors(tensors)
        src = _Bytes(data)
        seq, prev = self.next_link()
        e = make_contribution(
            self.key,
            seq,
            prev,
            NAMESPACE,
            src.manifest.digest,
            src.manifest.size,
            payload_kind="safetensors",
            metadata={"num_examples": 100, "round": round_},
        )
        self.write(e, src)
        return e

    # -- views ------------------------------------------------------------------------------

    def rows(self) -> list[tuple[bytes, int, bytes, int]]:
        """(id, kind, author, status) of every entry in the set, by id; cached until a write."""
        if self._rows is None:
            sql = "SELECT id, kind, author, status FROM entries ORDER BY id"
            with self.state.store.reading() as c:
                self._rows = [
                    (bytes(i), int(k), bytes(a), int(st)) for i, k, a, st in c.execute(sql)
                ]
        return self._rows

    def _ids(self, kind: Kind | None = None) -> list[bytes]:
        if kind is None:
            return [r[0] for r in self.rows()]
        return [r[0] for r in self.rows() if r[1] == kind and r[3] == LIVE]

    def entry(self, eid: bytes) -> Entry:
        cache = self.sim.caches.entries
        e = cache.get(eid)
        if e is None:
            e = cache[eid] = self.state.store.get_entry(eid)
        return e

    def assessment(self) -> Assessment:
        ev = frozenset(self._ids(Kind.EVIDENCE))
        rv = frozenset(self._ids(Kind.REVOCATION))
        key = (ev, rv)
        got = self.sim.caches.assessments.get(key)
        if got is None:
            entries = [self.entry(i) for i in sorted(ev | rv)]
            got = assess(entries, self.sim.member_keys, self.sim.policy)
            self.sim.caches.assessments[key] = got
        return got

    def gated(self) -> set[bytes]:
        _accepted, excluded = self.assessment().gate(self.sim.ns_policy, self.sim.member_keys)
        return {x.author for x in excluded}

    # -- serving ----------------------------------------------------------------------------

    def advertised(self, requester: Node) -> list[bytes]:
        """Every id held (honest nodes replicate gated authors' entries too: gating decides
        what is merged); an equivocator shows odd-numbered peers its twin instead."""
        if self.twin_of and requester.index % 2 == 1:
            return sorted(self.twin_of.get(i, i) for i in self._ids())
        return self._ids()

    def serve(self, requester: Node, ids: Sequence[bytes]) -> tuple[list[bytes], Any]:
        """Wire bytes for `ids`, plus the payload source; adversaries twist this."""
        source = _Source(self.state.store, *self.side_payloads)
        out = []
        for i in ids:
            if i in self.twins:
                out.append(self.twins[i].to_bytes())
            elif self.state.store.has_entry(i):
                out.append(self.state.store.get_entry_bytes(i))
        if self.attack == "forged_signature" and self.active:
            out.extend(self.sim.forgeries(self, requester))
        if self.attack == "replay" and self.active:
            held = [i for i in self._ids() if requester.state.store.has_entry(i)]
            out.extend(self.state.store.get_entry_bytes(i) for i in held[:16])
        return out, source

    # -- receiving --------------------------------------------------------------------------

    def receive(
        self, peer: Node, requested: Sequence[bytes], wires: Sequence[bytes], source: Any
    ) -> int:
        """Apply what `peer` sent; turn what went wrong into observations. Returns # applied."""
        wanted = set(requested)
        got: set[bytes] = set()
        decoded: list[Entry] = []
        unrequested_dupes = 0
        for w in wires:
            try:
                e = Entry.from_bytes(w)
            except MalformedEntryError as exc:
                self._observe_bad(peer, w, str(exc))
                continue
            if e.id in wanted:
                got.add(e.id)
            elif self.state.store.has_entry(e.id):
                unrequested_dupes += 1
                continue
            decoded.append(e)
        decoded.sort(key=lambda e: (JOIN_ORDER[e.kind], e.author, e.seq, e.id))
        applied = 0
        todo = decoded
        while todo:
            left = []
            for e in todo:
                try:
                    r = self.state.apply(e, source)
                    self._rows = None
                except SignatureError as exc:
                    self._observe_bad(peer, e.to_bytes(), str(exc))
                except EquivocationError as exc:
                    self._observe_equivocation(exc)
                except ValidationError:
                    left.append(e)
                else:
                    applied += r.status is not ApplyStatus.DUPLICATE
            if len(left) == len(todo):
                break
            todo = left
        if self.honest:
            missing = wanted - got
            if missing and peer.kid in self.sim.member_keys:
                self._queue(
                    Observation(
                        peer.kid,
                        "gossip",
                        -WEIGHT_UNIT,
                        f"advertised {len(missing)} entries it did not serve",
                        tag=f"withhold:{peer.kid.hex()}",
                    )
                )
            if unrequested_dupes:
                self._queue(
                    Observation(
                        peer.kid,
                        "gossip",
                        -WEIGHT_UNIT,
                        f"replayed {unrequested_dupes} entries already held",
                        tag=f"replay:{peer.kid.hex()}",
                    )
                )
        return applied

    def _observe_bad(self, peer: Node, wire: bytes, why: str) -> None:
        if not self.honest:
            return
        self._queue(
            Observation(
                peer.kid,
                "integrity",
                -WEIGHT_UNIT,
                f"relayed an entry that fails: {why[:200]}",
                ProofKind.BAD_SIGNATURE,
                proof_for_bad_signature(wire),
                tag=f"badsig:{peer.kid.hex()}",
            )
        )

    def _observe_equivocation(self, exc: EquivocationError) -> None:
        proof = exc.proof
        if not self.honest or proof is None:
            return
        a, b = proof.a, proof.b  # type: ignore[attr-defined]
        self._queue(
            Observation(
                a.author,
                "causality",
                -WEIGHT_UNIT,
                f"equivocation at seq {a.seq}",
                ProofKind.EQUIVOCATION,
                proof_for_equivocation(a, b),
                tag=f"equiv:{a.author.hex()}:{a.seq}",
            )
        )

    def refuses(self, requester: Node) -> bool:
        """A withholder refuses every session with honest peers except its one friend."""
        return (
            self.attack == "withholding" and requester.honest and requester.index != self.sim.friend
        )

    def observe_refusal(self, peer: Node) -> None:
        if self.honest:
            self._queue(
                Observation(
                    peer.kid,
                    "gossip",
                    -WEIGHT_UNIT,
                    "refused to sync",
                    tag=f"withhold:{peer.kid.hex()}",
                )
            )

    def _queue(self, obs: Observation) -> None:
        if obs.tag in self.reported:
            return
        if obs.subject == self.kid and obs.kind is not ProofKind.MODEL_REPORT:
            return
        self.reported.add(obs.tag)
        self.queue.append(obs)

    # -- evidence ---------------------------------------------------------------------------

    def emit(self, epoch: int) -> int:
        """Sign queued observations: self-proving ones always, the rest within the budget."""
        budget = self.sim.policy.params.budget
        left: list[Observation] = []
        n = 0
        for obs in self.queue:
            cost = 0 if obs.kind in (ProofKind.EQUIVOCATION,) else abs(obs.weight)
            if self.used.get(epoch, 0) + cost > budget:
                left.append(obs)
                continue
            self.used[epoch] = self.used.get(epoch, 0) + cost
            seq, prev = self.next_link()
            e = evidence_entry(
                self.key,
                seq,
                prev,
                obs.subject,
                obs.dimension,
                obs.weight,
                epoch=epoch,
                proof_kind=obs.kind,
                proof_data=obs.data,
                reason=obs.reason,
            )
            self.write(e)
            n += 1
        self.queue = left
        return n

    def detect_models(self) -> None:
        """This node's model report on every round's cohort it holds enough of (the daemon's
        detector, `crdtd.node.observe.cohorts` + `crdtd.trust.outliers`)."""
        cache = self.sim.caches.outliers
        for round_, entries in sorted(cohorts(self.state.visible(NAMESPACE)).items()):
            key = tuple(e.id for e in entries)
            if len(key) < self.sim.outlier_params.min_contributions:
                continue
            stats = cache.get(key)
            if stats is None:
                contribs = [
                    ModelContribution(
                        e.id,
                        e.author,
                        self.sim.tensors_of(self, e),
                        declared_int(e, "num_examples"),
                        e.seq,
                    )
                    for e in entries
                ]
                stats = cache[key] = model_outliers(
                    contribs, self.sim.world.base, self.sim.outlier_params
                )
            ob = report_observation(stats, NAMESPACE, round_, self.kid)
            digest = hashlib.sha256(b"".join(key)).hexdigest()[:16]
            self._queue(
                Observation(
                    ob.subject,
                    ob.dimension,
                    ob.weight,
                    ob.reason,
                    ob.kind,
                    ob.data,
                    tag=f"report:{round_}:{digest}",
                )
            )

    # -- materialising ----------------------------------------------------------------------

    def materialise(
        self, strategy: str, trust: bool = True, only: set[bytes] | None = None
    ) -> tuple[str, dict[str, np.ndarray]]:
        """(sha256 of the merged safetensors, tensors) for the namespace from this node's view."""
        visible = [e for e in self.state.visible(NAMESPACE) if only is None or e.author in only]
        a = self.assessment()
        policy = NamespacePolicy(
            strategy=strategy,
            trust_weighted=trust,
            threshold=self.sim.ns_policy.threshold if trust else 0,
        )
        inputs = [WeightedInput(e.id, e.author, None) for e in visible]
        if trust:
            plan = plan_materialisation(inputs, a.scores, a.revocations, policy)
        else:
            plan = plan_materialisation(inputs, self.sim.neutral, Revocations(), policy)
        return self.sim.merge(self, plan)


# -- the simulation ---------------------------------------------------------------------------


class Simulation:
    """Set up N nodes (f adversaries), run the rounds, report."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.caches = Caches()
        self.world = ModelWorld(cfg.seed, cfg.model_dim, cfg.nodes)
        self.admin = _det_key(cfg.seed, "admin")
        keys = [_det_key(cfg.seed, f"node-{i}") for i in range(cfg.nodes)]
        self.member_keys = {k.key_id: k.public_keys for k in keys}
        self.policy = FederationPolicy(
            default=NamespacePolicy(strategy=cfg.strategy),
            auto_revoke_equivocation=cfg.auto_revoke,
            admins=frozenset({self.admin.key_id}),
            params=TrustParams(),
        )
        self.ns_policy = self.policy.for_namespace(NAMESPACE)
        self.neutral: TrustScores = compute_scores((), self.member_keys)
        self.outlier_params = OutlierParams.for_federation(cfg.nodes)
        rng = random.Random(cfg.seed)
        order = list(range(cfg.nodes))
        rng.shuffle(order)
        bad = sorted(order[: cfg.byzantine])
        self.attack_of = {i: cfg.attacks[j % len(cfg.attacks)] for j, i in enumerate(bad)}
        self.friend = min(i for i in range(cfg.nodes) if i not in self.attack_of)
        self._tmp = tempfile.TemporaryDirectory(
            prefix="crdtd-byz-", dir=cfg.store_dir or _fast_tmp()
        )
        root = Path(self._tmp.name)
        self.nodes = [
            Node(self, i, keys[i], self.attack_of.get(i), root / f"n{i}") for i in range(cfg.nodes)
        ]
        memberships: list[Entry] = []
        for i, k in enumerate(keys):
            memberships.append(
                make_membership(
                    self.admin,
                    i + 1,
                    memberships[-1].id if memberships else None,
                    k.public_keys,
                    f"node-{i}",
                )
            )
        for n in self.nodes:
            for m in memberships:
                n.write(m)
        self._forge_seq = 10_000

    def close(self) -> None:
        for n in self.nodes:
            n.state.close()
        self._tmp.cleanup()

    @property
    def honest(self) -> list[Node]:
        return [n for n in self.nodes if n.honest]

    @property
    def adversaries(self) -> list[Node]:
        return [n for n in self.nodes if not n.honest]

    # -- helpers used by nodes -------------------------------------------------------------

    def tensors_of(self, node: Node, e: Entry) -> dict[str, np.ndarray]:
        digest = e.body.payload_digest  # type: ignore[union-attr]
        got = self.caches.tensors.get(digest)
        if got is None:
            got = self.caches.tensors[digest] = _from_safetensors(
                node.state.store.read_payload(digest)
            )
        return got

    def forgeries(self, forger: Node, requester: Node) -> list[bytes]:
        """Two entries with broken signatures: one impersonating an honest node, one its own."""
        victim = next(n for n in self.honest if n is not requester)
        self._forge_seq += 1
        digest = hashlib.sha256(b"f%d" % self._forge_seq).digest()
        body = ContributionBody(NAMESPACE, "safetensors", digest, 64)
        header = msgpack.packb(
            [
                1,
                int(Kind.CONTRIBUTION),
                victim.kid,
                self._forge_seq,
                hashlib.sha256(b"p%d" % self._forge_seq).digest(),
                body.to_array(),
            ],
            use_bin_type=True,
        )
        fake = Entry.from_parts(header, [Signature(ED25519, hashlib.sha512(header).digest())])
        own = make_contribution(
            forger.key,
            self._forge_seq,
            hashlib.sha256(b"q%d" % self._forge_seq).digest(),
            NAMESPACE,
            body.payload_digest,
            64,
        )
        bad_sig = bytes([own.signatures[0].value[0] ^ 1]) + own.signatures[0].value[1:]
        broken = Entry.from_parts(own.header_bytes, [Signature(ED25519, bad_sig)])
        return [fake.to_bytes(), broken.to_bytes()]

    def merge(self, node: Node, plan: Any) -> tuple[str, dict[str, np.ndarray]]:
        import torch
        from safetensors.torch import save

        from crdtd.model import Contribution, ModelMerge

        if not plan.content_ids:
            return "empty", {}
        inputs = []
        for cid, mp in zip(plan.content_ids, plan.model_params):
            e = node.entry(cid)
            t = self.tensors_of(node, e)
            inputs.append(
                Contribution(
                    {k: torch.from_numpy(t[k].astype(np.float32)) for k in sorted(t)},
                    params=dict(mp),
                )
            )
        result = ModelMerge(plan.schema()).merge(inputs)
        tensors = {k: result.tensor[k].contiguous() for k in sorted(result.tensor)}
        sha = hashlib.sha256(save(tensors)).hexdigest()
        return sha, {k: v.numpy().astype(np.float64) for k, v in tensors.items()}

    # -- the rounds -------------------------------------------------------------------------

    def _start(self) -> None:
        honest_idx = [n.index for n in self.honest]
        for n in self.nodes:
            if n.attack in MODEL_ATTACKS:
                n.contribute(self.world.poisoned(n.attack, n.index, honest_idx))
            else:
                e = n.contribute(self.world.honest[n.index])
                if n.attack == "equivocation":
                    other = {k: v + 0.01 for k, v in self.world.honest[n.index].items()}
                    src = _Bytes(_to_safetensors(other))
                    twin = make_contribution(
                        n.key,
                        e.seq,
                        e.prev,
                        NAMESPACE,
                        src.manifest.digest,
                        src.manifest.size,
                        payload_kind="safetensors",
                        metadata={"num_examples": 100},
                    )
                    n.twins[twin.id] = twin
                    n.twin_of[e.id] = twin.id
                    n.side_payloads.append(src)

    def _contribute(self, round_: int) -> None:
        """Round `round_` (≥ 2) of the model namespace: every active site pushes again."""
        honest_idx = [n.index for n in self.honest]
        for n in self.nodes:
            if not n.active or n.state.is_revoked(n.kid):
                continue
            if n.attack in MODEL_ATTACKS:
                n.contribute(self.world.poisoned(n.attack, n.index, honest_idx, round_), round_)
            else:
                n.contribute(self.world.update(n.index, round_), round_)

    def _adversary_writes(self, round_: int) -> None:
        epoch = round_ // self.cfg.epoch_rounds
        bad = [n.kid for n in self.adversaries]
        for n in self.adversaries:
            if not n.active:
                continue
            if n.attack == "praise_ring":
                for target in [b for b in bad if b != n.kid] or [n.kid]:
                    seq, prev = n.next_link()
                    n.write(
                        evidence_entry(
                            n.key,
                            seq,
                            prev,
                            target,
                            "gossip",
                            1_000_000,
                            epoch=epoch,
                            reason="trusted friend",
                        )
                    )
            elif n.attack == "false_accusation":
                victims = sorted(
                    (h.kid for h in self.honest),
                    key=lambda k: hashlib.sha256(k + bytes([round_ % 256])).digest(),
                )
                budget = self.policy.params.budget // WEIGHT_UNIT
                for v in victims[:budget]:
                    seq, prev = n.next_link()
                    n.write(
                        evidence_entry(
                            n.key,
                            seq,
                            prev,
                            v,
                            "gossip",
                            -WEIGHT_UNIT,
                            epoch=epoch,
                            reason="did not answer",
                        )
                    )

    def _session(self, a: Node, b: Node) -> int:
        moved = 0
        for src, dst in ((b, a), (a, b)):
            if src.refuses(dst):
                dst.observe_refusal(src)
                continue
            have = set(dst._ids())
            ids = [i for i in src.advertised(dst) if i not in have]
            wires, source = src.serve(dst, ids)
            moved += dst.receive(src, ids, wires, source)
        return moved

    def _gossip(self, round_: int) -> int:
        moved = 0
        for n in self.nodes:
            peers = [p for p in self.nodes if p is not n]
            rng = random.Random(f"{self.cfg.seed}/{round_}/{n.index}")
            for p in rng.sample(peers, min(self.cfg.fanout, len(peers))):
                moved += self._session(n, p)
        return moved

    def run(self, log: Any = None) -> SimResult:
        t0 = time.perf_counter()
        self._start()
        gated_at: dict[bytes, int | None] = {n.kid: None for n in self.adversaries}
        honest_gated: set[bytes] = set()
        adv_ids = {n.kid for n in self.adversaries}
        round_ = 0
        quiet = 0
        for round_ in range(1, self.cfg.max_rounds + self.cfg.settle_rounds + 1):
            attacking = round_ <= self.cfg.max_rounds and any(v is None for v in gated_at.values())
            if not attacking:
                for n in self.nodes:
                    n.active = False
            elif round_ > 1:
                self._contribute(round_)
            self._adversary_writes(round_)
            moved = self._gossip(round_)
            epoch = round_ // self.cfg.epoch_rounds
            emitted = 0
            for n in self.honest:
                n.detect_models()
                emitted += n.emit(epoch)
            views = [n.gated() for n in self.honest]
            for kid in adv_ids:
                if gated_at[kid] is None and all(kid in v for v in views):
                    gated_at[kid] = round_
            for v in views:
                honest_gated |= v - adv_ids
            if log:
                gated_now = sum(1 for v in gated_at.values() if v is not None)
                print(
                    f"  round {round_:2d}: moved {moved:4d} entries, evidence +{emitted:3d}, adversaries gated {gated_now}/{len(adv_ids)}",
                    file=log,
                )
            if not attacking:
                quiet = quiet + 1 if moved == 0 and emitted == 0 else 0
                if quiet >= 3 or round_ >= self.cfg.max_rounds + self.cfg.settle_rounds:
                    break
        digests = {n.assessment().scores.digest() for n in self.honest}
        shas = {}
        merged = {}
        for n in self.honest:
            sha, tensors = n.materialise(self.cfg.strategy)
            shas[n.index] = sha
            merged = tensors
        ref = self.honest[0]
        honest_ids = {n.kid for n in self.honest}
        _, honest_only = ref.materialise(self.cfg.strategy, trust=False, only=honest_ids)
        _, naive = ref.materialise("fedavg", trust=False)
        names = {self.nodes[i].kid.hex()[:8]: f"{a}" for i, a in sorted(self.attack_of.items())}
        return SimResult(
            config=self.cfg,
            adversaries=names,
            rounds=round_,
            trust_identical=len(digests) == 1,
            sha_identical=len(set(shas.values())) == 1,
            materialised_sha256=next(iter(shas.values())) if shas else "",
            rounds_to_gate={
                f"{self.attack_of[n.index]}@{n.kid.hex()[:8]}": gated_at[n.kid]
                for n in self.adversaries
            },
            honest_gated=sorted(k.hex()[:8] for k in honest_gated),
            distance=_distance(merged, honest_only),
            distance_no_trust=_distance(naive, honest_only),
            evidence_entries=len(ref._ids(Kind.EVIDENCE)),
            seconds=time.perf_counter() - t0,
        )


def _distance(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    if not a or not b:
        return float("nan")
    return math.sqrt(
        math.fsum(math.fsum(((a[k] - b[k]) ** 2).reshape(-1).tolist()) for k in sorted(a))
    )


def _det_key(seed: int, label: str) -> NodeKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = hashlib.sha256(f"crdtd-sim/{seed}/{label}".encode()).digest()
    return NodeKey(Ed25519PrivateKey.from_private_bytes(raw))


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_scenario(cfg: SimConfig, log: Any = None) -> SimResult:
    """Run one scenario on fresh temporary stores."""
    sim = Simulation(cfg)
    try:
        return sim.run(log)
    finally:
        sim.close()


# -- reporting --------------------------------------------------------------------------------


def _yes(b: bool) -> str:
    return "yes" if b else "NO"


def format_table(rows: Iterable[tuple[int, SimResult]]) -> str:
    """The markdown table of (target f/N in %, result) rows."""
    head = (
        "| f/N | f | trust identical | sha256 identical | adversaries gated "
        "| max rounds to gate | honest gated | dist (trust) | dist (no trust) |"
    )
    out = [head, "|" + "---|" * 9]
    for pct, r in rows:
        gated = sum(1 for v in r.rounds_to_gate.values() if v is not None)
        mr = r.max_rounds_to_gate
        rounds = "-" if not r.rounds_to_gate else (str(mr) if mr is not None else "never")
        out.append(
            f"| {pct}% | {r.config.byzantine} | {_yes(r.trust_identical)} | "
            f"{_yes(r.sha_identical)} | {gated}/{len(r.rounds_to_gate)} | {rounds} | "
            f"{len(r.honest_gated)} | {r.distance:.4f} | {r.distance_no_trust:.4f} |"
        )
    return "\n".join(out)


def format_attack_table(results: Iterable[SimResult]) -> str:
    """The markdown table of single-attack scenarios."""
    out = [
        "| attack | f | rounds to gate (each adversary) | honest gated | trust identical "
        "| sha256 identical | dist (trust) | dist (no trust) |",
        "|" + "---|" * 8,
    ]
    for r in results:
        attack = r.config.attacks[0]
        rounds = ", ".join(
            str(v) if v is not None else "never" for _, v in sorted(r.rounds_to_gate.items())
        )
        out.append(
            f"| {attack} | {r.config.byzantine} | {rounds} | {len(r.honest_gated)} | "
            f"{_yes(r.trust_identical)} | {_yes(r.sha_identical)} | {r.distance:.4f} | "
            f"{r.distance_no_trust:.4f} |"
        )
    return "\n".join(out)


def format_result(r: SimResult) -> str:
    lines = [
        f"nodes {r.config.nodes}, byzantine {r.config.byzantine}, seed {r.config.seed}, "
        f"rounds {r.rounds}, {r.seconds:.1f} s, evidence entries {r.evidence_entries}",
        f"materialised sha256 {r.materialised_sha256}",
    ]
    for name, rounds in sorted(r.rounds_to_gate.items()):
        lines.append(f"  {name:28s} gated after {rounds if rounds is not None else 'never'} rounds")
    lines.append(
        f"distance to honest-only merge: {r.distance:.6f} (without trust: {r.distance_no_trust:.6f})"
    )
    return "\n".join(lines)


def summary_line(results: Sequence[SimResult]) -> str:
    converged = all(r.converged for r in results)
    gated = sum(len(r.honest_gated) for r in results)
    ks = [r.max_rounds_to_gate for r in results]
    k = "never" if any(v is None for v in ks) else max((v for v in ks if v is not None), default=0)
    return f"honest_converged: {str(converged).lower()}, honest_gated: {gated}, max_rounds_to_gate: {k}"


def _main_grpc(a: argparse.Namespace, base: dict[str, Any], log: Any) -> int:
    """--grpc: the same scenario on real daemons (simulations/byzantine_grpc.py)."""
    try:
        from simulations.byzantine_grpc import GRPC_ATTACKS, run_grpc
    except ImportError:  # run as a script: simulations/ is sys.path[0]
        from byzantine_grpc import GRPC_ATTACKS, run_grpc  # type: ignore[no-redef]

    given = base["attacks"]
    attacks = tuple(x for x in given if x in GRPC_ATTACKS)
    if given != ATTACK_ORDER and attacks != given:
        print(
            f"--grpc plays {', '.join(GRPC_ATTACKS)}; not "
            f"{', '.join(sorted(set(given) - set(GRPC_ATTACKS)))}",
            file=sys.stderr,
        )
        return 2
    cfg = SimConfig(
        byzantine=2 if a.byzantine is None else a.byzantine, **{**base, "attacks": attacks}
    )
    if a.per_attack or a.table:
        print(
            "--grpc runs one scenario (--byzantine F); no --table or --per-attack", file=sys.stderr
        )
        return 2
    r = run_grpc(cfg, sys.modules[__name__], log)
    print(format_result(r))
    print(
        f"honest trust identical: {_yes(r.trust_identical)}, materialised sha256 identical: "
        f"{_yes(r.sha_identical)}, honest gated: {len(r.honest_gated)}"
    )
    print(summary_line([r]))
    return 0 if r.converged and not r.honest_gated else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--byzantine", type=int, default=None, help="adversaries (default: the table)")
    p.add_argument("--table", action="store_true", help="run f/N in 0,10,20,30,34,40 %%")
    p.add_argument(
        "--per-attack", action="store_true", help="one row per attack, all f adversaries on it"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fanout", type=int, default=2)
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument(
        "--attacks", default=",".join(ATTACK_ORDER), help="comma-separated cycle of attacks"
    )
    p.add_argument("--strategy", default="fedavg")
    p.add_argument(
        "--grpc",
        action="store_true",
        help="run on real loopback gRPC daemons (equivocation, forged signatures, poisoning)",
    )
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    attacks = tuple(x.strip() for x in a.attacks.split(",") if x.strip())
    base = dict(
        nodes=a.nodes,
        seed=a.seed,
        fanout=a.fanout,
        max_rounds=a.max_rounds,
        attacks=attacks,
        strategy=a.strategy,
    )
    log = sys.stdout if a.verbose else None
    if a.grpc:
        return _main_grpc(a, base, log)
    if a.per_attack:
        f = 2 if a.byzantine is None else a.byzantine
        results = [
            run_scenario(SimConfig(byzantine=f, **{**base, "attacks": (x,)}), log) for x in ATTACKS
        ]
        print(format_attack_table(results))
        print(summary_line(results))
        return 0
    if a.byzantine is not None and not a.table:
        r = run_scenario(SimConfig(byzantine=a.byzantine, **base), log)
        print(format_result(r))
        print(
            f"honest trust identical: {_yes(r.trust_identical)}, materialised sha256 identical: {_yes(r.sha_identical)}, honest gated: {len(r.honest_gated)}"
        )
        print(summary_line([r]))
        return 0 if r.converged and not r.honest_gated else 1
    rows = []
    for pct in FRACTIONS:
        f = round(pct * a.nodes / 100)
        r = run_scenario(SimConfig(byzantine=f, **base), log)
        rows.append((pct, r))
        print(f"f/N={pct}% (f={f}): {r.seconds:.1f} s", file=sys.stderr, flush=True)
    print(format_table(rows))
    safe = [r for _, r in rows if 3 * r.config.byzantine < r.config.nodes]
    print(summary_line(safe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
