"""Model-dimension detection and trust-weighted materialisation plans."""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from crdtd.errors import ConfigError, TensorMismatchError
from crdtd.model import Contribution, ModelMerge
from crdtd.trust.evidence import ProofKind, decode_model_report
from crdtd.trust.gating import NamespacePolicy, Revocations
from crdtd.trust.outliers import (
    ContributionStats,
    ModelContribution,
    OutlierParams,
    model_outliers,
    report_observation,
)
from crdtd.trust.scores import compute_scores
from crdtd.trust.weighting import WeightedInput, plan_materialisation, robust_params
from tests.trust_generators import Fed

RNG = np.random.default_rng(3)
BASE = {"b": RNG.normal(size=(8,)), "w": RNG.normal(size=(8, 8))}
DELTA = {k: RNG.normal(0, 0.1, v.shape) for k, v in BASE.items()}


def _cid(i: int) -> bytes:
    return hashlib.sha256(b"c%d" % i).digest()


def _author(i: int) -> bytes:
    return hashlib.sha256(b"a%d" % i).digest()


def _honest(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    return {k: BASE[k] + DELTA[k] + rng.normal(0, 0.03, v.shape) for k, v in BASE.items()}


def _contribs(tensors: list[dict[str, np.ndarray]]) -> list[ModelContribution]:
    return [ModelContribution(_cid(i), _author(i), t) for i, t in enumerate(tensors)]


def _flags(tensors: list[dict[str, np.ndarray]]) -> dict[int, tuple[str, ...]]:
    stats = {s.content_id: s for s in model_outliers(_contribs(tensors), BASE)}
    return {i: stats[_cid(i)].flags for i in range(len(tensors))}


def test_honest_updates_raise_no_flags():
    flags = _flags([_honest(i) for i in range(8)])
    assert all(f == () for f in flags.values())


def test_a_sign_flipped_update_is_flagged_by_direction():
    ts = [_honest(i) for i in range(7)]
    ts.append({k: BASE[k] - 3 * (ts[0][k] - BASE[k]) for k in BASE})
    flags = _flags(ts)
    assert "direction" in flags[7]
    assert all(flags[i] == () for i in range(7))


def test_large_norm_noise_is_flagged_by_norm_ratio():
    ts = [_honest(i) for i in range(7)]
    ts.append(
        {k: BASE[k] + np.random.default_rng(9).normal(0, 1.0, v.shape) for k, v in BASE.items()}
    )
    assert "norm" in _flags(ts)[7]


def test_a_site_with_more_rows_may_move_further_without_being_flagged():
    """Norms are compared per √num_examples: a big site's longer step is not an outlier.
    (Non-IID: every site moves its own way; the big site's step is 8× theirs.)"""
    rng = np.random.default_rng(5)
    ts = [{k: BASE[k] + rng.normal(0, 0.1, v.shape) for k, v in BASE.items()} for _ in range(8)]
    big = {k: BASE[k] + rng.normal(0, 0.8, v.shape) for k, v in BASE.items()}
    rows = [100] * 8 + [6400]
    contribs = [
        ModelContribution(_cid(i), _author(i), t, rows[i]) for i, t in enumerate([*ts, big])
    ]
    stats = {s.content_id: s for s in model_outliers(contribs, BASE)}
    assert stats[_cid(8)].flags == ()
    undeclared = [ModelContribution(c.content_id, c.author, c.tensors) for c in contribs]
    assert "norm" in {s.content_id: s for s in model_outliers(undeclared, BASE)}[_cid(8)].flags


def test_the_direction_cut_off_widens_with_the_rounds_spread():
    """A pull against the cohort that is extreme in a tight round is ordinary in a wide one."""
    rng = np.random.default_rng(4)
    d = rng.normal(size=64)

    def flagged(spread: float) -> bool:
        ups = [d + rng.normal(0, spread, 64) for _ in range(9)]
        ups.append(-0.25 * d)
        ts = [{"v": u} for u in ups]
        stats = model_outliers(_contribs(ts))
        return "direction" in {s.content_id: s for s in stats}[_cid(9)].flags

    assert flagged(0.2)
    assert not flagged(6.0)


def test_colluders_sending_one_crafted_alie_update_are_flagged_together():
    honest = [_honest(i) for i in range(8)]
    ups = {k: np.stack([h[k] - BASE[k] for h in honest]) for k in BASE}
    alie = {k: BASE[k] + ups[k].mean(0) - 0.25 * ups[k].std(0) for k in BASE}
    flags = _flags([*honest, alie, alie])
    assert "collusion" in flags[8] and "collusion" in flags[9]
    assert all(flags[i] == () for i in range(8))


def test_detection_is_independent_of_input_order():
    ts = [_honest(i) for i in range(6)] + [{k: -v for k, v in _honest(6).items()}]
    contribs = _contribs(ts)
    shuffled = list(contribs)
    random.Random(5).shuffle(shuffled)
    assert model_outliers(contribs, BASE) == model_outliers(shuffled, BASE)


def test_nothing_is_flagged_until_enough_contributions_are_visible():
    ts = [_honest(0), {k: -v for k, v in _honest(1).items()}]
    assert all(not s.outlier for s in model_outliers(_contribs(ts), BASE))
    params = OutlierParams.for_federation(10)
    assert params.min_contributions == 8
    few = [_honest(i) for i in range(5)] + [{k: BASE[k] - 3 * DELTA[k] for k in BASE}]
    assert all(not s.outlier for s in model_outliers(_contribs(few), BASE, params))


def test_a_report_gives_a_verdict_on_every_contribution_and_names_the_outliers():
    ts = [_honest(i) for i in range(5)] + [{k: BASE[k] - 3 * DELTA[k] for k in BASE}]
    observer = _author(99)
    obs = report_observation(model_outliers(_contribs(ts), BASE), "model/mlp", 4, observer)
    assert obs.subject == observer and obs.dimension == "model" and obs.weight == 0
    assert obs.kind is ProofKind.MODEL_REPORT
    report = decode_model_report(obs.data)
    assert report.namespace == "model/mlp" and report.round == 4
    assert len(report.verdicts) == 6
    assert [v.author for v in report.verdicts if v.outlier] == [_author(5)]
    assert "model/mlp round 4" in obs.reason and "direction_z=" in obs.reason


def test_mismatched_tensors_are_named():
    ts = [_honest(i) for i in range(3)]
    ts[2] = {"b": ts[2]["b"], "w": ts[2]["w"][:4]}
    with pytest.raises(TensorMismatchError, match="'w'"):
        model_outliers(_contribs(ts), BASE)


def test_bad_outlier_thresholds_are_refused():
    with pytest.raises(ConfigError, match="max_direction_z"):
        OutlierParams(max_direction_z=-1.0)
    with pytest.raises(ConfigError, match="max_norm_ratio"):
        OutlierParams(max_norm_ratio=0.5)


# -- weighting ----------------------------------------------------------------------------------


def test_plan_splits_an_authors_weight_over_its_copies_and_follows_trust():
    fed = Fed(4)
    evidence = [fed.ev(0, 3, "gossip", -400), fed.ev(1, 3, "gossip", -400)]
    evidence += [fed.ev(2, 3, "gossip", -400)]
    scores = compute_scores(evidence, fed.members)
    inputs = [
        WeightedInput(_cid(0), fed.kid(0)),
        WeightedInput(_cid(1), fed.kid(1)),
        WeightedInput(_cid(2), fed.kid(1)),
        WeightedInput(_cid(3), fed.kid(3)),
    ]
    plan = plan_materialisation(inputs, scores, Revocations(), NamespacePolicy(threshold=0))
    assert sum(plan.weights) == 1
    w = dict(zip(plan.content_ids, plan.weights))
    assert w[_cid(1)] == w[_cid(2)] == w[_cid(0)] / 2
    t3 = Fraction(scores.trust[fed.kid(3)], scores.trust[fed.kid(0)])
    assert w[_cid(3)] == w[_cid(0)] * t3 < w[_cid(0)]
    assert plan.strategy == "fedavg" and "num_examples" in plan.model_params[0]


def test_plan_leaves_gated_authors_out_and_reports_them():
    fed = Fed(5)
    scores = compute_scores([fed.equivocation(0, 4)], fed.members)
    inputs = [WeightedInput(_cid(i), fed.kid(i)) for i in range(5)]
    plan = plan_materialisation(inputs, scores, Revocations(), NamespacePolicy(strategy="median"))
    assert fed.kid(4) not in plan.authors
    assert [x.author for x in plan.excluded] == [fed.kid(4)]
    assert plan.model_params == ({},) * 4


def test_krum_family_gets_an_f_the_rule_supports():
    assert robust_params("krum", 9, {}) == ("krum", {"f": 2}, "krum with f=2 for 9 inputs")
    assert robust_params("bulyan", 9, {})[1] == {"f": 1}
    assert robust_params("bulyan", 2, {})[0] == "median"
    assert robust_params("multi_krum", 9, {"f": 1})[1] == {"f": 1}


def test_trust_weighted_plan_materialises_through_model_merge_identically_in_any_order():
    fed = Fed(4)
    scores = compute_scores([fed.ev(0, 2, "gossip", -300)], fed.members)
    tensors = {_cid(i): {"w": torch.tensor([float(i), 1.0])} for i in range(4)}
    inputs = [WeightedInput(_cid(i), fed.kid(i)) for i in range(4)]

    def run(order: list[WeightedInput]) -> bytes:
        plan = plan_materialisation(order, scores, Revocations(), NamespacePolicy())
        contribs = [
            Contribution(tensors[c], params=dict(mp))
            for c, mp in zip(plan.content_ids, plan.model_params)
        ]
        out = ModelMerge(plan.schema()).merge(contribs).tensor["w"]
        return out.numpy().tobytes()

    assert run(inputs) == run(list(reversed(inputs)))
    plan = plan_materialisation(inputs, scores, Revocations(), NamespacePolicy())
    expected = sum(float(w) * i for w, i in zip(plan.weights, range(4)))
    got = np.frombuffer(run(inputs), dtype=np.float32)[0]
    assert got == pytest.approx(expected, rel=1e-5)


def test_a_big_step_the_way_the_cohort_goes_is_a_site_still_learning() -> None:
    """Late in training most sites have converged (a tiny median norm); one still moving
    along the cohort's direction is not a norm outlier, a big step elsewhere is."""
    rng = np.random.default_rng(11)
    d = {k: rng.normal(0, 0.1, v.shape) for k, v in BASE.items()}
    quiet = [
        {k: BASE[k] + 0.05 * d[k] + rng.normal(0, 0.002, v.shape) for k, v in BASE.items()}
        for _ in range(8)
    ]
    learning = {k: BASE[k] + 3.0 * d[k] for k in BASE}
    stray = {k: BASE[k] + rng.normal(0, 0.3, v.shape) for k, v in BASE.items()}
    flags = _flags([*quiet, learning, stray])
    assert "norm" not in flags[8]
    assert "norm" in flags[9]


def test_a_small_site_disagreeing_after_the_others_converged_is_not_a_direction_outlier() -> None:
    """Late in training (FedAdam, breast cancer α = 0.5 seed 2) a 37-row site kept pulling
    against converged sites, z 3-9 while moving the model by under 2 % of its norm: no flag.
    The same direction with a step that moves the model (a sign flip) is flagged."""
    rng = np.random.default_rng(12)
    d = {k: rng.normal(0, 0.1, v.shape) for k, v in BASE.items()}
    quiet = [
        {k: BASE[k] + 0.01 * d[k] + rng.normal(0, 0.004, v.shape) for k, v in BASE.items()}
        for _ in range(8)
    ]
    against = {k: BASE[k] - 0.05 * d[k] for k in BASE}
    flipped = {k: BASE[k] - 5.0 * d[k] for k in BASE}
    stats = {s.content_id: s for s in model_outliers(_contribs([*quiet, against]), BASE)}
    assert stats[_cid(8)].direction_z > 3
    assert stats[_cid(8)].flags == ()
    assert "direction" in _flags([*quiet, flipped])[8]


def _two_class_cohort(flip: bool) -> tuple[ContributionStats, ...]:
    """Eight sites along v with spread-out step sizes and two whose own data points mostly
    elsewhere (u ⟂ v); with `flip`, site 9 sends −1.5× its update."""
    rng = np.random.default_rng(5)
    base = {"w": rng.normal(size=64)}
    v = rng.normal(size=64)
    v /= np.linalg.norm(v)
    u = rng.normal(size=64)
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    ups = []
    for i in range(10):
        noise = np.random.default_rng(50 + i).normal(size=64) / 8
        ups.append((0.4 + 0.2 * i) * v + 0.8 * noise if i < 8 else 0.3 * v + 0.8 * u + 0.3 * noise)
    if flip:
        ups[9] = -1.5 * ups[9]
    contribs = _contribs([{"w": base["w"] + d} for d in ups])
    return model_outliers(contribs, base, OutlierParams.for_federation(10))


def test_a_flipped_site_whose_data_points_elsewhere_is_marked_against_only() -> None:
    """Its norm ratio and direction z sit inside the round's spread (no outlier flag), but it
    points against the others (cosine below −0.2): the soft `against` flag, which the round
    screen ignores and the report carries; the same site training honestly raises nothing."""
    from crdtd.trust.evidence import AGAINST_FLAG

    flipped = {s.content_id: s for s in _two_class_cohort(flip=True)}[_cid(9)]
    assert flipped.norm_ratio < 4 and flipped.direction_z < 3
    assert flipped.flags == () and flipped.soft == ("against",)
    assert not flipped.outlier and flipped.mask == AGAINST_FLAG
    honest = _two_class_cohort(flip=False)
    assert all(s.flags == () and s.soft == () for s in honest)
    obs = report_observation(_two_class_cohort(flip=True), "model/x", 1, _author(0))
    (verdict,) = [v for v in decode_model_report(obs.data, "t").verdicts if v.content_id == _cid(9)]
    assert verdict.flags == AGAINST_FLAG and not verdict.outlier


def test_against_cosine_outside_its_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="against_cosine"):
        OutlierParams(against_cosine=0.3)


def test_min_direction_share_outside_its_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="min_direction_share"):
        OutlierParams(min_direction_share=1.5)


def _site_at_five_times(sign: float) -> dict[int, ContributionStats]:
    """Nine non-IID sites and a tenth whose data leans a little the consensus's way, sent
    five times over: as it trained (sign 1) or sign-flipped (−1). Stats by position."""
    rng = np.random.default_rng(13)
    common = {k: rng.normal(0, 0.05, v.shape) for k, v in BASE.items()}
    honest = [
        {k: BASE[k] + common[k] + rng.normal(0, 0.1, v.shape) for k, v in BASE.items()}
        for _ in range(9)
    ]
    own = {k: 0.6 * common[k] + rng.normal(0, 0.1, v.shape) for k, v in BASE.items()}
    tenth = {k: BASE[k] + sign * 5.0 * own[k] for k in BASE}
    stats = {s.content_id: s for s in model_outliers(_contribs([*honest, tenth]), BASE)}
    return {i: stats[_cid(i)] for i in range(10)}


def test_a_sign_flip_at_four_to_five_times_the_cohorts_step_is_flagged_by_norm() -> None:
    """Digits α = 0.1: a −5× flip of a site whose own data points away from the consensus
    sits inside the round's direction spread (z under 3) at 4–5 times the others' scaled
    norm, pointing against them: flagged in the round it is sent (above 5 only, it was
    not). The same step unflipped, a big site the merge leaves out weakly along the others
    (Multi-Krum, breast cancer α = 0.1: ratio 4.1–4.3, cosine 0.1–0.25), is not."""
    flipped = _site_at_five_times(-1.0)
    assert 4.0 < flipped[9].norm_ratio < 5.0 and flipped[9].direction_z < 3.0
    assert flipped[9].flags == ("norm",)
    assert all(flipped[i].flags == () for i in range(9))
    learning = _site_at_five_times(1.0)
    assert 4.0 < learning[9].norm_ratio < 5.0
    assert all(s.flags == () for s in learning.values())


def test_an_against_norm_cut_off_above_the_norm_cut_off_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_against_norm_ratio"):
        OutlierParams(max_against_norm_ratio=6.0)
    with pytest.raises(ConfigError, match="max_against_norm_ratio"):
        OutlierParams(max_against_norm_ratio=1.0)


# -- ascent: a flipped site answers the global's step the wrong way ----------------------------

SIZES = (150, 120, 90, 60, 40, 30, 20, 12, 10, 10)  # site 9: tiny, and its data is nearly fit
MINORITY = (1, 4, 7)


def _site_loss(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Site i's loss ½ Σ a·(w − c)²: two 'classes' pulling along ±v (three sites the
    minority), site 9 a majority site whose loss is nearly flat where the model is."""
    rng = np.random.default_rng(10 + i)
    v = np.linspace(-1.0, 1.0, 24)
    c = (-0.15 if i in MINORITY else 0.3) * v + rng.normal(0, 0.25, 24)
    a = rng.uniform(0.5, 1.5, 24) * (0.2 if i == 9 else 1.0)
    return c, a


def _train(g: np.ndarray, i: int, seed: int) -> np.ndarray:
    """Two local epochs of noisy gradient descent, one step per 32 rows."""
    c, a = _site_loss(i)
    rng = np.random.default_rng(seed)
    w = g.copy()
    for _ in range(2 * -(-SIZES[i] // 32)):
        w = w - 0.1 * (a * (w - c) + rng.normal(0, 0.02, 24))
    return w


def _three_rounds(fed: Fed, flip: bool) -> list[tuple[ContributionStats, ...]]:
    """Three rounds of FedAvg over ten sites (site 9 sending −5× its update when `flip`), each
    judged with every author's previous update; flagged updates are left out of the global
    as the namespace's round screen does."""
    g, g_before, before = np.zeros(24), None, {}
    out = []
    for r in (1, 2, 3):
        ups = {i: _train(g, i, 100 * r + i) for i in range(10)}
        if flip:
            ups[9] = g - 5 * (ups[9] - g)
        contribs = [
            ModelContribution(
                fed.cid(i, r),
                fed.kid(i),
                {"w": ups[i]},
                SIZES[i],
                r,
                {"w": before[i]} if before else None,
            )
            for i in range(10)
        ]
        prior = {"w": g_before} if g_before is not None else None
        stats = model_outliers(contribs, {"w": g}, OutlierParams.for_federation(10), prior)
        out.append(stats)
        flagged = {s.author for s in stats if s.flags}
        keep = [i for i in range(10) if fed.kid(i) not in flagged]
        n = sum(SIZES[i] for i in keep)
        g_before, before = g, ups
        g = g + sum(SIZES[i] / n * (ups[i] - g) for i in keep)
    return out


def _trust_after(fed: Fed, rounds: list[tuple[ContributionStats, ...]]) -> dict[int, int]:
    """Every site's trust once seven honest observers have reported every round."""
    evidence = []
    for r, stats in enumerate(rounds, 1):
        for o in range(7):
            obs = report_observation(stats, "model/fl", r, fed.kid(o))
            evidence.append(fed.ev(o, o, "model", 0, proof_kind=obs.kind, proof_data=obs.data))
    scores = compute_scores(evidence, fed.members)
    return {i: scores.trust[fed.kid(i)] for i in range(10)}


def _of(fed: Fed, stats: tuple[ContributionStats, ...], i: int) -> ContributionStats:
    return next(s for s in stats if s.author == fed.kid(i))


def test_a_tiny_sign_flipped_site_is_gated_by_round_three():
    """Its update is no larger and points no further against the others than an honest
    minority site's (norm ratio < 2, direction z < 3: nothing else flags it), but its change
    since the previous round follows the global's step: flagged `ascent` in rounds 2 and 3,
    which also counts its round-1 update, so three of three are outliers."""
    from crdtd.trust.scores import SCALE

    fed = Fed(10)
    rounds = _three_rounds(fed, flip=True)
    flipper = [_of(fed, stats, 9) for stats in rounds]
    assert [s.flags for s in flipper] == [(), ("ascent",), ("ascent",)]
    assert all(s.norm_ratio < 2 and s.direction_z < 3 for s in flipper)
    assert flipper[1].ascent is not None and flipper[1].ascent > 0.15
    trust = _trust_after(fed, rounds)
    assert trust[9] == 0
    assert all(trust[i] == SCALE for i in range(9))


def test_an_honest_tiny_site_is_not_gated():
    """The same site training honestly answers the global's step against it (ascent < 0)."""
    from crdtd.trust.scores import SCALE

    fed = Fed(10)
    rounds = _three_rounds(fed, flip=False)
    assert all(not s.flags for stats in rounds for s in stats)
    assert all(s.ascent is not None and s.ascent < 0 for s in rounds[1])
    assert all(t == SCALE for t in _trust_after(fed, rounds).values())


def test_the_ascent_statistic_needs_a_previous_update_and_both_bases():
    fed = Fed(10)
    rounds = _three_rounds(fed, flip=True)
    assert all(s.ascent is None for s in rounds[0])
    first = [
        ModelContribution(
            s.content_id, s.author, {"w": np.zeros(24) + i}, 10, 2, {"w": np.ones(24)}
        )
        for i, s in enumerate(rounds[1])
    ]
    assert all(s.ascent is None for s in model_outliers(first, {"w": np.zeros(24)}))
    assert all(s.ascent is None for s in model_outliers(first, None, None, {"w": np.zeros(24)}))


def test_bad_ascent_thresholds_are_refused():
    with pytest.raises(ConfigError, match="max_ascent_cosine"):
        OutlierParams(max_ascent_cosine=1.0)
    with pytest.raises(ConfigError, match="ascent_aligned"):
        OutlierParams(ascent_aligned=1.5)


@pytest.mark.parametrize(
    "previous_base",
    [{"w": BASE["w"]}, {"b": BASE["b"][:4], "w": BASE["w"]}],
    ids=["missing_tensor", "other_shape"],
)
def test_a_previous_global_of_another_architecture_skips_only_ascent(previous_base):
    """A previous global lacking one of this round's tensors (or holding it in another shape)
    leaves nothing to compare the change with: no ascent, and the cohort's other statistics
    still judge it (the sign flip is flagged), instead of an error that drops the cohort."""
    ts = [_honest(i) for i in range(7)]
    ts.append({k: BASE[k] - 3 * (ts[0][k] - BASE[k]) for k in BASE})
    contribs = [
        ModelContribution(_cid(i), _author(i), t, 10, 2, _honest(20 + i)) for i, t in enumerate(ts)
    ]
    stats = {s.content_id: s for s in model_outliers(contribs, BASE, None, previous_base)}
    assert all(s.ascent is None for s in stats.values())
    assert "direction" in stats[_cid(7)].flags
    assert all(stats[_cid(i)].flags == () for i in range(7))
