"""The score function: order independence, budgets, robustness to colluders, fixed point."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.errors import ConfigError
from crdtd.lattice import GCounter
from crdtd.trust.evidence import WEIGHT_UNIT
from crdtd.trust.scores import SCALE, TrustParams, compute_scores, trimmed_mean
from tests.trust_generators import FED, Fed, build_evidence, observations

SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(
    obs=st.lists(observations, max_size=25),
    proofs=st.lists(st.integers(0, 1), max_size=2, unique=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_same_evidence_in_any_order_gives_identical_scores(obs, proofs, seed):
    evidence = build_evidence(obs, proofs)
    shuffled = list(evidence)
    random.Random(seed).shuffle(shuffled)
    duplicated = shuffled + shuffled[: len(shuffled) // 2]
    a = compute_scores(evidence, FED.members)
    b = compute_scores(duplicated, FED.members)
    assert a.to_bytes() == b.to_bytes()
    assert a.counters == b.counters
    assert [f.fault_id for fs in a.faults.values() for f in fs] == [
        f.fault_id for fs in b.faults.values() for f in fs
    ]


@SETTINGS
@given(obs=st.lists(observations, max_size=25), seed=st.integers(0, 99))
def test_two_nodes_joining_their_evidence_agree_with_one_node_holding_it_all(obs, seed):
    evidence = build_evidence(obs, [0])
    rng = random.Random(seed)
    left = [e for e in evidence if rng.random() < 0.5]
    right = [e for e in evidence if e not in left]
    joined_lr = compute_scores(left + right, FED.members)
    joined_rl = compute_scores(right + left + left, FED.members)
    assert (
        joined_lr.digest() == joined_rl.digest() == compute_scores(evidence, FED.members).digest()
    )


@SETTINGS
@given(obs=st.lists(observations, max_size=25), cut=st.integers(0, 25))
def test_counters_only_grow_as_an_observers_chain_grows(obs, cut):
    evidence = build_evidence(obs, [])
    prefix = evidence[:cut]
    small = compute_scores(prefix, FED.members).counters
    big = compute_scores(evidence, FED.members).counters
    for cell, c in small.items():
        assert isinstance(c.accusations, GCounter)
        assert c.proven.le(big[cell].proven)
        assert c.praise.le(big[cell].praise)
        assert c.accusations.le(big[cell].accusations)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 13),
    weights=st.lists(
        st.sampled_from([-5 * WEIGHT_UNIT, -WEIGHT_UNIT, -300]), min_size=1, max_size=4
    ),
    dims=st.lists(
        st.sampled_from(["gossip", "model", "consistency", "integrity"]), min_size=1, max_size=3
    ),
    epochs=st.integers(1, 3),
)
def test_colluders_below_a_third_cannot_gate_an_honest_node_by_accusing_it(
    n, weights, dims, epochs
):
    fed = Fed(n)
    f = (n - 1) // 3
    bad = range(n - f, n)
    evidence = []
    for epoch in range(epochs):
        for b in bad:
            for h in range(n - f):
                for d in dims:
                    for w in weights:
                        evidence.append(fed.ev(b, h, d, w, epoch=epoch))
            for other in bad:
                if other != b:
                    evidence.append(fed.ev(b, other, "gossip", 10 * WEIGHT_UNIT, epoch=epoch))
    scores = compute_scores(evidence, fed.members)
    for h in range(n - f):
        assert scores.trust[fed.kid(h)] == SCALE, scores.as_floats()[fed.kid(h).hex()]


def test_false_accusers_of_many_honest_nodes_are_gated_as_reckless():
    fed = Fed(10)
    evidence = [fed.ev(9, h, "gossip", -WEIGHT_UNIT) for h in range(8)]
    scores = compute_scores(evidence, fed.members)
    assert scores.trust[fed.kid(9)] == 0
    assert [f.kind for f in scores.faults[fed.kid(9)]] == ["reckless_accuser"]
    assert all(scores.trust[fed.kid(h)] == SCALE for h in range(9))


def test_an_honest_node_accusing_only_real_adversaries_is_not_reckless():
    fed = Fed(10)
    evidence = [fed.ev(0, b, "gossip", -WEIGHT_UNIT) for b in (7, 8, 9)]
    scores = compute_scores(evidence, fed.members)
    assert scores.trust[fed.kid(0)] == SCALE


def test_a_majority_of_accusers_gates_the_subject():
    fed = Fed(10)
    evidence = [fed.ev(o, 9, "model", -WEIGHT_UNIT) for o in range(6)]
    scores = compute_scores(evidence, fed.members)
    assert scores.dimension(fed.kid(9), "model") < SCALE // 1000  # its own weight fades to ~0
    assert scores.trust[fed.kid(9)] == scores.dimension(fed.kid(9), "model")
    assert scores.iterations >= 1 and scores.converged


def test_flooding_accusations_counts_as_one_vote_and_is_a_fault():
    fed = Fed(7)
    many = [fed.ev(6, 0, "gossip", -WEIGHT_UNIT) for _ in range(20)]
    scores = compute_scores(many, fed.members)
    assert scores.counters[(fed.kid(0), "gossip")].accusations.value == SCALE
    assert scores.trust[fed.kid(0)] == SCALE
    assert {f.kind for f in scores.faults[fed.kid(6)]} == {"flood"}
    assert scores.trust[fed.kid(6)] == 0


def test_praise_within_budget_never_lifts_a_score_above_one_or_hides_a_proof():
    fed = Fed(7)
    evidence = [fed.equivocation(0, 5)]
    evidence += [fed.ev(o, 5, "causality", WEIGHT_UNIT) for o in range(1, 7) if o != 5]
    scores = compute_scores(evidence, fed.members)
    assert scores.trust[fed.kid(5)] == 0
    praise = [fed.ev(6, 4, d, WEIGHT_UNIT) for d in ("gossip", "model")]
    assert compute_scores(praise, fed.members).trust[fed.kid(4)] == SCALE


def test_self_proving_evidence_counts_in_full_from_an_untrusted_observer():
    fed = Fed(7)
    evidence = [fed.ev(3, h, "gossip", -WEIGHT_UNIT) for h in range(3)]  # 3 is gated: flood
    evidence += [fed.ev(3, 4, "gossip", -6 * WEIGHT_UNIT)]
    evidence.append(fed.equivocation(3, 1))
    scores = compute_scores(evidence, fed.members)
    assert scores.trust[fed.kid(3)] == 0
    assert scores.trust[fed.kid(1)] == 0
    assert [f.kind for f in scores.faults[fed.kid(1)]] == ["equivocation"]


def test_the_same_fault_reported_by_many_observers_counts_once():
    fed = Fed(7)
    evidence = [fed.equivocation(o, 1) for o in (0, 2, 3)]
    scores = compute_scores(evidence, fed.members)
    assert scores.counters[(fed.kid(1), "causality")].proven.value == 1


def test_a_false_proof_convicts_the_accuser_not_the_accused():
    fed = Fed(7)
    scores = compute_scores([fed.false_bad_signature(2, 0)], fed.members)
    assert scores.trust[fed.kid(0)] == SCALE
    assert scores.trust[fed.kid(2)] == 0
    assert [f.kind for f in scores.faults[fed.kid(2)]] == ["false_proof"]


def test_revoked_members_score_zero_and_evidence_about_oneself_counts_nothing():
    fed = Fed(5)
    scores = compute_scores(
        [fed.ev(2, 2, "gossip", WEIGHT_UNIT)], fed.members, revoked=[fed.kid(1)]
    )
    assert scores.trust[fed.kid(1)] == 0
    assert scores.score(fed.kid(1)) == 0
    assert scores.trust[fed.kid(2)] == SCALE
    assert any("oneself" in why for _, why in scores.ignored)


def test_evidence_from_or_about_non_members_is_ignored():
    fed = Fed(5)
    outsider = Fed(6)
    evidence = [outsider.ev(5, 0, "gossip", -WEIGHT_UNIT), fed.ev(0, 1, "gossip", -WEIGHT_UNIT)]
    scores = compute_scores(evidence, fed.members)
    assert len(scores.ignored) == 1
    assert scores.trust[fed.kid(0)] == SCALE


def test_trimmed_mean_is_exact_and_drops_a_third_of_the_mass_from_each_end():
    pts = [(-SCALE, 1), (0, 1), (SCALE, 1)]
    assert trimmed_mean(pts, Fraction(1, 3)) == 0
    assert trimmed_mean([(-SCALE, 3), (0, 6)], Fraction(1, 3)) == 0
    assert trimmed_mean([(-SCALE, 5), (0, 4)], Fraction(1, 3)) == -666_666  # −2/3, toward 0
    assert trimmed_mean([(7, 0)], Fraction(1, 3)) == 0
    assert trimmed_mean([(-3, 1), (10, 1)], Fraction(0)) == 3  # (−3+10)/2 = 3.5 → 3


@settings(max_examples=60, deadline=None)
@given(
    honest=st.lists(st.integers(-SCALE, SCALE), min_size=3, max_size=12),
    bad=st.lists(st.integers(-SCALE, SCALE), max_size=12),
)
def test_trimmed_mean_stays_within_honest_values_when_colluders_hold_under_a_third(honest, bad):
    bad = bad[: (len(honest) - 1) // 2]  # bad mass ≤ 1/3 of the total
    agg = trimmed_mean([(v, 1) for v in honest + bad], Fraction(1, 3))
    assert min(honest) <= agg <= max(honest)


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ConfigError, match="trim"):
        TrustParams(trim=Fraction(1, 2))
    with pytest.raises(ConfigError, match="budget"):
        TrustParams(budget=0)


def test_scores_render_as_floats_for_display():
    fed = Fed(4)
    scores = compute_scores([fed.equivocation(0, 1)], fed.members)
    row = scores.as_floats()[fed.kid(1).hex()]
    assert row["causality"] == 0.0 and row["trust"] == 0.0 and row["integrity"] == 1.0


# -- statistical model evidence: corroborated, windowed, recoverable ---------------------------

HONEST = range(7)


def _rounds(fed: Fed, flagged_in: dict[int, set[int]], rounds: range, observers=HONEST):
    """Every observer reports every round, flagging the authors `flagged_in[round]`."""
    return [
        fed.report(o, r, flagged_in.get(r, set()), range(fed.n)) for r in rounds for o in observers
    ]


def _model(scores, fed: Fed, i: int) -> float:
    return scores.dimension(fed.kid(i), "model") / SCALE


def test_one_rounds_outlier_verdict_gates_nobody():
    fed = Fed(10)
    scores = compute_scores(_rounds(fed, {1: {8}}, range(1, 4)), fed.members)
    assert _model(scores, fed, 8) == 1.0
    assert scores.trust[fed.kid(8)] == SCALE


def test_three_outlier_rounds_of_five_gate_the_author_and_say_why():
    fed = Fed(10)
    flagged = {1: {8, 9}, 2: {8, 9}, 3: {8}, 4: {8}}
    scores = compute_scores(_rounds(fed, flagged, range(1, 5)), fed.members)
    assert _model(scores, fed, 8) == 0.0 and scores.trust[fed.kid(8)] == 0
    assert _model(scores, fed, 9) == 1.0  # two of five: not yet
    (fault,) = scores.faults[fed.kid(8)]
    assert fault.kind == "model_outliers" and fault.detail.startswith("4 of its last 4")


def test_an_author_whose_updates_look_normal_again_recovers():
    fed = Fed(10)
    flagged = {r: {8} for r in (1, 2, 3)}
    gated = compute_scores(_rounds(fed, flagged, range(1, 4)), fed.members)
    assert gated.trust[fed.kid(8)] == 0
    later = compute_scores(_rounds(fed, flagged, range(1, 6)), fed.members)
    assert later.trust[fed.kid(8)] == 0  # window rounds 1..5: three outliers
    recovered = compute_scores(_rounds(fed, flagged, range(1, 7)), fed.members)
    assert recovered.trust[fed.kid(8)] == SCALE  # window 2..6: round 1 decayed out


def test_a_minority_of_observers_cannot_gate_an_honest_author_with_reports():
    fed = Fed(10)
    honest = _rounds(fed, {}, range(1, 7), observers=range(7))
    liars = _rounds(fed, {r: set(range(7)) for r in range(1, 7)}, range(1, 7), observers=(7, 8, 9))
    scores = compute_scores(honest + liars, fed.members)
    assert all(scores.trust[fed.kid(i)] == SCALE for i in range(7))


def test_a_verdict_on_ones_own_contribution_is_ignored():
    """Six observers flag author 0; author 0's own 'fine' is not counted for or against."""
    fed = Fed(10)
    reports = []
    for r in (1, 2, 3):
        reports += [fed.report(o, r, {0}, range(10)) for o in range(1, 7)]
        reports.append(fed.report(0, r, set(), range(10)))
    scores = compute_scores(reports, fed.members)
    assert scores.trust[fed.kid(0)] == 0  # 6 of 10 trust mass flag it: corroborated


def test_model_reports_keep_detecting_when_some_authors_are_already_gated():
    """Gated observers lose their say; the remaining honest mass still judges everyone."""
    fed = Fed(10)
    flagged = {r: {7, 8, 9} for r in range(1, 7)}
    flagged.update({r: {7, 8, 9, 6} for r in range(4, 7)})
    scores = compute_scores(_rounds(fed, flagged, range(1, 7), observers=range(7)), fed.members)
    assert all(scores.trust[fed.kid(i)] == 0 for i in (7, 8, 9, 6))
    assert all(scores.trust[fed.kid(i)] == SCALE for i in range(6))


def test_model_reports_score_identically_in_any_order():
    fed = Fed(10)
    reports = _rounds(fed, {1: {8}, 2: {8}, 3: {8}}, range(1, 5))
    shuffled = list(reports)
    random.Random(3).shuffle(shuffled)
    a = compute_scores(reports, fed.members)
    b = compute_scores(shuffled, fed.members)
    assert a.to_bytes() == b.to_bytes()


def _ascent_rounds(fed: Fed, ascent_in: dict[int, set[int]], rounds: range):
    """Every honest observer reports every round, flagging `ascent_in[round]` as ascent only."""
    from crdtd.trust.evidence import ASCENT_FLAG

    masks = {r: {a: ASCENT_FLAG for a in authors} for r, authors in ascent_in.items()}
    return _masked_rounds(fed, masks, rounds)


def _masked_rounds(fed: Fed, masks: dict[int, dict[int, int]], rounds: range):
    """Every honest observer reports every round, giving author a the flag mask masks[r][a]."""
    from crdtd.trust.evidence import ModelVerdict, ProofKind, proof_for_model_report

    out = []
    for r in rounds:
        verdicts = [
            ModelVerdict(fed.kid(a), fed.cid(a, r), r, masks.get(r, {}).get(a, 0))
            for a in range(fed.n)
        ]
        data = proof_for_model_report("model/x", r, verdicts)
        out += [
            fed.ev(o, o, "model", 0, proof_kind=ProofKind.MODEL_REPORT, proof_data=data)
            for o in HONEST
        ]
    return out


def test_an_ascent_verdict_also_counts_the_authors_previous_contribution():
    """Ascent compares an update with the author's previous one: flagged in rounds 2 and 3,
    its updates of rounds 1, 2 and 3 are outliers, three of three."""
    fed = Fed(10)
    scores = compute_scores(_ascent_rounds(fed, {2: {8}, 3: {8}}, range(1, 4)), fed.members)
    assert scores.trust[fed.kid(8)] == 0
    (fault,) = scores.faults[fed.kid(8)]
    assert fault.detail.startswith("3 of its last 3")


def test_one_ascent_verdict_counts_two_contributions_and_gates_nobody():
    fed = Fed(10)
    scores = compute_scores(_ascent_rounds(fed, {3: {8}}, range(1, 6)), fed.members)
    assert scores.trust[fed.kid(8)] == SCALE
    assert all(scores.trust[fed.kid(i)] == SCALE for i in range(10))


AGAINST = 16
DIRECTION = 2


def test_a_run_of_against_verdicts_ending_in_an_outlier_counts_whole():
    """Against in rounds 1 and 2, a direction outlier in round 3: three of three."""
    from crdtd.trust.evidence import AGAINST_FLAG

    assert AGAINST_FLAG == AGAINST
    fed = Fed(10)
    masks = {1: {8: AGAINST}, 2: {8: AGAINST}, 3: {8: DIRECTION}}
    scores = compute_scores(_masked_rounds(fed, masks, range(1, 4)), fed.members)
    assert scores.trust[fed.kid(8)] == 0
    (fault,) = scores.faults[fed.kid(8)]
    assert fault.detail.startswith("3 of its last 3")
    assert all(scores.trust[fed.kid(i)] == SCALE for i in range(8))


def test_against_verdicts_alone_or_after_the_outlier_gate_nobody():
    """Soft flags count only before an outlier: alone in every round, or after the last
    outlier (against in 1, direction in 2, against in 3-5), they are not corroborated."""
    fed = Fed(10)
    always = {r: {8: AGAINST} for r in range(1, 6)}
    scores = compute_scores(_masked_rounds(fed, always, range(1, 6)), fed.members)
    assert scores.trust[fed.kid(8)] == SCALE
    after = {1: {8: AGAINST}, 2: {8: DIRECTION}, **{r: {8: AGAINST} for r in (3, 4, 5)}}
    scores = compute_scores(_masked_rounds(fed, after, range(1, 6)), fed.members)
    assert scores.trust[fed.kid(8)] == SCALE


def test_a_soft_flag_is_not_an_outlier_verdict():
    from crdtd.trust.evidence import AGAINST_FLAG, ModelVerdict

    assert not ModelVerdict(b"a" * 32, b"c" * 32, 1, AGAINST_FLAG).outlier
    assert ModelVerdict(b"a" * 32, b"c" * 32, 1, AGAINST_FLAG | DIRECTION).outlier
