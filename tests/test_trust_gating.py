"""Gating, revocation, successor keys, namespace policies, and revoked keys at the state."""

from __future__ import annotations

import pytest

from crdtd.errors import ConfigError, RevokedKeyError
from crdtd.state.e4 import E4State
from crdtd.state.entry import make_revocation
from crdtd.state.testing import Federation
from crdtd.trust.evidence import WEIGHT_UNIT
from crdtd.trust.gating import (
    FederationPolicy,
    NamespacePolicy,
    Revocations,
    assess,
    collect_revocations,
    gate,
)
from crdtd.trust.scores import SCALE, compute_scores
from tests.trust_generators import Fed


def test_gate_lists_who_was_left_out_and_why():
    fed = Fed(6)
    evidence = [fed.equivocation(0, 1)]
    evidence += [fed.ev(o, 2, "model", -WEIGHT_UNIT) for o in (0, 3, 4, 5)]
    scores = compute_scores(evidence, fed.members)
    revs = collect_revocations([], [], scores, auto_revoke_equivocation=False)
    accepted, excluded = gate(scores, revs, NamespacePolicy())
    assert set(accepted) == {fed.kid(i) for i in (0, 3, 4, 5)}
    why = {x.author: x for x in excluded}
    assert why[fed.kid(1)].code == "below_threshold"
    assert "causality: equivocation" in why[fed.kid(1)].reason
    assert "model" in why[fed.kid(2)].reason and "< threshold 0.500" in why[fed.kid(2)].reason


def test_a_namespace_that_ignores_the_model_dimension_keeps_a_model_outlier():
    fed = Fed(6)
    evidence = [fed.ev(o, 2, "model", -WEIGHT_UNIT) for o in (0, 3, 4, 5)]
    scores = compute_scores(evidence, fed.members)
    records = NamespacePolicy(dimensions=("integrity", "causality", "consistency", "gossip"))
    accepted, _ = gate(scores, Revocations(), records)
    assert fed.kid(2) in accepted


def test_authors_outside_the_federation_are_excluded_by_name():
    fed = Fed(3)
    scores = compute_scores([], fed.members)
    stranger = b"\x07" * 32
    accepted, excluded = gate(scores, Revocations(), NamespacePolicy(), [fed.kid(0), stranger])
    assert accepted == (fed.kid(0),)
    assert excluded[0].code == "not_member" and excluded[0].author == stranger


def test_proven_equivocation_revokes_automatically_only_when_the_federation_says_so():
    fed = Fed(5)
    scores = compute_scores([fed.equivocation(0, 3)], fed.members)
    assert (
        collect_revocations([], [], scores, auto_revoke_equivocation=False).revoked == frozenset()
    )
    revs = collect_revocations([], [], scores, auto_revoke_equivocation=True)
    assert revs.revoked == {fed.kid(3)}
    _, excluded = gate(scores, revs, NamespacePolicy(threshold=0))
    assert excluded[0].code == "revoked" and "automatically" in excluded[0].reason


def test_revocations_by_the_key_itself_or_an_admin_count_and_name_successors():
    fed = Fed(5)
    admin = fed.keys[4]
    by_self = make_revocation(fed.keys[0], 1, None, fed.kid(0), successor=fed.kid(1))
    by_admin = make_revocation(admin, 1, None, fed.kid(1), successor=fed.kid(2))
    by_peer = make_revocation(fed.keys[3], 1, None, fed.kid(2))
    revs = collect_revocations([by_self, by_admin, by_peer], [admin.key_id])
    assert revs.revoked == {fed.kid(0), fed.kid(1)}
    assert revs.successor(fed.kid(0)) == fed.kid(2)  # 0 → 1 (revoked too) → 2
    assert revs.successor(fed.kid(1)) == fed.kid(2)
    assert revs.successor(fed.kid(2)) is None
    scores = compute_scores([], fed.members, revoked=revs.revoked)
    _, excluded = gate(scores, revs, NamespacePolicy(threshold=0))
    reasons = {x.author: x.reason for x in excluded}
    assert f"successor {fed.kid(2).hex()[:16]}" in reasons[fed.kid(0)]


def test_successor_cycles_end():
    fed = Fed(3)
    a = make_revocation(fed.keys[0], 1, None, fed.kid(0), successor=fed.kid(1))
    b = make_revocation(fed.keys[1], 1, None, fed.kid(1), successor=fed.kid(0))
    revs = collect_revocations([a, b], [])
    assert revs.successor(fed.kid(0)) is None


def test_a_gated_authors_contributions_are_left_out_of_the_merge_with_the_reason():
    f = Federation()
    for name in ("a", "b", "c", "d"):
        f.add_member(name)
    keys = {k.key_id: k.public_keys for k in f.keys.values()}
    bad = f.keys["d"].key_id
    evidence = [f.evidence(w, bad, weight=-WEIGHT_UNIT) for w in ("a", "b", "c")]
    a = assess(evidence, keys, FederationPolicy())
    accepted, excluded = a.gate(NamespacePolicy(), keys)
    assert bad not in accepted and [x.author for x in excluded] == [bad]
    assert excluded[0].code == "below_threshold"


def test_policy_from_config_picks_the_longest_namespace_prefix():
    admin = "ab" * 32
    policy = FederationPolicy.from_mapping(
        {
            "auto_revoke_equivocation": True,
            "admins": [admin],
            "budget": 4000,
            "trim": "1/4",
            "default": {"threshold": 0.25},
            "namespace": {
                "model/": {"threshold": 0.6, "strategy": "median"},
                "model/llm/": {"strategy": "krum", "params": {"f": 2}},
                "records/patients": {"dimensions": ["integrity", "causality"]},
            },
        }
    )
    assert policy.auto_revoke_equivocation and policy.admins == {bytes.fromhex(admin)}
    assert policy.params.budget == 4000 and str(policy.params.trim) == "1/4"
    assert policy.for_namespace("model/mlp").threshold == 600_000
    assert policy.for_namespace("model/mlp").strategy == "median"
    assert policy.for_namespace("model/llm/7b").strategy_params == {"f": 2}
    assert policy.for_namespace("records/patients").dimensions == ("integrity", "causality")
    assert policy.for_namespace("records/other").threshold == SCALE // 4


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"budgett": 1}, "budgett"),
        ({"default": {"treshold": 0.5}}, "treshold"),
        ({"default": {"threshold": 1.5}}, "threshold"),
        ({"namespace": {"model/": {"dimensions": ["vibes"]}}}, "vibes"),
        ({"admins": ["zz"]}, r"admins\[0\]"),
        ({"trim": "1/2"}, "trim"),
    ],
)
def test_bad_trust_config_names_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        FederationPolicy.from_mapping(raw)


def test_a_revoked_key_cannot_push_to_the_state(tmp_path):
    f = Federation()
    members = [f.add_member(n) for n in ("site-a", "site-b")]
    state = E4State.open(tmp_path / "s", admin=f.admin.public_keys)
    try:
        for m in members:
            state.apply(m)
        before = f.contribute("site-b", b"before revocation")
        state.apply(before, _bytes_source(b"before revocation"))
        state.apply(f.revoke("admin", f.keys["site-b"].key_id))
        after = f.contribute("site-b", b"after revocation")
        with pytest.raises(RevokedKeyError, match="revoked"):
            state.apply(after, _bytes_source(b"after revocation"))
        entries = [e for e, _ in state.store.iter_entries()]
        keys = {k.key_id: k.public_keys for k in f.keys.values()}
        a = assess(entries, keys, FederationPolicy(admins=frozenset({f.admin.key_id})))
        assert a.revocations.is_revoked(f.keys["site-b"].key_id)
        accepted, excluded = a.gate(NamespacePolicy(), keys)
        assert accepted == (f.keys["site-a"].key_id,)
        assert excluded[0].code == "revoked"
    finally:
        state.close()


def _bytes_source(data: bytes):
    from crdtd.store.chunks import BytesSource

    return BytesSource(data)


def test_a_revoked_key_can_neither_push_nor_open_a_sync_session(tmp_path):
    import secrets

    from crdtd.errors import PeerRefusedError
    from crdtd.sync.config import SyncConfig
    from crdtd.sync.handshake import (
        NONCE_SIZE,
        HandshakeServer,
        client_hello,
        verify_server_hello,
    )
    from tests.sync_support import SyncFederation

    tf = SyncFederation()
    for name in ("hospital", "rogue"):
        tf.add(name)
    server_state = tf.open_state(tmp_path / "server")
    rogue_state = tf.open_state(tmp_path / "rogue")
    try:
        server = HandshakeServer(tf.identity("hospital"), server_state, SyncConfig())
        rogue = tf.identity("rogue")
        hello = client_hello(rogue, secrets.token_bytes(NONCE_SIZE), [])
        reply = server.hello(hello, None)
        _, proof = verify_server_hello(rogue, hello, reply, rogue_state, "hospital:1")
        token = server.prove(proof, None).token
        server_state.apply(tf.fed.revoke("admin", rogue.key_id))
        with pytest.raises(PeerRefusedError, match="revoked"):
            server.session(token, None)
        with pytest.raises(PeerRefusedError, match="revoked"):
            server.hello(client_hello(rogue, secrets.token_bytes(NONCE_SIZE), []), None)
        entry, payload = tf.contribution("rogue")
        with pytest.raises(RevokedKeyError):
            server_state.apply(entry, _bytes_source(payload))
    finally:
        server_state.close()
        rogue_state.close()


def test_assess_ignores_evidence_whose_envelope_is_malformed_and_says_why():
    from crdtd.state.entry import make_evidence

    fed = Fed(4)
    bad = make_evidence(fed.keys[0], 1, None, fed.kid(1), "gossip", -WEIGHT_UNIT, proof=b"\xc1")
    a = assess([bad], fed.members, FederationPolicy())
    assert a.scores.trust[fed.kid(1)] == SCALE
    assert [(i, "not msgpack" in why) for i, why in a.scores.ignored] == [(bad.id, True)]
