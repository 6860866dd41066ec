"""The node verbs (`push`, `ls`, `status`, `materialise`, `erase`, `trust`, `config check`)
against a real in-process node, as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crdtd.cli import main
from tests.node_support import NAMESPACE, InProcessNode, checkpoint, federation


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    (config,) = federation(tmp_path_factory.mktemp("cli"), 1)
    n = InProcessNode(config)
    yield n
    n.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_push_ls_materialise_erase_round_trip(
    node: InProcessNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(node.config)
    path = checkpoint(tmp_path / "site.safetensors", 2.0)
    code, out, _ = run(
        capsys,
        "push",
        NAMESPACE,
        str(path),
        "--meta",
        "num_examples=12",
        "--meta",
        "site=a",
        "--config",
        cfg,
        "--json",
    )
    assert code == 0
    pushed = json.loads(out)
    assert len(pushed["entry_id"]) == 64 and pushed["already_present"] is False

    code, out, _ = run(capsys, "ls", NAMESPACE, "--config", cfg, "--json")
    listed = {e["id"]: e for e in json.loads(out)}
    assert listed[pushed["entry_id"]]["metadata"] == {"num_examples": 12, "site": "a"}
    code, out, _ = run(capsys, "ls", NAMESPACE, "--config", cfg)
    assert pushed["entry_id"][:16] in out and "num_examples=12" in out

    merged = tmp_path / "merged.safetensors"
    code, out, _ = run(
        capsys, "materialise", NAMESPACE, "--out", str(merged), "--config", cfg, "--json"
    )
    result = json.loads(out)
    assert code == 0 and merged.is_file() and result["local_path"] == str(merged)
    assert pushed["entry_id"] in result["inputs"] and len(result["output_sha256"]) == 64

    code, out, _ = run(capsys, "erase", pushed["entry_id"], "--config", cfg)
    assert code == 0 and "1 entry erased here" in out
    code, out, _ = run(capsys, "ls", NAMESPACE, "--all", "--config", cfg)
    assert "[erased]" in out


def test_status_and_trust_print_for_people_and_machines(
    node: InProcessNode, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(node.config)
    code, out, _ = run(capsys, "status", "--config", cfg, "--json")
    status = json.loads(out)
    assert code == 0 and status["node_name"] == "site-a" and len(status["state_root"]) == 64
    code, out, _ = run(capsys, "status", "--config", cfg)
    assert "state root" in out and status["state_root"] in out
    (entries,) = [line for line in out.splitlines() if line.strip().startswith("entries")]
    kinds, states = entries.split(";")  # what the entries are; then live, visible, erased...
    assert "membership" in kinds and "live" not in kinds and "live" in states
    assert "sync        converged (0 live peers, all in sync)" in out
    code, out, _ = run(capsys, "trust", "--config", cfg)
    assert code == 0 and "site-a" in out and "threshold 0.500" in out


def test_client_errors_exit_1_with_the_status_and_message(
    node: InProcessNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys,
        "push",
        "model/unknown",
        str(checkpoint(tmp_path / "x.safetensors", 1.0)),
        "--config",
        str(node.config),
    )
    assert code == 1 and "NOT_FOUND" in err and "'model/unknown' is not declared" in err
    code, _, err = run(capsys, "status", "--node", node.address)
    assert code == 1 and "UNAUTHENTICATED" in err
    token = node.daemon.config.token_file
    code, out, _ = run(
        capsys, "status", "--node", node.address, "--token-file", str(token), "--json"
    )
    assert code == 0 and json.loads(out)["node_name"] == "site-a"


def test_config_check_reports_ok_or_the_bad_key(
    node: InProcessNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "config", "check", str(node.config))
    assert code == 0 and ": ok" in out and NAMESPACE in out
    bad = node.config.with_name("bad.toml")
    bad.write_text(node.config.read_text() + '\n[log]\nformat = "yaml"\n')
    code, _, err = run(capsys, "config", "check", str(bad))
    assert code == 2 and str(bad) in err and "[log] format" in err


def test_config_check_opens_the_key_membership_and_certificate_that_start_needs(
    node: InProcessNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = node.config.read_text()
    fed_dir = node.config.parent
    other = tmp_path / "other.key"
    assert run(capsys, "keygen", "--out", str(other))[0] == 0
    assert (
        run(
            capsys,
            "tls",
            "--dir",
            str(fed_dir),
            "--name",
            "other",
            "--key",
            str(other),
            "--out-dir",
            str(tmp_path),
        )[0]
        == 0
    )
    cases = {
        "key file not found": text.replace('key = "site-a.key"', f'key = "{tmp_path / "x.key"}"'),
        "is not the membership entry of key": text.replace(
            'key = "site-a.key"', f'key = "{other}"'
        ),
        "names key": text.replace(
            'cert = "site-a.tls.pem"', f'cert = "{tmp_path / "other.tls.pem"}"'
        ),
    }
    for why, variant in cases.items():
        assert variant != text, why
        bad = fed_dir / "variant.toml"
        bad.write_text(variant)
        code, _, err = run(capsys, "config", "check", str(bad))
        assert code == 2 and why in err, (why, err)
    code, out, _ = run(capsys, "config", "check", str(node.config))
    assert code == 0 and "key, membership and TLS certificate match" in out
