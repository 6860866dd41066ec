"""CRDT lattice types the node state is built from, and the law checker.

Every type implements one contract (`Lattice`): `join`, a partial order `le`, and canonical
bytes (`to_bytes` / `from_bytes`, msgpack, identical for equal values on every platform).
The DataSketches-backed sketches (`HllSketch`, `ThetaSketch`, `KllSketch`,
`FrequentItemsSketch`, `Estimate`) load on first use, so `datasketches` stays optional.
"""

from typing import Any

from crdtd.lattice.base import Lattice, LatticeBase, decode
from crdtd.lattice.clocks import Dot, DotContext, VersionVector
from crdtd.lattice.counters import GCounter, PNCounter
from crdtd.lattice.laws import LawReport, LawResult, check_crdt, verify_laws
from crdtd.lattice.maps import ORMap
from crdtd.lattice.product import Product
from crdtd.lattice.registers import LWWRegister, MVRegister
from crdtd.lattice.sets import GSet, ORSet

__all__ = [
    "Dot",
    "DotContext",
    "Estimate",
    "FrequentItemsSketch",
    "GCounter",
    "GSet",
    "HllSketch",
    "KllSketch",
    "LWWRegister",
    "Lattice",
    "LatticeBase",
    "LawReport",
    "LawResult",
    "MVRegister",
    "ORMap",
    "ORSet",
    "PNCounter",
    "Product",
    "ThetaSketch",
    "VersionVector",
    "check_crdt",
    "decode",
    "verify_laws",
]

_SKETCHES = ("Estimate", "FrequentItemsSketch", "HllSketch", "KllSketch", "ThetaSketch")


def __getattr__(name: str) -> Any:
    """Load the sketch lattices (and DataSketches) only when one is asked for."""
    if name in _SKETCHES:
        from crdtd.lattice import sketches

        return getattr(sketches, name)
    raise AttributeError(f"module 'crdtd.lattice' has no attribute {name!r}")
