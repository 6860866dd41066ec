"""The daemon's config loader: every mistake is named with its file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtd import kinds
from crdtd.crypto.node_config import SCHEMA as IDENTITY_SCHEMA
from crdtd.errors import ConfigError
from crdtd.node.config import (
    DAEMON_SCHEMA,
    load_daemon_config,
    namespace_schema,
    parse_size,
    read_token,
    render_daemon_sections,
)
from tests.node_support import federation

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,) = federation(tmp_path_factory.mktemp("cfg"), 1, namespaces={}, limits=None)
    return path


def with_text(base: Path, tmp_path: Path, extra: str) -> Path:
    """A copy of the node config (same directory, so relative paths still resolve)."""
    path = base.with_name(f"variant-{tmp_path.name}.toml")
    path.write_text(base.read_text() + "\n" + extra)
    return path


def test_defaults_apply_when_the_daemon_sections_are_absent(base_config: Path) -> None:
    cfg = load_daemon_config(base_config, env={})
    assert cfg.log_format == "text" and cfg.auth_mode == "token" and not cfg.client_tls
    assert cfg.token_file == cfg.node.data_dir / "client.token"
    assert cfg.namespace("anything/at-all") is not None  # none declared: any accepted


def test_declared_namespaces_carry_strategy_params_and_threshold(
    base_config: Path, tmp_path: Path
) -> None:
    path = with_text(
        base_config,
        tmp_path,
        '[namespaces."model/mlp"]\nstrategy = "ties"\nparams = { density = 0.3 }\n'
        "trust_threshold = 0.8\nexample_weighted = true\n",
    )
    cfg = load_daemon_config(path, env={})
    ns = cfg.namespace("model/mlp")
    assert ns is not None and ns.strategy == "ties" and dict(ns.params) == {"density": 0.3}
    assert ns.trust_threshold == pytest.approx(0.8) and ns.policy.example_weighted
    assert cfg.namespace("model/other") is None


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[limits]\nmax_payloadd = 5\n", "[limits] max_payloadd: unknown key"),
        ('[limits]\nmax_payload = "lots"\n', "[limits] max_payload: 'lots' is not a size"),
        ('[log]\nformat = "yaml"\n', "[log] format: 'yaml' is not one of text, json"),
        ('[auth]\nmode = "kerberos"\n', "[auth] mode: 'kerberos' is not one of"),
        ('[namespaces."m/x"]\nstrategy = "tiez"\n', "unknown strategy 'tiez'"),
        ('[namespaces."m/x"]\nstrategy = "ties"\nparams = { density = "a lot" }\n', "'density'"),
        ('[namespaces."m/x"]\nstrategy = "linear"\nparams = { colour = 1 }\n', "unknown parameter"),
        ('[namespaces."m/x"]\nwhatever = 1\n', 'namespaces."m/x"] whatever: unknown key'),
        ('[namespaces."m/x"]\nkind = "graph"\n', "unknown namespace kind 'graph'"),
        ('[namespaces."m/x"]\ntrust_threshold = 1.5\n', "must be in [0, 1]"),
        ('[namespaces."m/x"]\nbase = "abc"\n', "expected a 64-hex entry id"),
        ('[namespaces."m/x"]\ndtype = "float7"\n', "dtype"),
        ('[trust.namespace."m/x"]\nthreshold = 0.2\n', "put trust_threshold"),
        ("[trust]\nbudget = -1\n", "budget"),
        ("[surprise]\nx = 1\n", "unknown section [surprise]"),
    ],
)
def test_a_bad_key_is_named_with_its_file(
    base_config: Path, tmp_path: Path, extra: str, words: str
) -> None:
    path = with_text(base_config, tmp_path, extra)
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(path, env={})
    assert str(path) in str(exc.value)
    assert words in str(exc.value)


def test_an_unknown_key_error_names_its_line(base_config: Path, tmp_path: Path) -> None:
    path = with_text(base_config, tmp_path, "[limits]\nmax_payload = 10\nbogus = true\n")
    line = path.read_text().splitlines().index("bogus = true") + 1
    with pytest.raises(ConfigError, match=rf":{line}: \[limits\] bogus: unknown key"):
        load_daemon_config(path, env={})


def test_an_unknown_section_is_named_with_its_line_and_every_section_a_daemon_takes(
    base_config: Path, tmp_path: Path
) -> None:
    path = with_text(base_config, tmp_path, "[limitz]\nmax_payload = 10\n")
    line = path.read_text().splitlines().index("[limitz]") + 1
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(path, env={})
    assert f":{line}: unknown section [limitz]" in str(exc.value)
    assert "limits" in str(exc.value) and "namespaces" in str(exc.value)


def test_a_missing_required_key_points_at_its_section(base_config: Path, tmp_path: Path) -> None:
    path = with_text(base_config, tmp_path, '[namespaces."t/x"]\nkind = "table"\n')
    line = path.read_text().splitlines().index('[namespaces."t/x"]') + 1
    with pytest.raises(ConfigError, match=rf':{line}: \[namespaces."t/x"\] key: a table'):
        load_daemon_config(path, env={})


def test_environment_overrides_the_file(base_config: Path, tmp_path: Path) -> None:
    path = with_text(base_config, tmp_path, '[limits]\nmax_payload = "1MiB"\n')
    env = {"CRDTD_LIMITS_MAX_PAYLOAD": "2MiB", "CRDTD_LOG_FORMAT": "json"}
    cfg = load_daemon_config(path, env=env)
    assert cfg.max_payload == 2 << 20 and cfg.log_format == "json"
    with pytest.raises(ConfigError, match="environment CRDTD_AUTH_MODE"):
        load_daemon_config(path, env={"CRDTD_AUTH_MODE": "open-sesame"})


def test_no_auth_or_plain_token_off_loopback_is_refused(base_config: Path, tmp_path: Path) -> None:
    text = base_config.read_text().replace(
        '[client]\nhost = "127.0.0.1"', '[client]\nhost = "0.0.0.0"'
    )
    path = base_config.with_name(f"open-{tmp_path.name}.toml")
    path.write_text(text + '\n[auth]\nmode = "none"\n')
    with pytest.raises(ConfigError, match="'none' needs a loopback"):
        load_daemon_config(path, env={})
    path.write_text(text)
    with pytest.raises(ConfigError, match="needs tls = true"):
        load_daemon_config(path, env={})
    path.write_text(text + "\n[auth]\ntls = true\n")
    assert load_daemon_config(path, env={}).client_tls


def test_rendered_sections_load_back(base_config: Path, tmp_path: Path) -> None:
    text = render_daemon_sections(
        {"model/a": {"strategy": "ties", "params": {"density": 0.5, "lambda": 1.0}}},
        log={"format": "json", "level": "debug"},
        limits={"max_payload": "3MiB", "max_concurrent_pushes": 2},
        trust={"auto_revoke_equivocation": True, "default": {"threshold": 0.25}},
    )
    cfg = load_daemon_config(with_text(base_config, tmp_path, text), env={})
    assert cfg.log_level == "debug" and cfg.max_payload == 3 << 20
    assert cfg.max_concurrent_pushes == 2 and cfg.trust.auto_revoke_equivocation
    assert cfg.namespace("model/a").params == {"density": 0.5, "lambda": 1.0}  # type: ignore[union-attr]
    assert cfg.trust.default.threshold == 250_000
    assert cfg.trust.admins == {cfg.node.federation.admin.key_id}


@pytest.mark.parametrize(
    ("text", "value"),
    [("1GiB", 1 << 30), ("512MiB", 512 << 20), ("64kB", 64_000), ("100", 100), (7, 7)],
)
def test_sizes_parse(text: str | int, value: int) -> None:
    assert parse_size(text) == value


def test_token_files_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "client.token"
    path.write_text("secret\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_token(path)
    path.chmod(0o600)
    assert read_token(path) == "secret"


def test_hospital_example_loads_and_comments_every_key() -> None:
    path = REPO / "node_config" / "hospital.toml"
    cfg = load_daemon_config(path, env={})
    assert cfg.node.name == "hospital-a" and cfg.namespaces
    lines = path.read_text().splitlines()
    for section, fields in {**IDENTITY_SCHEMA, **DAEMON_SCHEMA}.items():
        assert f"[{section}]" in lines, section
        for key in fields:
            assert any(line.startswith(f"{key} = ") for line in lines), f"[{section}] {key}"
    for kind in kinds.NAMES:
        for key in namespace_schema(kind):
            assert any(line.lstrip("# ").startswith(f"{key} = ") for line in lines), (kind, key)
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith(("#", "[")):
            assert lines[i - 1].startswith("#"), f"line {i + 1} has no comment: {line}"
