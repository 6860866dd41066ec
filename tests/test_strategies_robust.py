"""Byzantine-robust aggregators against literal implementations of their papers' rules."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from crdtd.errors import StrategyParamError
from crdtd.strategies import get
from crdtd.strategies.base import TensorMerge

ROBUST = [
    "median", "trimmed_mean", "geometric_median", "krum", "multi_krum", "bulyan",
    "centered_clip", "fedavg",
]  # fmt: skip


def merge(
    name: str,
    inputs: Any,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    base: Any = None,
) -> np.ndarray:
    strategy = get(name)
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    b = None if base is None else torch.as_tensor(np.asarray(base, dtype=np.float32))
    p, mp = strategy.validate(params or {}, model_params or [{}] * x.shape[0])
    out = strategy.fn(TensorMerge("fc.weight", x, b, p, mp, torch.Generator().manual_seed(0)))
    assert out.dtype == torch.float32 and tuple(out.shape) == tuple(x.shape[1:])
    return out.numpy().astype(np.float64)


def close(a: Any, b: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=tol, atol=tol)


RNG = np.random.default_rng(11)
HONEST = 1.0 + 0.05 * RNG.standard_normal((7, 2, 3))
BYZANTINE = np.stack([np.full((2, 3), 1e6), np.full((2, 3), -5e5)])
MIXED = np.concatenate([HONEST[:5], BYZANTINE])  # 5 honest + 2 Byzantine, interleaved below
MIXED = MIXED[[0, 5, 1, 2, 6, 3, 4]]


def ref_krum_scores(vecs: np.ndarray, f: int, clamp: bool = False) -> list[float]:
    n = len(vecs)
    m = n - f - 2
    if clamp:
        m = max(1, min(m, n - 1))
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((vecs[i] - vecs[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: max(m, 0)]))
    return scores


def test_median_is_coordinatewise_and_averages_the_middle_pair_for_even_counts() -> None:
    close(merge("median", MIXED), np.median(MIXED, axis=0))
    close(merge("median", MIXED[:6]), np.median(MIXED[:6], axis=0))


def test_median_ignores_a_minority_of_huge_outliers() -> None:
    got = merge("median", MIXED)
    assert np.all(got >= HONEST[:5].min(0) - 1e-6) and np.all(got <= HONEST[:5].max(0) + 1e-6)
    assert np.abs(merge("fedavg", MIXED)).max() > 1e4  # the plain mean does not


@pytest.mark.parametrize("beta", [0.0, 0.15, 0.3, 0.5])
def test_trimmed_mean_drops_b_lowest_and_highest_per_coordinate(beta: float) -> None:
    k = len(MIXED)
    b = min(int(beta * k), (k - 1) // 2)
    flat = MIXED.reshape(k, -1)
    expected = [np.mean(sorted(flat[:, j])[b : k - b]) for j in range(flat.shape[1])]
    close(merge("trimmed_mean", MIXED, {"beta": beta}), np.reshape(expected, (2, 3)))


def test_trimmed_mean_resists_outliers_when_beta_covers_them() -> None:
    got = merge("trimmed_mean", MIXED, {"beta": 0.3})
    assert np.abs(got - 1.0).max() < 0.2


def test_geometric_median_minimises_the_sum_of_distances() -> None:
    pts = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [5.0, 5.0], [1.0, 1.0]])
    w = np.array([1.0, 2.0, 1.0, 0.5, 1.0])

    def cost(z: np.ndarray) -> float:
        return float(sum(w[i] * np.linalg.norm(pts[i] - z) for i in range(len(pts))))

    best = minimize(
        cost, pts.mean(0), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12}
    )
    got = merge(
        "geometric_median", pts, {"max_iter": 2000, "tol": 1e-12}, [{"weight": x} for x in w]
    )
    assert cost(got) <= best.fun + 1e-5
    close(got, best.x, 1e-3)


def test_geometric_median_of_collinear_points_is_the_middle_one() -> None:
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [10.0, 10.0, 10.0]])
    close(merge("geometric_median", pts, {"max_iter": 5000, "tol": 1e-14}), pts[1], 1e-3)


def test_krum_picks_the_contribution_with_the_lowest_neighbour_score() -> None:
    vecs = MIXED.reshape(len(MIXED), -1)
    scores = ref_krum_scores(vecs, 2)
    close(merge("krum", MIXED, {"f": 2}), MIXED[int(np.argmin(scores))])


def test_krum_picks_an_honest_contribution() -> None:
    got = merge("krum", MIXED, {"f": 2})
    assert any(np.allclose(got, h, atol=1e-6) for h in HONEST[:5])


def test_krum_needs_more_than_2f_plus_2_inputs_naming_f() -> None:
    with pytest.raises(StrategyParamError, match="'f'"):
        merge("krum", MIXED[:5], {"f": 2})


def test_multi_krum_averages_the_m_best_scored_contributions() -> None:
    vecs = MIXED.reshape(len(MIXED), -1)
    scores = ref_krum_scores(vecs, 2)
    best = np.argsort(scores, kind="stable")[:3]
    close(merge("multi_krum", MIXED, {"f": 2, "m": 3}), MIXED[best].mean(0))
    default = np.argsort(scores, kind="stable")[: len(MIXED) - 2]
    close(merge("multi_krum", MIXED, {"f": 2}), MIXED[default].mean(0))
    assert np.abs(merge("multi_krum", MIXED, {"f": 2}) - 1.0).max() < 0.2


def ref_bulyan(xs: np.ndarray, f: int) -> np.ndarray:
    n = len(xs)
    vecs = xs.reshape(n, -1)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        scores = ref_krum_scores(vecs[remaining], f, clamp=True)
        tied = [remaining[i] for i, sc in enumerate(scores) if sc == min(scores)]
        pick = min(tied, key=lambda i: tuple(vecs[i]))  # documented tie-break: by value
        selected.append(pick)
        remaining.remove(pick)
    s = vecs[selected]
    beta = len(selected) - 2 * f
    out = np.zeros(vecs.shape[1])
    for j in range(vecs.shape[1]):
        med = np.median(s[:, j])
        closest = sorted(range(len(s)), key=lambda i: abs(s[i, j] - med))[:beta]
        out[j] = np.mean([s[i, j] for i in closest])
    return out.reshape(xs.shape[1:])


def test_bulyan_is_recursive_krum_then_a_trimmed_mean_around_the_median() -> None:
    xs = np.concatenate([HONEST, BYZANTINE[:1] * 1e-3, BYZANTINE[1:] * 1e-3])  # 9 inputs, f=1
    xs = xs[[8, 0, 1, 7, 2, 3, 4, 5, 6]]
    got = merge("bulyan", xs, {"f": 1})
    close(got, ref_bulyan(xs, 1))
    assert np.abs(got - 1.0).max() < 0.2


def test_bulyan_needs_4f_plus_3_inputs() -> None:
    with pytest.raises(StrategyParamError, match="'f'"):
        merge("bulyan", HONEST[:6], {"f": 1})


def test_centered_clip_follows_the_clipped_update_from_the_median() -> None:
    tau, iterations = 0.5, 4
    vecs = MIXED.reshape(len(MIXED), -1)
    v = np.median(vecs, axis=0)
    for _ in range(iterations):
        step = np.zeros_like(v)
        for x in vecs:
            d = x - v
            step += d * min(1.0, tau / np.linalg.norm(d)) if np.linalg.norm(d) > 0 else d
        v = v + step / len(vecs)
    got = merge("centered_clip", MIXED, {"tau": tau, "iterations": iterations})
    close(got, v.reshape(2, 3))
    assert np.abs(got - 1.0).max() < 0.5


def test_fedavg_weights_by_num_examples() -> None:
    n = [10, 30, 0, 60]
    xs = HONEST[:4]
    expected = sum(n[i] * xs[i] for i in range(4)) / sum(n)
    close(merge("fedavg", xs, model_params=[{"num_examples": c} for c in n]), expected)
    close(merge("fedavg", xs), xs.mean(0))


def test_fedavg_with_no_examples_at_all_is_refused() -> None:
    with pytest.raises(StrategyParamError, match="num_examples"):
        merge("fedavg", HONEST[:2], model_params=[{"num_examples": 0}] * 2)


def test_robust_aggregators_ignore_a_base() -> None:
    for name in ROBUST:
        close(merge(name, MIXED, base=np.zeros((2, 3))), merge(name, MIXED))


def test_robust_parameters_are_validated_naming_the_key() -> None:
    with pytest.raises(StrategyParamError, match="beta"):
        get("trimmed_mean").validate({"beta": 0.7})
    with pytest.raises(StrategyParamError, match="num_examples"):
        get("fedavg").validate({}, [{"num_examples": -3}])
    with pytest.raises(StrategyParamError, match="num_examples"):
        get("fedavg").validate({}, [{"num_examples": 2.5}])
    with pytest.raises(StrategyParamError, match="'tau'"):
        get("centered_clip").validate({"tau": -1})
    with pytest.raises(StrategyParamError, match="'m'"):
        merge("multi_krum", MIXED, {"f": 1, "m": 9})


def test_every_robust_aggregator_is_registered_in_its_family() -> None:
    for name in ROBUST:
        s = get(name)
        assert s.family == "robust" and s.paper and s.formula and not s.needs_base


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(ROBUST),
    data=st.lists(
        st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=4, max_size=4),
        min_size=7,
        max_size=7,
    ),
    perm=st.permutations(list(range(7))),
    counts=st.lists(st.integers(1, 50), min_size=7, max_size=7),
)
def test_robust_aggregators_ignore_input_order(
    name: str, data: list[list[float]], perm: list[int], counts: list[int]
) -> None:
    xs = np.array(data) + np.arange(7)[:, None] * 1e-3
    mps = [{"num_examples": c} if name == "fedavg" else {} for c in counts]
    params: dict[str, Any] = {"f": 1} if name in ("krum", "multi_krum", "bulyan") else {}
    if name == "geometric_median":
        params = {"max_iter": 500, "tol": 1e-12}
    a = merge(name, xs, params, mps)
    b = merge(name, xs[perm], params, [mps[i] for i in perm])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_krum_ties_are_broken_by_value_not_position() -> None:
    # Two mutually nearest points share the lowest score; the result must not depend on order.
    xs = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    results = {
        tuple(merge("krum", xs[list(p)], {"f": 0})) for p in itertools.permutations(range(3))
    }
    assert results == {(0.0, 0.0)}
