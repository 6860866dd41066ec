"""The threads of the vectorised tabular merge: one pool, started once (starting threads anew
cost about 5 ms a merge). polars and numpy release the GIL in their long calls, so columns,
and parts of one column, are worked on at once. Work is only handed out from the caller's
thread, never from inside a task (a task waiting on another could wait forever)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CORES = min(4, os.cpu_count() or 1)  # threads in the pool, and parts a column is read in


@cache
def pool() -> ThreadPoolExecutor:
    """The merge's thread pool."""
    return ThreadPoolExecutor(max_workers=CORES, thread_name_prefix="crdtd-merge")


def map_threaded(f: Callable[[T], R], items: Iterable[T], threaded: bool = True) -> list[R]:
    """f over the items, on the pool when `threaded` and there are two or more; results in
    the items' order."""
    work = list(items)
    if not threaded or len(work) < 2:
        return [f(x) for x in work]
    return list(pool().map(f, work))
