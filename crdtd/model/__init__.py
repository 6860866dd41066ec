"""Model merging: schemas, streaming safetensors materialisation, LoRA adapters, `crdtd merge`.

`ModelMerge(ModelMergeSchema({"default": "ties"})).merge([a, b], base=base).tensor[name]`
merges in memory; `ModelMerge(...).merge_to_dir(inputs, out)` streams checkpoints to disk.
The output depends only on the *set* of inputs (see `crdtd.model.identity`).
"""

from crdtd.model.lora import LoraMergeReport, merge_adapters
from crdtd.model.merge import (
    Contribution,
    MergeReport,
    MergeResult,
    ModelMerge,
    merge_to_dir,
)
from crdtd.model.schema import ModelMergeSchema, Rule

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
