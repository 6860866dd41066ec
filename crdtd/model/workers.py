"""Worker threads that take urgent work first: the merge engine's pool, where a `prepare`
scan on the critical path must not queue behind merge blocks that can wait."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

URGENT, NORMAL, _STOP = 0, 1, 2


class PriorityWorkers:
    """`n` threads running submitted calls, every `URGENT` one before any `NORMAL` one
    waiting, each class in submission order; `initializer` runs once on each thread."""

    def __init__(self, n: int, name: str, initializer: Callable[[], Any] | None = None) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [
            threading.Thread(target=self._run, args=(initializer,), name=f"{name}_{i}", daemon=True)
            for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any, urgent: bool = False) -> Future[Any]:
        """fn(*args) on a worker; its result or error through the returned future."""
        done: Future[Any] = Future()
        self._queue.put((URGENT if urgent else NORMAL, next(self._order), (fn, args, done)))
        return done

    def _run(self, initializer: Callable[[], Any] | None) -> None:
        if initializer is not None:
            initializer()
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            fn, args, done = item
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn(*args))
            except BaseException as err:  # handed to the submitter through the future
                done.set_exception(err)

    def shutdown(self) -> None:
        """Cancel what has not started, let the running calls finish, stop the threads."""
        while True:
            try:
                _, _, item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[2].cancel()
        for _ in self._threads:
            self._queue.put((_STOP, next(self._order), None))
        for t in self._threads:
            t.join()
