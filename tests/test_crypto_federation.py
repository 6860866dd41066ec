"""`federation init` / `add-node` produce a directory that loads and verifies."""

from __future__ import annotations

import argparse
import json
import re
import stat
from pathlib import Path

import pytest

from crdtd.crypto import federation
from crdtd.crypto.cli import add_commands
from crdtd.crypto.keys import NodeKey
from crdtd.crypto.node_config import SCHEMA, load_node_config
from crdtd.crypto.schemes import HYBRID
from crdtd.crypto.x509 import key_id_from_cert, load_certificate, verify_issued_by
from crdtd.errors import ConfigError
from crdtd.state.entry import Entry, Kind

DOCS = Path(__file__).resolve().parents[1] / "docs" / "identity.md"


def run_cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args), ""


def test_init_then_add_nodes_gives_loadable_configs(tmp_path: Path) -> None:
    fed = federation.init(tmp_path / "f")
    a = federation.add_node(tmp_path / "f", "a")
    b = federation.add_node(tmp_path / "f", "b", peer_port=47001)
    loaded = load_node_config(tmp_path / "f" / "b.toml")
    assert loaded == b
    assert b.peer_port == 47001 and b.bootstrap == (a.advertise,) and a.bootstrap == ()
    assert b.federation == a.federation == fed.settings
    assert (
        len({a.peer_port, a.client_port, a.metrics_port, b.client_port, b.metrics_port, 47001}) == 6
    )
    assert b.data_dir == (tmp_path / "f" / "b-data").resolve() and b.data_dir.is_dir()
    for secret in (b.key, b.tls_key, tmp_path / "f" / "admin.key", tmp_path / "f" / "ca.key"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert [n.name for n in fed.nodes()] == ["a", "b"]


def test_membership_entry_verifies_under_the_admin_key(tmp_path: Path) -> None:
    fed = federation.init(tmp_path / "f")
    a = federation.add_node(tmp_path / "f", "a")
    b = federation.add_node(tmp_path / "f", "b")
    ma, mb = (Entry.from_bytes(c.membership_bytes()) for c in (a, b))
    for m, cfg in ((ma, a), (mb, b)):
        assert m.kind is Kind.MEMBERSHIP and m.author == fed.admin.key_id
        m.verify_signatures(cfg.federation.admin, cfg.federation.policy)
        assert m.member == cfg.load_key().key_id and m.name == cfg.name
    assert (ma.seq, ma.prev, mb.seq, mb.prev) == (1, None, 2, ma.id)
    assert fed.chain_head() == (2, mb.id)
    assert [e.id for e in fed.admin_entries()] == [ma.id, mb.id]


def test_node_certificate_names_the_node_key_and_chains_to_ca(tmp_path: Path) -> None:
    federation.init(tmp_path / "f", federation_id="hospitals")
    cfg = federation.add_node(tmp_path / "f", "site-1", host="10.0.0.5")
    cert = load_certificate(cfg.tls_cert)
    verify_issued_by(cert, load_certificate(cfg.tls_ca_cert))
    assert key_id_from_cert(cert) == cfg.load_key().key_id
    assert cfg.federation.id == "hospitals" and cfg.advertise.startswith("10.0.0.5:")


def test_pq_federation_requires_hybrid_signatures_everywhere(tmp_path: Path) -> None:
    fed = federation.init(tmp_path / "f", pq=True)
    cfg = federation.add_node(tmp_path / "f", "a")
    assert fed.policy == HYBRID == cfg.federation.policy
    key = cfg.load_key()
    assert key.has_pq and fed.admin.ml_dsa_65 is not None
    member = Entry.from_bytes(cfg.membership_bytes())
    member.verify_signatures(fed.admin, HYBRID)
    assert member.as_membership().public_keys == key.public_keys


def test_duplicate_node_or_port_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    federation.init(tmp_path / "f")
    a = federation.add_node(tmp_path / "f", "a")
    before = sorted(p.name for p in (tmp_path / "f").iterdir())
    with pytest.raises(ConfigError, match="already exists"):
        federation.add_node(tmp_path / "f", "a")
    with pytest.raises(ConfigError, match="already used"):
        federation.add_node(tmp_path / "f", "b", peer_port=a.client_port)
    with pytest.raises(ConfigError, match="node name"):
        federation.add_node(tmp_path / "f", "Bad Name")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == before
    with pytest.raises(ConfigError, match="already holds a federation"):
        federation.init(tmp_path / "f")


def test_unknown_config_key_is_rejected_with_file_and_line(tmp_path: Path) -> None:
    federation.init(tmp_path / "f")
    cfg = federation.add_node(tmp_path / "f", "a")
    text = cfg.path.read_text().replace("fanout = 3", "fanout = 3\nfan_out = 4")
    cfg.path.write_text(text)
    line = text.splitlines().index("fan_out = 4") + 1
    with pytest.raises(ConfigError, match=rf"a\.toml:{line}: \[gossip\] fan_out: unknown key"):
        load_node_config(cfg.path)


def test_config_type_errors_and_env_overrides(tmp_path: Path) -> None:
    federation.init(tmp_path / "f")
    cfg = federation.add_node(tmp_path / "f", "a")
    over = load_node_config(cfg.path, env={"CRDTD_PEER_PORT": "45555", "CRDTD_GOSSIP_FANOUT": "5"})
    assert over.peer_port == 45555 and over.gossip.fanout == 5
    with pytest.raises(ConfigError, match="CRDTD_PEER_PORT"):
        load_node_config(cfg.path, env={"CRDTD_PEER_PORT": "many"})
    cfg.path.write_text(cfg.path.read_text().replace('host = "127.0.0.1"', "host = 7", 1))
    with pytest.raises(ConfigError, match=r"\[peer\] host: expected a string"):
        load_node_config(cfg.path)


def test_cli_creates_a_federation_and_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path / "f")
    assert run_cli("federation", "init", "--dir", d, "--id", "demo", "--json")[0] == 0
    init = json.loads(capsys.readouterr().out)
    assert init["federation_id"] == "demo" and init["signatures"] == "ed25519"
    assert (
        run_cli("federation", "add-node", "a", "--dir", d, "--peer-port", "46001", "--json")[0] == 0
    )
    added = json.loads(capsys.readouterr().out)
    assert added["peer"] == "127.0.0.1:46001" and Path(added["config"]).is_file()
    key_path = tmp_path / "extra.key"
    assert run_cli("keygen", "--out", str(key_path), "--json")[0] == 0
    keyed = json.loads(capsys.readouterr().out)
    assert keyed["key_id"] == NodeKey.load(key_path).key_id.hex()
    assert run_cli("tls", "--dir", d, "--name", "extra", "--key", str(key_path), "--json")[0] == 0
    issued = json.loads(capsys.readouterr().out)
    assert key_id_from_cert(Path(issued["cert"]).read_bytes()).hex() == keyed["key_id"]


def test_identity_guide_documents_every_config_key() -> None:
    text = DOCS.read_text()
    for section, fields in SCHEMA.items():
        assert f"[{section}]" in text, section
        for key in fields:
            assert re.search(rf"`{re.escape(key)}`", text), f"[{section}] {key} undocumented"
