"""Generated inputs to the merge-config loader and the model merge: only typed errors come out.

Any document, any bytes in a YAML file, any safetensors header, any set of tensors (names,
shapes, dtypes, NaN and Inf, missing tensors) with any strategy and parameters either merges
or raises a `CrdtdError` subclass naming what was wrong; nothing is written when it raises.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.errors import CrdtdError
from crdtd.model import Contribution, ModelMerge, ModelMergeSchema
from crdtd.model.io import open_checkpoint
from crdtd.model.yaml_config import load_config, parse_config
from crdtd.strategies import registry

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEYS = [
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "rules",
    "tokenizer_source",
    "lora",
    "semantics",
    "slices",
    "model",
    "match",
    "weight",
    "density",
    "t",
    "filter",
    "value",
    "rank",
    "energy",
    "extras",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["m0", "m1", "base", "ties", "slerp", "linear", "bfloat16", "crdtd", ""]),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=5),
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model_generators import save_checkpoint, tiny_tensors

    root = tmp_path_factory.mktemp("fuzz-models")
    base = tiny_tensors(0)
    save_checkpoint(root / "base", base)
    for i in range(2):
        save_checkpoint(root / f"m{i}", tiny_tensors(i + 1, around=base))
    return root


@FUZZ
@given(doc=documents)
def test_any_config_document_parses_or_raises_a_config_error(model_dirs: Path, doc: Any) -> None:
    with contextlib.suppress(CrdtdError):
        parse_config(doc, model_dirs, "fuzz.yml")


@FUZZ
@given(
    doc=st.fixed_dictionaries(
        {
            "merge_method": st.sampled_from([*registry.names(), "nope"]),
            "models": st.just(["m0", "m1"]),
        },
        optional={
            "base_model": st.sampled_from(["base", "m0"]),
            "parameters": st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3),
            "dtype": st.sampled_from(["bfloat16", "float32", "int8", "fp16"]),
            "semantics": st.sampled_from(["crdtd", "mergekit"]),
        },
    )
)
def test_any_mergekit_style_config_merges_or_raises_a_typed_error(
    model_dirs: Path, tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]
) -> None:
    out = tmp_path_factory.mktemp("out") / "merged"
    try:
        cfg = parse_config(doc, model_dirs, "fuzz.yml")
        ModelMerge(cfg.schema).merge_to_dir(cfg.inputs, out, cfg.base, dtype=cfg.dtype)
    except CrdtdError:
        assert not out.exists() or not any(out.iterdir())


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    )
)
def test_any_yaml_file_loads_or_raises_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("yaml") / "merge.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(CrdtdError):
        load_config(path)


headers = st.one_of(
    st.binary(max_size=64),
    documents.map(lambda d: json.dumps(d, default=str).encode()),
    st.dictionaries(
        st.text(max_size=4),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "BF16", "I64", "F8_E4M3", "X9", 3]),
                "shape": st.lists(st.integers(-2, 4), max_size=3),
                "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3),
            }
        ),
        max_size=3,
    ).map(lambda d: json.dumps(d).encode()),
)


@FUZZ
@given(header=headers, body=st.binary(max_size=64), claimed=st.integers(-1, 300))
def test_any_safetensors_bytes_open_or_raise_an_input_error(
    tmp_path_factory: pytest.TempPathFactory, header: bytes, body: bytes, claimed: int
) -> None:
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    n = claimed if claimed >= 0 else len(header)
    path.write_bytes(struct.pack("<Q", n % (1 << 64)) + header + body)
    try:
        src = open_checkpoint(path)
    except CrdtdError:
        return
    try:
        for name in sorted(src.infos):
            src.view(name)
    finally:
        src.close()


dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int32])
values = st.sampled_from([0.0, 1.0, -2.5, 1e-3, float("nan"), float("inf"), 3e38])


@st.composite
def tensor_sets(
    draw: st.DrawFn,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]:
    names = draw(
        st.lists(
            st.sampled_from(["a.weight", "layers.0.w", "layers.1.w", "norm"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    k = draw(st.integers(1, 3))
    shapes = {n: tuple(draw(st.lists(st.integers(0, 3), max_size=2))) for n in names}
    seed = draw(st.integers(0, 1000))
    g = torch.Generator().manual_seed(seed)

    def model() -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            if draw(st.integers(0, 15)) == 0:
                continue  # a tensor missing from this model
            shape = shapes[n] if draw(st.integers(0, 15)) else (draw(st.integers(1, 3)),)
            t = torch.randn(shape, generator=g)
            if t.numel() and draw(st.booleans()):
                t.view(-1)[0] = draw(values)
            out[n] = t.to(draw(dtypes)) if draw(st.integers(0, 7)) == 0 else t
        return out

    inputs = [model() for _ in range(k)]
    base = model() if draw(st.booleans()) else None
    return inputs, base


params = st.dictionaries(
    st.sampled_from(
        ["weight", "density", "t", "lambda", "normalize", "gamma", "epsilon", "scale", "bogus"]
    ),
    st.one_of(st.floats(-1, 2, allow_nan=False), st.booleans(), st.just([0.0, 1.0])),
    max_size=3,
)
FAST = [
    s.name
    for s in registry.all_strategies()
    if s.family in ("standard", "mergekit") and not s.needs_extras
]


@FUZZ
@given(
    data=tensor_sets(),
    strategy=st.sampled_from(FAST),
    glob=params,
    per=st.lists(params, max_size=3),
    dtype=st.sampled_from([None, "bfloat16", "float32"]),
)
def test_any_tensor_set_and_parameters_merge_or_raise_a_typed_error(
    data: tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor] | None],
    strategy: str,
    glob: dict[str, Any],
    per: list[dict[str, Any]],
    dtype: str | None,
) -> None:
    inputs, base = data
    items = [Contribution(x, per[i] if i < len(per) else {}) for i, x in enumerate(inputs)]
    try:
        result = ModelMerge(ModelMergeSchema.single(strategy, glob)).merge(items, base, dtype=dtype)
    except CrdtdError:
        return
    assert set(result.tensor) == set(inputs[0])
