"""`ModelMergeSchema`: ordered rules from tensor-name patterns to a strategy and its params.

Patterns:
  * glob: `*` matches any run of characters (dots included), `?` one character;
  * layer ranges: a dot-separated segment `A-B` matches integers A..B inclusive, so
    `model.layers.0-15.*` covers layers 0 to 15;
  * regex: `re:<expression>`, searched in the name (anchor with `^`/`$`).
The first rule that matches a tensor wins; `default` applies to the rest (`linear` unless set).

Parameter values may be scalars, mergekit-style gradients (a list of numbers interpolated over
the layer position) or conditional lists (`[{filter: self_attn, value: ...}, {value: ...}]`,
first matching filter substring wins); they resolve per tensor in `resolve_value`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtd.errors import ConfigError

DEFAULT_STRATEGY = "linear"
SEMANTICS = ("crdtd", "mergekit")  # how gradients are placed (and what YAML configs mean)
_RANGE = re.compile(r"^(\d+)-(\d+)$")
_LAYER = re.compile(r"\.(\d+)(?=\.|$)")
_PRE_LAYER_WORDS = ("embed", "wte", "wpe", "tok_embeddings", "word_embeddings")


@dataclass(frozen=True)
class Rule:
    """One schema rule: a pattern, the strategy it selects and that strategy's params."""

    pattern: str
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher", compile_pattern(self.pattern))

    def matches(self, name: str) -> bool:
        """Whether tensor `name` falls under this rule."""
        matcher: _Matcher = object.__getattribute__(self, "_matcher")
        return matcher.matches(name)

    def to_config(self) -> dict[str, Any]:
        """Plain data for metadata and YAML round trips."""
        return {"match": self.pattern, "strategy": self.strategy, "params": _plain(self.params)}


@dataclass(frozen=True)
class _Matcher:
    regex: re.Pattern[str]
    ranges: tuple[tuple[int, int], ...]
    search: bool

    def matches(self, name: str) -> bool:
        m = self.regex.search(name) if self.search else self.regex.fullmatch(name)
        if m is None:
            return False
        return all(lo <= int(m.group(f"r{i}")) <= hi for i, (lo, hi) in enumerate(self.ranges))


def compile_pattern(pattern: str) -> _Matcher:
    """Compile a glob / layer-range / `re:` pattern; `ConfigError` names a bad one."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"rule pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            return _Matcher(re.compile(pattern[3:]), (), True)
        except re.error as err:
            raise ConfigError(f"rule pattern {pattern!r}: bad regular expression: {err}") from None
    ranges: list[tuple[int, int]] = []
    parts: list[str] = []
    for segment in pattern.split("."):
        m = _RANGE.match(segment)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ConfigError(f"rule pattern {pattern!r}: layer range {segment} is empty")
            parts.append(f"(?P<r{len(ranges)}>\\d+)")
            ranges.append((lo, hi))
            continue
        parts.append("".join(_glob_char(c) for c in segment))
    return _Matcher(re.compile(r"\.".join(parts)), tuple(ranges), False)


def _glob_char(c: str) -> str:
    if c == "*":
        return ".*"
    if c == "?":
        return "."
    return re.escape(c)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rule_from(pattern: str, spec: Any) -> Rule:
    """A rule from `"ties"` or `{"strategy": "ties", "params": {...}}` (also `merge_method`)."""
    if isinstance(spec, str):
        return Rule(pattern, spec)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"strategy", "merge_method", "params", "parameters"})
        if unknown:
            raise ConfigError(f"rule {pattern!r}: unknown key {unknown[0]!r}")
        name = spec.get("strategy", spec.get("merge_method"))
        if not isinstance(name, str):
            raise ConfigError(f"rule {pattern!r}: missing 'strategy'")
        params = spec.get("params", spec.get("parameters")) or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"rule {pattern!r}: 'params' must be a mapping")
        return Rule(pattern, name, dict(params))
    raise ConfigError(f"rule {pattern!r}: expected a strategy name or mapping, got {spec!r}")


class ModelMergeSchema:
    """Ordered tensor-name rules plus a default: which strategy merges which tensor.

    `ModelMergeSchema({"default": "ties"})`, or with rules (first match wins, in the
    mapping's order): `{"model.layers.0-15.*": "slerp", "re:.*mlp.*": {"strategy": "ties",
    "params": {"density": 0.3}}, "default": "linear"}`. `params` are global parameters for
    the default strategy.
    """

    def __init__(
        self,
        rules: Mapping[str, Any] | Sequence[Rule | Mapping[str, Any]] | None = None,
        *,
        default: str | Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        semantics: str = "crdtd",
    ) -> None:
        if semantics not in SEMANTICS:
            raise ConfigError(f"semantics {semantics!r} is not one of {list(SEMANTICS)}")
        self.semantics = semantics
        parsed: list[Rule] = []
        default_spec: Any = default
        if isinstance(rules, Mapping):
            for pattern, spec in rules.items():
                if pattern == "default":
                    if default is not None:
                        raise ConfigError("default strategy given twice")
                    default_spec = spec
                else:
                    parsed.append(_rule_from(str(pattern), spec))
        elif rules is not None:
            for item in rules:
                if isinstance(item, Rule):
                    parsed.append(item)
                elif isinstance(item, Mapping) and "match" in item:
                    rest = {k: v for k, v in item.items() if k != "match"}
                    parsed.append(_rule_from(str(item["match"]), rest))
                else:
                    raise ConfigError(f"rule must be a Rule or have a 'match' key: {item!r}")
        base = _rule_from("*", default_spec if default_spec is not None else DEFAULT_STRATEGY)
        merged_params = {**dict(base.params), **dict(params or {})}
        self.default = Rule("*", base.strategy, merged_params)
        self.rules: tuple[Rule, ...] = tuple(parsed)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ModelMergeSchema:
        """Same as the constructor; `"*"` may stand for the default."""
        return cls(spec)

    @classmethod
    def single(cls, strategy: str, params: Mapping[str, Any] | None = None) -> ModelMergeSchema:
        """One strategy for every tensor."""
        return cls(default=strategy, params=params)

    def rule_for(self, name: str) -> Rule:
        """The first rule matching tensor `name`, else the default."""
        for rule in self.rules:
            if rule.matches(name):
                return rule
        return self.default

    def position(self, name: str, num_layers: int) -> float:
        """Where tensor `name` sits for gradient parameters, under this schema's semantics."""
        if self.semantics == "mergekit":
            return mergekit_layer_position(name, num_layers)
        return layer_position(name, num_layers)

    def strategies(self) -> list[str]:
        """Every strategy name the schema may select, sorted."""
        return sorted({r.strategy for r in (*self.rules, self.default)})

    def to_config(self) -> dict[str, Any]:
        """Plain data describing the schema (recorded in output metadata)."""
        config: dict[str, Any] = {
            "rules": [r.to_config() for r in self.rules],
            "default": self.default.to_config(),
        }
        if self.semantics != "crdtd":
            config["semantics"] = self.semantics
        return config

    def __repr__(self) -> str:
        return f"ModelMergeSchema({self.to_config()!r})"


def layer_position(name: str, num_layers: int) -> float:
    """Where tensor `name` sits in the network, 0..1, for gradient parameters.

    Layer i of L maps to i/(L-1); tensors outside the layer stack count as 0 when they are
    embeddings (they come before the layers) and 1 otherwise (final norm, LM head).
    """
    m = _LAYER.search(name)
    if m is not None and num_layers > 1:
        return min(1.0, int(m.group(1)) / (num_layers - 1))
    if m is not None:
        return 0.0
    return 0.0 if any(w in name for w in _PRE_LAYER_WORDS) else 1.0


def mergekit_layer_position(name: str, num_layers: int) -> float:
    """mergekit's gradient position: layer i of L at i/(L−1) (1 when L = 1); every tensor
    outside the layer stack (embeddings, final norm, LM head) at 0."""
    m = _LAYER.search(name)
    if m is None:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return min(1.0, int(m.group(1)) / (num_layers - 1))


def count_layers(names: Iterable[str]) -> int:
    """1 + the largest layer index found in the names (0 when there is none)."""
    best = -1
    for n in names:
        m = _LAYER.search(n)
        if m is not None:
            best = max(best, int(m.group(1)))
    return best + 1


def resolve_value(value: Any, name: str, position: float, where: str) -> Any:
    """A parameter's value for tensor `name`: scalar, gradient or conditional list."""
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigError(f"{where}: empty list")
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            if len(value) == 1:
                return float(value[0])
            scaled = position * (len(value) - 1)
            i0 = min(math.floor(scaled), len(value) - 2)
            frac = scaled - i0
            return (1.0 - frac) * float(value[i0]) + frac * float(value[i0 + 1])
        for cond in value:
            if not isinstance(cond, Mapping) or "value" not in cond:
                raise ConfigError(f"{where}: list items must all be numbers or {{filter, value}}")
            extra = sorted(set(cond) - {"filter", "value"})
            if extra:
                raise ConfigError(f"{where}: unknown key {extra[0]!r} in conditional value")
            flt = cond.get("filter")
            if flt is None or str(flt) in name:
                return resolve_value(cond["value"], name, position, where)
        raise ConfigError(f"{where}: no conditional value matches tensor {name!r}")
    return value


def resolve_params(
    params: Mapping[str, Any], name: str, position: float, where: str
) -> dict[str, Any]:
    """Every value of `params` resolved for tensor `name` (sorted keys)."""
    return {
        str(k): resolve_value(params[k], name, position, f"{where}, parameter {k!r}")
        for k in sorted(params)
    }
