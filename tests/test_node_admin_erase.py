"""`crdtd erase --admin-dir` on a node that has not met every member: the admin's removal
continues a chain whose earlier entries (other nodes' memberships) the node may not hold,
so the CLI sends the chain first and the erasure takes effect at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crdtd.cli import main
from crdtd.errors import NotFoundError
from crdtd.state.entry import Entry
from tests.node_support import InProcessNode, federation


def test_an_admin_erasure_works_on_a_node_that_never_met_the_other_members(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = federation(tmp_path, 3, namespaces={"records/x": {"payload_kind": "bytes"}})
    node = InProcessNode(configs[0])  # the other two members never start
    try:
        payload = tmp_path / "rows.bin"
        payload.write_bytes(b"patient 17, admitted")
        cfg = ["--config", str(configs[0]), "--json"]
        assert main(["push", "records/x", str(payload), *cfg]) == 0
        entry_id = json.loads(capsys.readouterr().out)["entry_id"]

        argv = ["erase", entry_id, "--admin-dir", str(tmp_path / "fed"), "--reason", "consent"]
        assert main([*argv, *cfg]) == 0
        assert json.loads(capsys.readouterr().out)["erased"] == 1
        with node.client(timeout=10) as c, pytest.raises(NotFoundError, match="was erased"):
            c.get(bytes.fromhex(entry_id))
    finally:
        node.stop()


def test_a_push_by_an_author_erased_with_author_says_it_is_erased_on_arrival(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = federation(tmp_path, 2, namespaces={"records/x": {"payload_kind": "bytes"}})
    fed_dir = tmp_path / "fed"
    node = InProcessNode(configs[0])
    try:
        payload = tmp_path / "rows.bin"
        payload.write_bytes(b"patient 18, admitted")
        cfg = ["--config", str(configs[0])]
        as_b = ["--key", str(fed_dir / "site-b.key")]
        with node.client(timeout=10) as c:  # site-b never starts: its membership comes here
            c.submit(Entry.from_bytes((fed_dir / "site-b.membership").read_bytes()))
        assert main(["push", "records/x", str(payload), *as_b, *cfg, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["erased"] is False
        argv = ["erase", "--author", "site-b", "--admin-dir", str(fed_dir), *cfg]
        assert main(argv) == 0
        capsys.readouterr()

        payload.write_bytes(b"patient 19, admitted")  # a later push of the erased author
        assert main(["push", "records/x", str(payload), *as_b, *cfg]) == 0
        out = capsys.readouterr().out
        assert "erased on arrival" in out
        assert main(["ls", "records/x", *cfg]) == 0
        assert "site-b" not in capsys.readouterr().out
    finally:
        node.stop()
