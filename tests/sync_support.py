"""Helpers for the sync tests: quick test tunables, an async-test decorator, and re-exports
of the in-process federation builder (crdtd.sync.testing)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from crdtd.sync.config import SyncConfig
from crdtd.sync.node import SyncNode
from crdtd.sync.testing import SyncFederation, converged, push_contribution, snapshot
from crdtd.sync.transport import Transport

__all__ = [
    "FAST",
    "SyncFederation",
    "async_test",
    "converged",
    "make_node",
    "push_contribution",
    "snapshot",
]

FAST = SyncConfig(
    gossip_interval=0.1,
    probe_interval=0.5,
    probe_timeout=5.0,
    backoff_base=0.2,
    backoff_max=1.0,
    rpc_timeout=20.0,
    push_pull_interval=2.0,
)
"""Tunables for tests: quick rounds, generous timeouts (2 shared cores)."""


def federation_of(*names: str) -> SyncFederation:
    """A federation whose members are `names`, in that order."""
    fed = SyncFederation()
    for name in names:
        fed.add(name)
    return fed


def make_node(
    tf: SyncFederation,
    name: str,
    data_dir: Path,
    transport: Transport | None = None,
    config: SyncConfig = FAST,
    bootstrap: Sequence[str] = (),
    tls: bool = True,
) -> SyncNode:
    """A SyncNode for member `name` with the test tunables."""
    return tf.make_node(name, data_dir, config, transport, bootstrap, tls)


def async_test(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an async test function in a fresh event loop (fixtures pass through)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
