"""Materialise a namespace: its kind (`crdtd.kinds`) merges the accepted set into one file.

A pure function of the node's set: the namespace's visible contributions, the trust
assessment derived from the evidence held, and the namespace's settings (or the request's).
Nodes holding the same set therefore write byte-identical files (same sha256), whatever the
kind: a model's safetensors, a table's Parquet, a sketch union, an agent memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crdtd import kinds
from crdtd.kinds.base import Excluded, Materialised, MaterialiseRequest, sha256_file
from crdtd.node.config import NamespaceConfig


def parse_param(text: str) -> Any:
    """A request parameter value: JSON (1, 0.5, true, "x", [..]) or else the text itself
    (also for JSON nested too deep to parse; the strategy's validation then names it)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def materialise(
    core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
) -> Materialised:
    """Merge namespace `ns` into a file under `work_dir` (`core` is a `NodeCore`); runs as
    long as the merge does."""
    return kinds.get(ns.kind).materialise(core, ns, request, work_dir)


def output_name(ns: NamespaceConfig, request: MaterialiseRequest) -> str:
    """The file name the namespace's kind writes (its suffix is the one out_path needs)."""
    return kinds.get(ns.kind).output_name(ns, request)


__all__ = [
    "Excluded",
    "MaterialiseRequest",
    "Materialised",
    "materialise",
    "output_name",
    "parse_param",
    "sha256_file",
]
