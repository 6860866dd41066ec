"""Trust wired into the running system: automatic revocation in the state and the handshake,
the relay filter, sync observations turned into evidence, and trust-aware materialisation.

Real stores, real signatures; sync over real gRPC on loopback; daemons in-process.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.crypto import federation as fed
from crdtd.crypto.keys import NodeKey
from crdtd.crypto.node_config import NodeConfig
from crdtd.errors import CrdtdError, PeerRefusedError, RevokedKeyError, ValidationError
from crdtd.node.config import load_daemon_config
from crdtd.node.core import NodeCore
from crdtd.node.observe import EvidencePublisher, Observation, observations_for
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import E4State
from crdtd.state.entry import (
    ED25519,
    Entry,
    Kind,
    Signature,
    make_contribution,
    make_removal,
)
from crdtd.state.testing import Federation
from crdtd.store import sqlite as db
from crdtd.store.chunks import BytesSource, Manifest, chunk_bytes, manifest_of
from crdtd.sync.handshake import Identity
from crdtd.sync.node import SyncNode
from crdtd.sync.receive import Incoming, Receiver
from crdtd.sync.session import Connection
from crdtd.sync.transport import GrpcTransport
from crdtd.trust import FederationPolicy, NamespacePolicy, assess, auto_revocation
from crdtd.trust.evidence import (
    WEIGHT_UNIT,
    Evidence,
    ProofKind,
    Verdict,
    check_proof,
    decode_model_report,
    evidence_entry,
    proof_for_chain_fork,
    proof_for_equivocation,
)
from crdtd.trust.scores import SCALE, compute_scores
from tests.node_support import InProcessNode, checkpoint, federation, wait_for
from tests.sync_support import FAST, SyncFederation, async_test, make_node

AUTO = FederationPolicy(auto_revoke_equivocation=True)


# -- automatic revocation in the state --------------------------------------------------------


def _payload(text: bytes) -> Manifest:
    return manifest_of(chunk_bytes(text))


class Equivocation:
    """Mallory contributes at seq 1, signs two headers at seq 2 and continues one of them;
    Alice publishes the proof."""

    def __init__(self) -> None:
        self.fed = Federation()
        self.memberships = [self.fed.add_member("alice"), self.fed.add_member("mallory")]
        alice, mallory = self.fed.keys["alice"], self.fed.keys["mallory"]
        p = _payload(b"first model")
        self.c1 = make_contribution(mallory, 1, None, "test/ns", p.digest, p.size)
        self.t1 = make_removal(mallory, 2, self.c1.id, [bytes(32)], reason="one")
        self.t2 = make_removal(mallory, 2, self.c1.id, [bytes(32)], reason="two")
        self.c3 = make_removal(mallory, 3, self.t1.id, [bytes(31) + b"\x01"], reason="three")
        self.evidence = evidence_entry(
            alice,
            1,
            None,
            mallory.key_id,
            "causality",
            -WEIGHT_UNIT,
            epoch=0,
            proof_kind=ProofKind.EQUIVOCATION,
            proof_data=proof_for_equivocation(self.t1, self.t2),
        )
        self.payloads = {self.c1.id: b"first model"}

    @property
    def mallory(self) -> bytes:
        return self.fed.keys["mallory"].key_id

    def all(self) -> list[Entry]:
        return [*self.memberships, self.c1, self.t1, self.t2, self.c3, self.evidence]


def apply_until_stable(state: E4State, entries: list[Entry], payloads: dict[bytes, bytes]) -> None:
    """Offer entries in the given order, retrying refused ones until a pass changes nothing."""
    todo = list(entries)
    while todo:
        left = []
        for e in todo:
            try:
                state.apply(e, BytesSource(payloads[e.id]) if e.id in payloads else None)
            except ValidationError:
                left.append(e)
        if len(left) == len(todo):
            return
        todo = left


def outcome(state: E4State) -> tuple[object, ...]:
    with state.store.reading() as c:
        ids = c.execute("SELECT id, status FROM entries ORDER BY id").fetchall()
        revoked = c.execute("SELECT revoked, cutoff FROM revocations ORDER BY 1, 2").fetchall()
    return (state.merkle_root(), ids, revoked, state.held_ids())


def test_a_proven_equivocation_revokes_the_author_in_the_state_and_in_assess(
    tmp_path: Path,
) -> None:
    sc = Equivocation()
    state = E4State.open(tmp_path / "s", sc.fed.admin.public_keys, revocation_rule=auto_revocation)
    apply_until_stable(state, sc.all(), sc.payloads)
    assert state.is_revoked(sc.mallory)
    assert [e.id for e in state.visible()] == [sc.c1.id]  # history before the fork stays
    for e in (sc.t1, sc.t2, sc.c3):
        assert not state.store.has_entry(e.id)
    after = make_removal(sc.fed.keys["mallory"], 4, sc.c3.id, [bytes(32)])
    with pytest.raises(RevokedKeyError):
        state.apply(after)
    entries = [e for e, _ in state.store.iter_entries()]
    a = assess(entries, state.members(include_revoked=True), AUTO)
    assert a.revocations.revoked == {sc.mallory}
    assert all(state.is_revoked(k) for k in a.revocations.revoked)
    state.close()


def test_without_auto_revocation_the_state_only_quarantines(tmp_path: Path) -> None:
    sc = Equivocation()
    state = E4State.open(tmp_path / "s", sc.fed.admin.public_keys)
    apply_until_stable(state, sc.all(), sc.payloads)
    assert not state.is_revoked(sc.mallory)
    assert state.store.entry_status(sc.t1.id) == db.QUARANTINED
    state.close()


_ORDER_SCENARIO = Equivocation()


@settings(max_examples=12, deadline=None)
@given(st.permutations(range(len(_ORDER_SCENARIO.all()))))
def test_replicas_end_alike_whether_or_not_they_saw_the_proof_first(order: list[int]) -> None:
    sc = _ORDER_SCENARIO
    entries = sc.all()
    with tempfile.TemporaryDirectory() as d:
        reference = E4State.open(
            Path(d) / "ref", sc.fed.admin.public_keys, revocation_rule=auto_revocation
        )
        apply_until_stable(reference, entries, sc.payloads)
        shuffled = E4State.open(
            Path(d) / "x", sc.fed.admin.public_keys, revocation_rule=auto_revocation
        )
        apply_until_stable(shuffled, [entries[i] for i in order], sc.payloads)
        assert outcome(shuffled) == outcome(reference)
        assert shuffled.is_revoked(sc.mallory)
        reference.close()
        shuffled.close()


def test_a_chain_fork_proof_revokes_from_the_forked_seq(tmp_path: Path) -> None:
    f = Federation()
    ms = [f.add_member("alice"), f.add_member("mallory")]
    mallory = f.keys["mallory"]
    a = make_removal(mallory, 1, None, [bytes(32)])
    b = make_removal(mallory, 2, bytes(32), [bytes(32)])  # prev is not `a`: held, never enters
    ev = evidence_entry(
        f.keys["alice"],
        1,
        None,
        mallory.key_id,
        "causality",
        -WEIGHT_UNIT,
        epoch=3,
        proof_kind=ProofKind.CHAIN_FORK,
        proof_data=proof_for_chain_fork(a, b),
    )
    state = E4State.open(tmp_path / "s", f.admin.public_keys, revocation_rule=auto_revocation)
    apply_until_stable(state, [*ms, a, b], {})
    assert state.held_ids() == [b.id]
    state.apply(ev)
    assert state.is_revoked(mallory.key_id)
    assert state.held_ids() == [] and not state.store.has_entry(a.id)  # cutoff 0
    state.close()


# -- sync observations become evidence --------------------------------------------------------


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[NodeCore, list[NodeConfig]]]:
    (config,) = federation(tmp_path, 1, trust={"auto_revoke_equivocation": True})
    c = NodeCore.open(load_daemon_config(config))
    members = [fed.add_node(config.parent, name) for name in ("mallory", "lab-b", "lab-c")]
    for m in members:
        c.submit(m.membership_bytes())
    yield c, members
    c.close()


def own_evidence(core: NodeCore) -> list[Evidence]:
    return [Evidence.from_entry(e) for e in core.state.evidence() if e.author == core.key_id]


@async_test
async def test_a_broken_chain_link_is_published_as_a_chain_fork_and_revokes(core) -> None:
    node, (mallory_cfg, *_) = core
    mallory = mallory_cfg.load_key()
    a = make_removal(mallory, 1, None, [bytes(32)])
    a2 = make_removal(mallory, 2, a.id, [bytes(32)], reason="second")
    node.state.apply(a)
    node.state.apply(a2)
    b = make_removal(mallory, 3, a.id, [bytes(32)], reason="forks")  # prev skips seq 2
    outcome_ = await Receiver(node.state).apply([Incoming(b, None)])
    (m,) = outcome_.misbehaviour
    assert m.kind == "chain"
    published = node.evidence.observe(mallory.key_id, outcome_.misbehaviour)
    (ev,) = [Evidence.from_entry(e) for e in published]
    assert ev.proof_kind is ProofKind.CHAIN_FORK and ev.subject == mallory.key_id
    keys = node.state.members(include_revoked=True)
    assert check_proof(ev, keys).verdict is Verdict.PROVEN
    assert node.state.is_revoked(mallory.key_id)
    assert node.state.store.has_entry(a.id) and not node.state.store.has_entry(a2.id)
    assert node.assessment().revocations.is_revoked(mallory.key_id)


def test_arrival_failures_become_evidence_against_the_relaying_peer(core) -> None:
    node, (mallory_cfg, lab_b, _) = core
    mallory, peer = mallory_cfg.load_key(), lab_b.load_key().key_id
    good = make_removal(mallory, 1, None, [bytes(32)])
    forged = Entry.from_parts(
        good.header_bytes,
        [
            Signature(
                ED25519, bytes([good.signatures[0].value[0] ^ 1]) + good.signatures[0].value[1:]
            )
        ],
    )
    other = make_removal(mallory, 2, good.id, [bytes(32)])
    p = _payload(b"x" * 100)
    lying = make_contribution(mallory, 3, other.id, "test/ns", p.digest, p.size + 7)
    records = [
        pb.EntryRecord(entry=b"\x93garbage"),
        pb.EntryRecord(entry=forged.to_bytes()),
        pb.EntryRecord(entry=other.to_bytes()),  # not asked for
        pb.EntryRecord(entry=lying.to_bytes(), manifest=p.to_bytes()),
    ]
    checked = Receiver(node.state).check(records, [forged.id, lying.id, b"\x00" * 32], "lab-b")
    assert sorted(m.kind for m in checked.misbehaviour) == [
        "bad_manifest",
        "bad_signature",
        "malformed",
        "unasked",
    ]
    obs = observations_for(peer, checked.misbehaviour, node.state)
    by_kind = {(o.subject, o.dimension, o.kind) for o in obs}
    assert (peer, "integrity", ProofKind.BAD_SIGNATURE) in by_kind
    assert (peer, "consistency", ProofKind.NONE) in by_kind
    # the manifest names the signed digest but another size: the author signed a lie
    assert (mallory.key_id, "integrity", ProofKind.MANIFEST_MISMATCH) in by_kind
    published = node.evidence.publish(obs)
    evs = [Evidence.from_entry(e) for e in published]
    keys = node.state.members(include_revoked=True)
    verdicts = {ev.proof_kind: check_proof(ev, keys).verdict for ev in evs}
    assert verdicts[ProofKind.MANIFEST_MISMATCH] is Verdict.PROVEN
    assert verdicts[ProofKind.BAD_SIGNATURE] is Verdict.SUBJECTIVE
    assert Verdict.FALSE not in verdicts.values()
    # one accusation per (subject, dimension): the malformed record adds nothing
    assert len([e for e in evs if e.subject == peer]) == 2


def test_subjective_evidence_stays_within_the_budget_of_each_epoch(core) -> None:
    node, members = core
    clock = [100.0]
    publisher = EvidencePublisher(node, epoch_seconds=10.0, clock=lambda: clock[0])
    dims = ("integrity", "causality", "consistency", "gossip", "model")
    subjects = [m.load_key().key_id for m in members]
    obs = [Observation(s, d, -WEIGHT_UNIT, "seen") for s in subjects for d in dims]
    budget = node.config.trust.params.budget // WEIGHT_UNIT
    first = publisher.publish(obs)
    assert len(first) == budget and len(publisher.queue) == len(obs) - budget
    assert publisher.flush() == []  # the epoch is spent and has not ended
    clock[0] += 10.0
    second = publisher.flush()
    assert len(second) == min(budget, len(obs) - budget)
    epochs = sorted({ev.epoch for ev in own_evidence(node)})
    assert len(epochs) == 2 and epochs[1] == epochs[0] + 1
    assert publisher.publish(obs[:3]) == []  # said already
    assert EvidencePublisher(node).publish(obs[:3]) == []  # also after a restart
    scores = compute_scores(
        own_evidence(node), node.state.members(include_revoked=True), node.config.trust.params
    )
    assert not [f for f in scores.faults.get(node.key_id, ()) if f.kind == "flood"]


def rogue(cfg: NodeConfig, data_dir: Path, admin_entries: list[bytes]) -> SyncNode:
    """A SyncNode for a member config (no server): what a misbehaving site runs."""
    state = E4State.open(data_dir, cfg.federation.admin, cfg.federation.policy)
    for raw in admin_entries:
        state.apply(raw)
    identity = Identity(
        cfg.load_key(),
        cfg.membership_bytes(),
        cfg.federation.id,
        cfg.federation.admin,
        cfg.federation.policy,
    )
    return SyncNode(state, identity, GrpcTransport(cfg.tls_material(), FAST), FAST)


def test_a_daemon_turns_forged_and_equivocating_peers_into_evidence_and_revokes(
    tmp_path: Path,
) -> None:
    (config,) = federation(tmp_path, 1, trust={"auto_revoke_equivocation": True})
    node = InProcessNode(config)
    try:
        cfg = node.daemon.config.node
        peer_address = f"127.0.0.1:{cfg.peer_port}"
        mallory_cfg = fed.add_node(config.parent, "mallory")
        mallory = mallory_cfg.load_key()
        with node.client() as c:
            c.submit(mallory_cfg.membership_bytes())
            twin1 = c.push(
                "model/test-mlp", checkpoint(tmp_path / "1.safetensors", 1.0), key=mallory
            )
        assert twin1.seq == 1
        bad = rogue(
            mallory_cfg,
            tmp_path / "rogue",
            [cfg.membership_bytes(), mallory_cfg.membership_bytes()],
        )

        async def attack() -> None:
            conn = Connection(bad.transport.connect(peer_address), bad.identity, bad.state, FAST)
            await conn.ensure()
            good = make_removal(mallory, 7, bytes(32), [bytes(32)])
            sig = good.signatures[0].value
            forged = Entry.from_parts(
                good.header_bytes, [Signature(ED25519, bytes([sig[0] ^ 1]) + sig[1:])]
            )
            reply = await conn.client.offer(
                pb.OfferRequest(records=[pb.EntryRecord(entry=forged.to_bytes())])
            )
            assert [bytes(r.id) for r in reply.rejected] == [forged.id]
            payload = checkpoint(tmp_path / "2.safetensors", 2.0).read_bytes()
            m = _payload(payload)
            twin2 = make_contribution(
                mallory, 1, None, "model/test-mlp", m.digest, m.size, payload_kind="safetensors"
            )
            bad.state.apply(twin2, BytesSource(payload))
            await bad.sync_with(peer_address)  # offers twin2: the daemon finds the equivocation
            await bad.transport.close()

        asyncio.run(attack())
        state = node.core.state
        wait_for(lambda: state.is_revoked(mallory.key_id), 20, "automatic revocation")
        evs = own_evidence(node.core)
        kinds = {(ev.subject, ev.proof_kind) for ev in evs}
        assert (mallory.key_id, ProofKind.BAD_SIGNATURE) in kinds
        assert (mallory.key_id, ProofKind.EQUIVOCATION) in kinds
        assert not state.store.has_entry(twin1.entry_id)  # purged: cutoff 0
        with node.client() as c:
            scores = {s.key_id: s for s in c.trust().scores}
            assert scores[mallory.key_id].revoked and scores[mallory.key_id].gated
            with pytest.raises(CrdtdError) as exc:
                c.push("model/test-mlp", checkpoint(tmp_path / "3.safetensors", 3.0), key=mallory)
            assert exc.value.code is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            assert "revoked" in str(exc.value)

        async def come_back() -> None:
            again = rogue(
                mallory_cfg,
                tmp_path / "rogue2",
                [cfg.membership_bytes(), mallory_cfg.membership_bytes()],
            )
            try:
                with pytest.raises(PeerRefusedError) as refused:
                    await again.sync_with(peer_address)
                assert "revoked" in str(refused.value)
                assert refused.value.code == "PERMISSION_DENIED"  # type: ignore[attr-defined]
            finally:
                await again.transport.close()
                again.state.close()

        asyncio.run(come_back())
        bad.state.close()
    finally:
        node.stop()


# -- replication under gating ----------------------------------------------------------------


@async_test
async def test_gated_contributions_still_replicate_so_honest_roots_agree_and_merges_skip_them(
    tmp_path: Path,
) -> None:
    """Gating decides what is merged, not what is replicated (issue 11: honest nodes that
    relay-filtered a gated author's contributions never reached one root again)."""
    tf = SyncFederation()
    for name in ("a", "b", "c", "mallory"):
        tf.add(name)
    policy = FederationPolicy()
    nodes = {n: make_node(tf, n, tmp_path / n, tls=False) for n in ("a", "b", "c")}
    for n in nodes.values():
        await n.start("127.0.0.1:0", gossip=False)
    try:
        honest = []
        for name, n in nodes.items():
            e, p = tf.contribution(name, 1500)
            n.state.apply(e, BytesSource(p))
            honest.append(e.id)
        poisoned, payload = tf.contribution("mallory", 2000)
        a = nodes["a"]
        a.state.apply(poisoned, BytesSource(payload))
        mallory = tf.members["mallory"].key
        fork = make_removal(mallory, 2, bytes(32), [bytes(32)])
        key_a = tf.members["a"].key
        seq, prev = tf.fed.next_link(key_a)
        proof = evidence_entry(
            key_a,
            seq,
            prev,
            mallory.key_id,
            "causality",
            -WEIGHT_UNIT,
            epoch=0,
            proof_kind=ProofKind.CHAIN_FORK,
            proof_data=proof_for_chain_fork(poisoned, fork),
        )
        a.state.apply(proof)
        rng = random.Random(5)
        for _ in range(4):
            x, y = rng.sample(sorted(nodes), 2)
            await nodes[x].sync_with(nodes[y].address)
        for name in ("a", "b", "c"):
            await nodes[name].sync_with(nodes["c" if name != "c" else "a"].address)
        roots = {n.state.merkle_root() for n in nodes.values()}
        assert len(roots) == 1
        for n in nodes.values():
            assert sorted(e.id for e in n.state.visible()) == sorted([*honest, poisoned.id])
            held = [
                e
                for kind in (Kind.EVIDENCE, Kind.REVOCATION)
                for e, _ in n.state.store.iter_entries(kind, db.LIVE)
            ]
            verdict = assess(held, n.state.members(include_revoked=True), policy)
            accepted, excluded = verdict.gate(policy.default, verdict.scores.dims)
            assert mallory.key_id not in accepted
            assert [x.author for x in excluded] == [mallory.key_id]
    finally:
        for n in nodes.values():
            await n.stop()


def test_two_daemons_replicate_a_gated_authors_contribution_and_agree_on_one_root(
    tmp_path: Path,
) -> None:
    """The daemon's half of the regression: node A gates mallory before mallory's
    contribution arrives, yet node B still receives it, both roots agree, and B's
    Materialise leaves mallory out with the reason."""
    configs = federation(tmp_path, 2)
    nodes = [InProcessNode(c) for c in configs]
    try:
        mallory_cfg = fed.add_node(configs[0].parent, "mallory")
        mallory = mallory_cfg.load_key()
        p = _payload(b"unused")
        earlier = make_contribution(mallory, 1, None, "model/test-mlp", p.digest, p.size)
        fork = make_removal(mallory, 2, bytes(32), [bytes(32)])
        a, b = nodes
        with a.client() as c:
            for cfg in (b.daemon.config.node, mallory_cfg):
                c.submit(cfg.membership_bytes())
        a.core.evidence.publish(
            [
                Observation(
                    mallory.key_id,
                    "causality",
                    -WEIGHT_UNIT,
                    "fork",
                    ProofKind.CHAIN_FORK,
                    proof_for_chain_fork(earlier, fork),
                )
            ]
        )
        assert mallory.key_id in {x.author for x in a.core.assessment().gate(NamespacePolicy())[1]}
        with a.client() as c:
            poisoned = c.push(
                "model/test-mlp", checkpoint(tmp_path / "p.safetensors", 9.0), key=mallory
            )
            mine = c.push("model/test-mlp", checkpoint(tmp_path / "a.safetensors", 1.0))
        wait_for(lambda: b.core.state.store.has_entry(poisoned.entry_id), 30, "replication")
        wait_for(lambda: a.core.state.merkle_root() == b.core.state.merkle_root(), 30, "one root")
        with b.client() as c:
            m = c.materialise("model/test-mlp")
            status = c.status()
        assert list(m.inputs) == [mine.entry_id]
        ((who, why),) = m.excluded
        assert who == mallory.key_id and why.startswith("below_threshold")
        assert all(p.in_sync for p in status.peers)
    finally:
        for n in nodes:
            n.stop()


# -- materialise ------------------------------------------------------------------------------


def test_materialise_selects_the_namespaces_robust_aggregator_and_lists_who_was_left_out(
    tmp_path: Path,
) -> None:
    ns = "model/krum"
    (config,) = federation(tmp_path, 1, namespaces={ns: {"strategy": "krum"}})
    node = InProcessNode(config)
    try:
        members = [fed.add_node(config.parent, f"lab-{i}") for i in range(6)]
        keys: list[NodeKey] = [m.load_key() for m in members]
        with node.client() as c:
            for m in members:
                c.submit(m.membership_bytes())
            pushed = [
                c.push(ns, checkpoint(tmp_path / f"{i}.safetensors", 1.0 + 0.1 * i, seed=i), key=k)
                for i, k in enumerate(keys)
            ]
            gated = keys[-1]
            fork = make_removal(gated, 2, bytes(32), [bytes(32)])
            first = node.core.state.store.get_entry(pushed[-1].entry_id)
            proof = evidence_entry(
                keys[0],
                2,
                pushed[0].entry_id,
                gated.key_id,
                "causality",
                -WEIGHT_UNIT,
                epoch=0,
                proof_kind=ProofKind.CHAIN_FORK,
                proof_data=proof_for_chain_fork(first, fork),
            )
            c.submit(proof.to_bytes())
            m = c.materialise(ns)
        assert m.strategy == "krum"
        assert json.loads(m.params_json)["f"] == 1  # chosen for the 5 inputs left
        assert sorted(m.inputs) == sorted(p.entry_id for p in pushed[:-1])
        (why,) = [r for a, r in m.excluded if a == gated.key_id]
        assert why.startswith("below_threshold") and "chain_fork" in why
    finally:
        node.stop()


def test_the_daemon_flags_a_poisoned_model_against_the_namespace_base(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from crdtd.store.chunks import FileSource

    (config,) = federation(tmp_path, 1, trust={"detect_model_outliers": True})
    node = NodeCore.open(load_daemon_config(config))
    try:
        ns = "model/test-mlp"
        g = torch.Generator().manual_seed(3)
        base_t = {"w": torch.randn(8, 8, generator=g), "b": torch.randn(8, generator=g)}
        delta = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in base_t.items()}
        save_file(base_t, str(tmp_path / "base.safetensors"))
        base = node.push_file(tmp_path / "base.safetensors", ns).entry
        members = [fed.add_node(config.parent, f"lab-{i}") for i in range(5)]
        for m in members:
            node.submit(m.membership_bytes())
        for i, m in enumerate(members):
            sign = -3.0 if i == 4 else 1.0
            tensors = {
                k: base_t[k] + sign * delta[k] + 0.03 * torch.randn(v.shape, generator=g)
                for k, v in base_t.items()
            }
            path = tmp_path / f"m{i}.safetensors"
            save_file(tensors, str(path))
            src = FileSource(path)
            e = make_contribution(
                m.load_key(),
                1,
                None,
                ns,
                src.manifest.digest,
                src.manifest.size,
                payload_kind="safetensors",
                base_id=base.id,
            )
            node.push_file(path, ns, "safetensors", signed_entry=e.to_bytes())
        (published,) = [Evidence.from_entry(e) for e in node.detect_models()]
        poisoner = members[4].load_key().key_id
        assert (published.subject, published.dimension) == (node.key_id, "model")
        assert published.proof_kind is ProofKind.MODEL_REPORT
        report = decode_model_report(published.proof_data)
        assert len(report.verdicts) == 5
        assert [v.author for v in report.verdicts if v.outlier] == [poisoner]
        assert "direction" in published.reason
        assert node.detect_models() == []  # nothing new to look at
        # one round's verdict is statistical: it gates nobody on its own
        assert node.assessment().scores.trust[poisoner] == SCALE
    finally:
        node.close()


@pytest.mark.slow
def test_the_byzantine_harness_gates_attackers_of_real_daemons(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from simulations.byzantine import main

    code = main(["--grpc", "--nodes", "10", "--byzantine", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("honest_converged: true, honest_gated: 0")
    for attack in ("equivocation", "forged_signature", "sign_flip"):
        assert f"{attack}@" in out and "never" not in out
