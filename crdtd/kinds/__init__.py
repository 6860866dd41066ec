"""Namespace kinds: one module per kind, each behind the `NamespaceKind` contract.

`get(name)` returns the kind a namespace declares (`kind = "model"` by default). A kind is
the only place that knows its payload format: it checks pushes and materialises the
namespace's accepted set (see `crdtd.kinds.base`).
"""

from __future__ import annotations

import importlib

from crdtd.errors import ConfigError
from crdtd.kinds.base import Excluded, Materialised, MaterialiseRequest, NamespaceKind

# name -> module holding its KIND object (imported on first use: kinds load their libraries
# lazily too, so reading a config stays cheap).
_MODULES = {
    "model": "crdtd.kinds.model",
    "table": "crdtd.kinds.table",
    "sketch": "crdtd.kinds.sketch",
    "memory": "crdtd.kinds.memory",
}
NAMES = tuple(_MODULES)


def get(name: str) -> NamespaceKind:
    """The kind registered under `name` (ConfigError naming the known kinds otherwise)."""
    module = _MODULES.get(name)
    if module is None:
        raise ConfigError(f"unknown namespace kind {name!r}; known: {', '.join(NAMES)}")
    kind: NamespaceKind = importlib.import_module(module).KIND
    return kind


__all__ = ["NAMES", "Excluded", "MaterialiseRequest", "Materialised", "NamespaceKind", "get"]
