"""ModelMergeSchema: which rule (strategy + params) a tensor name falls under."""

from __future__ import annotations

import pytest

from crdtd.errors import ConfigError
from crdtd.model import ModelMergeSchema, Rule
from crdtd.model.schema import count_layers, layer_position, resolve_params, resolve_value


def test_default_strategy_applies_when_no_rule_matches() -> None:
    schema = ModelMergeSchema({"default": "ties"})
    assert schema.rule_for("anything.weight").strategy == "ties"
    assert ModelMergeSchema().rule_for("x").strategy == "linear"


def test_first_matching_rule_wins_in_the_order_given() -> None:
    schema = ModelMergeSchema(
        {
            "model.layers.0.*": "slerp",
            "model.layers.*": "ties",
            "default": "linear",
        }
    )
    assert schema.rule_for("model.layers.0.mlp.weight").strategy == "slerp"
    assert schema.rule_for("model.layers.3.mlp.weight").strategy == "ties"
    assert schema.rule_for("lm_head.weight").strategy == "linear"


def test_layer_range_matches_only_layers_inside_it() -> None:
    schema = ModelMergeSchema({"model.layers.0-15.*": "slerp"}, default="ties")
    assert schema.rule_for("model.layers.0.self_attn.q_proj.weight").strategy == "slerp"
    assert schema.rule_for("model.layers.15.mlp.up_proj.weight").strategy == "slerp"
    assert schema.rule_for("model.layers.16.mlp.up_proj.weight").strategy == "ties"
    assert schema.rule_for("model.layers.100.mlp.up_proj.weight").strategy == "ties"
    assert schema.rule_for("model.embed_tokens.weight").strategy == "ties"


def test_regex_rules_search_the_name() -> None:
    schema = ModelMergeSchema({"re:(q|k)_proj": "slerp"}, default="linear")
    assert schema.rule_for("model.layers.1.self_attn.q_proj.weight").strategy == "slerp"
    assert schema.rule_for("model.layers.1.self_attn.v_proj.weight").strategy == "linear"
    anchored = ModelMergeSchema({"re:^lm_head": "ties"})
    assert anchored.rule_for("model.lm_head.weight").strategy == "linear"


def test_glob_star_spans_dots_and_question_mark_one_character() -> None:
    rule = Rule("model.*.weight", "ties")
    assert rule.matches("model.layers.3.mlp.weight")
    assert not rule.matches("model.layers.3.mlp.bias")
    assert Rule("h.?.attn", "ties").matches("h.7.attn")
    assert not Rule("h.?.attn", "ties").matches("h.17.attn")


def test_rule_params_and_default_params_are_kept() -> None:
    schema = ModelMergeSchema(
        {"re:mlp": {"strategy": "ties", "params": {"density": 0.3}}},
        default="linear",
        params={"normalize": False},
    )
    assert dict(schema.rule_for("x.mlp.weight").params) == {"density": 0.3}
    assert dict(schema.default.params) == {"normalize": False}
    assert schema.strategies() == ["linear", "ties"]


@pytest.mark.parametrize(
    "spec",
    [
        {"re:(unclosed": "ties"},
        {"model.layers.9-3.*": "ties"},
        {"x": {"strategy": "ties", "colour": 1}},
        {"x": 42},
        {"x": {"params": {}}},
    ],
)
def test_bad_rules_raise_config_error_naming_the_pattern(spec: dict) -> None:
    with pytest.raises(ConfigError) as err:
        ModelMergeSchema(spec)
    assert "x" in str(err.value) or "9-3" in str(err.value) or "unclosed" in str(err.value)


def test_gradient_values_interpolate_over_layer_position() -> None:
    assert resolve_value([0.0, 1.0], "n", 0.25, "t") == pytest.approx(0.25)
    assert resolve_value([0.0, 0.5, 1.0], "n", 1.0, "t") == pytest.approx(1.0)
    assert resolve_value([0.0, 0.5, 0.3, 0.7, 1.0], "n", 0.5, "t") == pytest.approx(0.3)
    assert resolve_value(0.7, "n", 0.1, "t") == 0.7


def test_conditional_values_take_the_first_matching_filter() -> None:
    value = [
        {"filter": "self_attn", "value": [0.0, 1.0]},
        {"filter": "mlp", "value": 0.2},
        {"value": 0.5},
    ]
    assert resolve_value(value, "model.layers.3.self_attn.q_proj.weight", 1.0, "t") == 1.0
    assert resolve_value(value, "model.layers.3.mlp.up_proj.weight", 1.0, "t") == 0.2
    assert resolve_value(value, "model.norm.weight", 1.0, "t") == 0.5
    with pytest.raises(ConfigError):
        resolve_value([{"filter": "mlp", "value": 1}], "x", 0.0, "t")


def test_layer_position_spans_zero_to_one_with_embeddings_first() -> None:
    names = [f"model.layers.{i}.mlp.weight" for i in range(5)] + ["model.embed_tokens.weight"]
    assert count_layers(names) == 5
    assert layer_position("model.layers.0.mlp.weight", 5) == 0.0
    assert layer_position("model.layers.2.mlp.weight", 5) == 0.5
    assert layer_position("model.layers.4.mlp.weight", 5) == 1.0
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert layer_position("lm_head.weight", 5) == 1.0
    assert resolve_params({"t": [0, 1], "x": 2}, "model.layers.2.a", 0.5, "w") == {"t": 0.5, "x": 2}
