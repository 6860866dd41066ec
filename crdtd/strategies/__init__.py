"""Merge strategies: one pure function per method, behind one registry.

Importing this package registers every strategy; `registry.names()` lists them.
"""

from crdtd.strategies import (  # noqa: F401  (imported for their @register side effects)
    adaptive,
    arcee_fusion,
    linear,
    mergekit,
    model_stock,
    nearswap,
    ram,
    robust,
    spherical,
    subspace,
    ties_dare,
    unlearning,
    weighted,
)
from crdtd.strategies.base import Param, Strategy, TensorMerge, generator_for, seed_for
from crdtd.strategies.registry import all_strategies, get, names, register

__all__ = [
    "Param",
    "Strategy",
    "TensorMerge",
    "all_strategies",
    "generator_for",
    "get",
    "names",
    "register",
    "seed_for",
]
