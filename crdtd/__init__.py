"""crdtd: coordinator-free merging of models, tables and agent state.

`from crdtd import merge` merges tables; `crdtd.lattice` holds the CRDT types;
`crdtd.strategies` and `crdtd.model` merge checkpoints. Heavy parts import lazily.
"""

from __future__ import annotations

from typing import Any

from crdtd.errors import CrdtdError, MergeError

__version__ = "0.1.0"

__all__ = ["CrdtdError", "MergeError", "__version__", "merge"]


def __getattr__(name: str) -> Any:
    if name == "merge":
        from crdtd.data import merge

        return merge
    raise AttributeError(f"module 'crdtd' has no attribute {name!r}")
