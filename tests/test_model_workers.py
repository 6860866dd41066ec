"""The merge pool's threads: urgent work first, errors and cancellation through futures."""

from __future__ import annotations

import threading

import pytest

from crdtd.model.workers import PriorityWorkers


def test_urgent_calls_run_before_the_normal_ones_waiting() -> None:
    pool = PriorityWorkers(1, "t")
    gate = threading.Event()
    order: list[str] = []
    try:
        started = threading.Event()

        def hold() -> bool:
            started.set()
            return gate.wait()

        blocker = pool.submit(hold)  # holds the only thread while the queue fills
        assert started.wait(10)
        normal = [pool.submit(order.append, f"n{i}") for i in range(3)]
        urgent = [pool.submit(order.append, f"u{i}", urgent=True) for i in range(2)]
        gate.set()
        for f in [blocker, *normal, *urgent]:
            f.result(timeout=10)
    finally:
        pool.shutdown()
    assert order == ["u0", "u1", "n0", "n1", "n2"]


def test_an_error_reaches_the_submitter_and_the_thread_goes_on() -> None:
    pool = PriorityWorkers(2, "t", initializer=lambda: None)
    try:
        bad = pool.submit(int, "not a number")
        with pytest.raises(ValueError, match="not a number"):
            bad.result(timeout=10)
        assert pool.submit(sum, [1, 2, 3]).result(timeout=10) == 6
    finally:
        pool.shutdown()


def test_shutdown_cancels_what_has_not_started() -> None:
    pool = PriorityWorkers(1, "t")
    gate, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait()

    running = pool.submit(hold)
    waiting = pool.submit(lambda: "ran")
    assert started.wait(10)
    threading.Timer(0.2, gate.set).start()
    pool.shutdown()
    assert running.result() is True
    assert waiting.cancelled()
