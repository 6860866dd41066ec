"""Model merging: schemas, streaming safetensors materialisation, LoRA adapters, `crdtd merge`.

`ModelMerge(ModelMergeSchema({"default": "ties"})).merge([a, b], base=base).tensor[name]`
merges in memory; `ModelMerge(...).merge_to_dir(inputs, out)` streams checkpoints to disk.
The output depends only on the *set* of inputs (see `crdtd.model.identity`). Names load
lazily so that importing `crdtd.model.cli` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crdtd.model.lora import LoraMergeReport, merge_adapters
    from crdtd.model.merge import (
        Contribution,
        MergeReport,
        MergeResult,
        ModelMerge,
        merge_to_dir,
    )
    from crdtd.model.schema import ModelMergeSchema, Rule

_WHERE = {
    "LoraMergeReport": "crdtd.model.lora",
    "merge_adapters": "crdtd.model.lora",
    "Contribution": "crdtd.model.merge",
    "MergeReport": "crdtd.model.merge",
    "MergeResult": "crdtd.model.merge",
    "ModelMerge": "crdtd.model.merge",
    "merge_to_dir": "crdtd.model.merge",
    "ModelMergeSchema": "crdtd.model.schema",
    "Rule": "crdtd.model.schema",
}

__all__ = [
    "Contribution",
    "LoraMergeReport",
    "MergeReport",
    "MergeResult",
    "ModelMerge",
    "ModelMergeSchema",
    "Rule",
    "merge_adapters",
    "merge_to_dir",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'crdtd.model' has no attribute {name!r}")
