"""Corrupted node and daemon TOML configs (and environment overrides) against the real
loaders: every mistake is a ConfigError, never a traceback from inside the loader."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.crypto.node_config import SCHEMA, load_node_config
from crdtd.errors import ConfigError
from crdtd.node.config import DAEMON_SCHEMA, load_daemon_config
from tests.mutations import NASTY_TOML, QUICK_AND_DEEP, toml_mutations
from tests.node_support import federation

FUZZ = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
NAMESPACES = {
    "model/mlp": {"strategy": "ties", "params": {"density": 0.3}, "trust_threshold": 0.5},
    "blobs/x": {"payload_kind": "bytes"},
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = federation(tmp_path_factory.mktemp("fuzzcfg"), 1, namespaces=NAMESPACES)
    load_daemon_config(path, env={})  # the starting point is valid
    return path


_counter = itertools.count()


def _variant(config: Path, text: str) -> Path:
    """The mutated text beside the original, so relative paths resolve the same way."""
    path = config.with_name(f"fuzz-{next(_counter)}.toml")
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    return path


def _load_both(path: Path, env: dict[str, str]) -> None:
    for load in (load_node_config, load_daemon_config):
        with contextlib.suppress(ConfigError):
            load(path, env=env)


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_config_files_raise_only_config_errors(config: Path, examples: int) -> None:
    valid = config.read_text()

    @settings(max_examples=examples, **FUZZ)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        text = valid
        for _ in range(data.draw(st.integers(1, 3))):
            text = data.draw(toml_mutations(text))
        path = _variant(config, text)
        try:
            _load_both(path, {})
        finally:
            path.unlink()

    check()


ENV_NAMES = sorted(
    {
        f"CRDTD_{section.upper()}_{key.upper()}"
        for section, fields in SCHEMA.items()
        for key in fields
    }
    | {
        f"CRDTD_{section.upper()}_{key.upper()}"
        for section, fields in DAEMON_SCHEMA.items()
        for key in fields
    }
)


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_hostile_environment_overrides_raise_only_config_errors(
    config: Path, examples: int
) -> None:
    values = st.one_of(
        st.sampled_from(NASTY_TOML),
        st.text(max_size=40),
        st.sampled_from(["", "0", "-1", "yes", "1e9", "9" * 30, "a,b,,c", "\x00", "127.0.0.1:0"]),
    )

    @settings(max_examples=examples, **FUZZ)
    @given(st.dictionaries(st.sampled_from(ENV_NAMES), values, min_size=1, max_size=4))
    def check(env: dict[str, str]) -> None:
        _load_both(config, env)

    check()


@pytest.mark.parametrize("depth", [600, 5000])
def test_a_config_value_nested_too_deep_is_a_config_error(config: Path, depth: int) -> None:
    path = _variant(config, config.read_text() + f"\n[surprise]\nx = {'[' * depth}{']' * depth}\n")
    with pytest.raises(ConfigError, match="nested too deep"):
        load_node_config(path, env={})
    with pytest.raises(ConfigError, match="nested too deep"):
        load_daemon_config(path, env={})


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_path_with_a_nul_character_is_a_config_error(config: Path, where: str) -> None:
    text, env = config.read_text(), {}
    if where == "file":
        text = text.replace('key = "site-a.key"', 'key = "site-a\\u0000.key"')
        assert "\\u0000" in text
    else:
        env = {"CRDTD_TLS_CA_CERT": "ca\x00.pem"}
    with pytest.raises(ConfigError, match="NUL"):
        load_daemon_config(_variant(config, text), env=env)
