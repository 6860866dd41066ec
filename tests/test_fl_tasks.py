"""The bundled federated tasks: label-skewed splits, the numpy MLP and its local training."""

from __future__ import annotations

import numpy as np
import pytest

from crdtd.errors import ConfigError
from crdtd.fl.tasks import TrainConfig, dirichlet_split, evaluate, fit, init_params, make_task


def test_every_training_row_goes_to_exactly_one_site_and_no_site_is_empty() -> None:
    task = make_task("breast_cancer", sites=10, alpha=0.1, seed=1)
    rows = np.concatenate(task.sites)
    assert sorted(rows.tolist()) == list(range(len(task.y_train)))
    assert min(task.site_sizes()) >= 10


def test_small_alpha_gives_sites_fewer_classes() -> None:
    def classes_per_site(alpha: float) -> float:
        task = make_task("digits", sites=10, alpha=alpha, seed=0)
        per_site = []
        for i in range(10):
            _, y = task.site_data(i)
            counts = np.bincount(y, minlength=10)
            per_site.append(int((counts >= 0.05 * len(y)).sum()))
        return float(np.mean(per_site))

    assert classes_per_site(0.1) < classes_per_site(0.5) < classes_per_site(100.0)


def test_the_split_is_a_function_of_the_seed() -> None:
    a = make_task("digits", alpha=0.5, seed=3)
    b = make_task("digits", alpha=0.5, seed=3)
    c = make_task("digits", alpha=0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.sites, b.sites))
    assert not all(np.array_equal(x, y) for x, y in zip(a.sites, c.sites))


def test_an_impossible_split_is_refused_with_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot deal 5 rows to 10 sites"):
        dirichlet_split(np.zeros(5, dtype=np.int64), 10, 0.5, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="unknown task"):
        make_task("mnist")


def test_local_training_learns_and_gives_the_same_bytes_for_the_same_seed() -> None:
    task = make_task("digits", alpha=0.5, seed=0)
    start = init_params(task, 0)
    _, before = evaluate(start, task.x_test, task.y_test)
    trained = fit(start, task.x_train, task.y_train, TrainConfig(epochs=5), seed=11)
    again = fit(start, task.x_train, task.y_train, TrainConfig(epochs=5), seed=11)
    _, after = evaluate(trained, task.x_test, task.y_test)
    assert before < 0.3 and after > 0.9
    assert all(trained[k].tobytes() == again[k].tobytes() for k in trained)
    assert all(start[k].dtype == trained[k].dtype == np.float32 for k in start)


def test_fedprox_term_keeps_a_site_closer_to_the_global_model() -> None:
    task = make_task("digits", alpha=0.1, seed=0)
    start = init_params(task, 0)
    x, y = task.site_data(0)

    def drift(mu: float) -> float:
        out = fit(start, x, y, TrainConfig(epochs=5, mu=mu), seed=2)
        return float(np.sqrt(sum(((out[k] - start[k]) ** 2).sum() for k in out)))

    assert drift(1.0) < 0.8 * drift(0.0)
