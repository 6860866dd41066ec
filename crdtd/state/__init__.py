"""Node state: signed entries (`entry`), the E4 state and its validation (`e4`).

`E4State` and friends load lazily so that `crdtd.store` (which reads entries) and
`crdtd.state.e4` (which writes through a store) can import each other's modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crdtd.state.e4 import ApplyResult, ApplyStatus, E4State, federation_of

__all__ = ["ApplyResult", "ApplyStatus", "E4State", "federation_of"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from crdtd.state import e4

        return getattr(e4, name)
    raise AttributeError(f"module 'crdtd.state' has no attribute {name!r}")
