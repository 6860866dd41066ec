"""mergekit-style YAML merge configs, plus crdtd's per-tensor `rules`.

    merge_method: ties
    base_model: ./base
    models:
      - model: ./math
        parameters: {weight: 0.6, density: 0.5}
      - model: ./code
        parameters: {weight: 0.4, density: [{filter: mlp, value: 0.3}, {value: 0.5}]}
    parameters: {normalize: true}
    dtype: bfloat16          # mergekit's compute dtype, and the output dtype
    out_dtype: bfloat16      # overrides dtype for the output when both are given
    semantics: mergekit      # default; `crdtd` gives crdtd's own strategies and gradients
    rules:                   # crdtd: first match wins, the rest use merge_method
      - match: model.layers.0-3.*
        merge_method: slerp
        parameters: {t: [0, 0.5, 1]}
    lora: {rank: 16}         # crdtd: when the models are PEFT adapters (or energy: 0.99)

Relative paths resolve against the YAML file's directory. `slices`, hub model ids and other
mergekit features crdtd does not implement are refused with the key named. A config means what
it means in mergekit (`semantics: mergekit`, the default): methods mergekit has run as
`mergekit.<name>` (`crdtd.strategies.mergekit`), computing in `dtype`; a base listed among
`models` is the base; gradients are placed as mergekit places them. `semantics: crdtd` gives
crdtd's own order-free strategies, as `crdtd merge --strategy` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crdtd.errors import ConfigError, InputReadError
from crdtd.model.io import parse_dtype
from crdtd.model.merge import Contribution
from crdtd.model.schema import SEMANTICS, ModelMergeSchema
from crdtd.strategies import registry

TOP_KEYS = frozenset(
    {
        "merge_method",
        "base_model",
        "models",
        "parameters",
        "dtype",
        "out_dtype",
        "rules",
        "tokenizer_source",
        "lora",
        "name",
        "semantics",
    }
)
MODEL_KEYS = frozenset({"model", "parameters", "extras"})
IGNORED_PARAMS = frozenset({"int8_mask"})  # mergekit memory knob; no effect on the result


@dataclass(frozen=True)
class MergeConfig:
    """A parsed merge config: schema, inputs, base and output options."""

    schema: ModelMergeSchema
    inputs: tuple[Contribution, ...]
    base: Path | None
    dtype: str | None
    lora_rank: int | None = None
    lora_energy: float | None = None


def load_config(path: str | Path) -> MergeConfig:
    """Read and validate a YAML merge config; `ConfigError` names the file and key."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: invalid YAML: {err}") from None
    return parse_config(doc, p.parent, str(p))


def _path(value: Any, root: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if "+" in value:
        raise ConfigError(f"{where}: mergekit 'model+lora' syntax is not supported ({value!r})")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise ConfigError(
            f"{where}: {value!r} is not a local path (hub downloads are not supported)"
        )
    return p


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: 'parameters' must be a mapping")
    return {str(k): v for k, v in value.items() if str(k) not in IGNORED_PARAMS}


def parse_config(doc: Any, root: Path, where: str = "config") -> MergeConfig:
    """Validate a loaded YAML document; relative paths resolve against `root`."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: top level must be a mapping")
    if "slices" in doc:
        raise ConfigError(f"{where}: key 'slices' is not supported; use 'models' plus 'rules'")
    unknown = sorted(set(map(str, doc)) - TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TOP_KEYS))})"
        )
    method = doc.get("merge_method")
    if not isinstance(method, str):
        raise ConfigError(f"{where}: 'merge_method' is required (a strategy name)")
    tok = doc.get("tokenizer_source")
    if tok not in (None, "base"):
        raise ConfigError(f"{where}: tokenizer_source {tok!r} is not supported (only 'base')")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{where}: 'models' must be a non-empty list")
    inputs = []
    for i, item in enumerate(models):
        w = f"{where}: models[{i}]"
        if isinstance(item, str):
            item = {"model": item}
        if not isinstance(item, Mapping):
            raise ConfigError(f"{w}: expected a mapping with 'model'")
        bad = sorted(set(map(str, item)) - MODEL_KEYS)
        if bad:
            raise ConfigError(f"{w}: unknown key {bad[0]!r}")
        extras_doc = item.get("extras") or {}
        if not isinstance(extras_doc, Mapping):
            raise ConfigError(f"{w}: 'extras' must map a key to a path")
        extras = {str(k): _path(v, root, f"{w}.extras.{k}") for k, v in extras_doc.items()}
        inputs.append(
            Contribution(
                _path(item.get("model"), root, f"{w}.model"),
                _params(item.get("parameters"), w),
                extras,
                f"{w} ({item.get('model')})",
            )
        )
    semantics = doc.get("semantics", "mergekit")
    if semantics not in SEMANTICS:
        raise ConfigError(
            f"{where}: 'semantics' must be one of {list(SEMANTICS)}, got {semantics!r}"
        )
    base_spec = doc.get("base_model")
    base = None if base_spec is None else _path(base_spec, root, f"{where}: base_model")
    rules = doc.get("rules") or []
    if not isinstance(rules, list):
        raise ConfigError(f"{where}: 'rules' must be a list of {{match, merge_method, parameters}}")
    parsed_rules = [_rule(r, f"{where}: rules[{i}]") for i, r in enumerate(rules)]
    params = _params(doc.get("parameters"), where)
    if semantics == "mergekit":
        compute = _compute_dtype(doc.get("dtype"), where)
        method = _mergekit_name(method)
        if method.startswith("mergekit."):
            params = {**params, "dtype": compute}
        for r in parsed_rules:
            r["strategy"] = _mergekit_name(r["strategy"])
            if isinstance(r["strategy"], str) and r["strategy"].startswith("mergekit."):
                r["params"] = {**r["params"], "dtype": compute}
        inputs = _mergekit_inputs(inputs, base, method)
    try:
        schema = ModelMergeSchema(parsed_rules, default=method, params=params, semantics=semantics)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    dtype = doc.get("out_dtype", doc.get("dtype"))
    lora = doc.get("lora") or {}
    if not isinstance(lora, Mapping) or set(map(str, lora)) - {"rank", "energy"}:
        raise ConfigError(f"{where}: 'lora' takes only 'rank' or 'energy'")
    return MergeConfig(
        schema,
        tuple(inputs),
        base,
        None if dtype is None else str(dtype),
        None if lora.get("rank") is None else int(lora["rank"]),
        None if lora.get("energy") is None else float(lora["energy"]),
    )


def _mergekit_name(method: Any) -> Any:
    """mergekit's meaning of a method name: `mergekit.<name>` where crdtd has it, else as is."""
    if isinstance(method, str) and f"mergekit.{method}" in registry.names():
        return f"mergekit.{method}"
    return method


def _compute_dtype(value: Any, where: str) -> str:
    """The `dtype` key as a `mergekit.*` strategy's compute dtype (empty: the inputs')."""
    if value is None:
        return ""
    try:
        dtype = parse_dtype(str(value))
    except InputReadError as err:
        raise ConfigError(f"{where}: 'dtype': {err}") from None
    return str(dtype).removeprefix("torch.")


def _mergekit_inputs(
    inputs: list[Contribution], base: Path | None, method: str
) -> list[Contribution]:
    """mergekit's inputs: a base listed among `models` is the base, not a fine-tune, for every
    method that uses a base; methods that ignore a base (linear) merge it as one more input."""
    if base is None:
        return inputs
    same = [Path(c.weights).resolve() == base.resolve() for c in inputs]  # type: ignore[arg-type]
    uses_base = method in registry.names() and registry.get(method).needs_base
    if uses_base:
        return [c for c, s in zip(inputs, same) if not s]
    if method == "mergekit.linear" and not any(same):
        return [*inputs, Contribution(base, {}, {}, "base_model")]
    return inputs


def _rule(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping) or "match" not in item:
        raise ConfigError(f"{where}: a rule needs 'match' and 'merge_method'")
    bad = sorted(set(map(str, item)) - {"match", "merge_method", "strategy", "parameters"})
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}")
    return {
        "match": item["match"],
        "strategy": item.get("merge_method", item.get("strategy")),
        "params": _params(item.get("parameters"), where),
    }
