"""What a new user runs into with the CLI, on two real in-process nodes that sync: every
mistake gets one line naming what was wrong (no traceback, no INTERNAL), the short ids
`crdtd ls` prints work where ids are asked for, and a watcher sees erasures made elsewhere."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from crdtd.cli import main
from crdtd.client import Client
from crdtd.errors import CrdtdError
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from tests.node_support import REPO, InProcessNode, checkpoint, crdtd_command, federation, wait_for

NAMESPACES = {
    "model/mlp": {"strategy": "fedavg"},
    "records/visits": {"kind": "table", "key": "visit"},
    "agents/notes": {"kind": "memory"},
}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> list[InProcessNode]:
    configs = federation(tmp_path_factory.mktemp("user-paths"), 2, namespaces=NAMESPACES)
    started = [InProcessNode(c) for c in configs]
    yield started
    for n in started:
        n.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, verb: str) -> str:
    """The CLI's error line, checked to be one `crdtd VERB: error: ...` line, no traceback."""
    assert "Traceback" not in err and err.startswith(f"crdtd {verb}: error: "), err
    return err


def test_a_sql_syntax_error_is_the_callers_mistake_not_an_internal_error(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str]
) -> None:
    with nodes[0].client() as c, pytest.raises(CrdtdError) as caught:
        c.sql("SELEC 1")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "syntax error" in str(caught.value)
    code, _, err = run(
        capsys, "sql", "SELEC ward FROM records_visits", "--config", str(nodes[0].config)
    )
    assert code == 1 and "syntax error" in one_line_error(err, "sql")


def test_pushing_a_missing_file_or_a_directory_names_the_path(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(nodes[0].config)
    missing = tmp_path / "site-a.safetensors"
    code, _, err = run(capsys, "push", "model/mlp", str(missing), "--config", cfg)
    assert code == 1 and f"{missing}: no such file" in one_line_error(err, "push")
    code, _, err = run(capsys, "push", "model/mlp", str(tmp_path), "--config", cfg)
    assert code == 1 and "not a regular file" in one_line_error(err, "push")


def test_materialise_into_a_missing_directory_names_it_and_a_refused_one_leaves_no_part_file(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(nodes[0].config)
    out = tmp_path / "no" / "such" / "merged.safetensors"
    code, _, err = run(capsys, "materialise", "model/mlp", "--out", str(out), "--config", cfg)
    assert code == 1 and f"directory {out.parent} does not exist" in one_line_error(
        err, "materialise"
    )
    refused = tmp_path / "merged.safetensors"
    code, _, err = run(
        capsys,
        "materialise",
        "model/mlp",
        "--out",
        str(refused),
        "--strategy",
        "tiez",
        "--config",
        cfg,
    )
    assert code == 1 and "unknown strategy" in one_line_error(err, "materialise")
    assert list(tmp_path.iterdir()) == []  # no .merged.safetensors.part left behind


def test_an_embedding_file_that_is_not_there_is_named(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "query.json"
    code, _, err = run(
        capsys,
        "recall",
        "agents/notes",
        "--embedding",
        f"@{missing}",
        "--config",
        str(nodes[0].config),
    )
    assert code == 1 and str(missing) in one_line_error(err, "recall")


def test_a_query_after_the_options_is_still_the_query(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(nodes[0].config)
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"id": "n1", "text": "ward b is short of saline", "author": "nurse"}\n')
    assert run(capsys, "push", "agents/notes", str(notes), "--config", cfg)[0] == 0
    code, out, err = run(capsys, "recall", "agents/notes", "-k", "1", "saline", "--config", cfg)
    assert code == 0 and "short of saline" in out, err


def test_erase_and_ls_take_the_short_ids_and_names_that_ls_prints(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(nodes[0].config)
    visits = tmp_path / "visits.csv"
    visits.write_text("visit,ward\nv-short-id,a\n")
    code, out, _ = run(capsys, "push", "records/visits", str(visits), "--config", cfg, "--json")
    entry = json.loads(out)["entry_id"]
    code, out, _ = run(capsys, "ls", "--author", "site-a", "--config", cfg)
    assert code == 0 and entry[:16] in out
    code, out, err = run(capsys, "ls", "--author", "site-z", "--config", cfg)
    assert code == 1 and "no member has that name" in one_line_error(err, "ls")
    assert "site-a" in err and "site-b" in err
    code, out, err = run(capsys, "erase", entry[:16], "--config", cfg)
    assert code == 0 and "1 entry erased here" in out, err
    code, out, _ = run(capsys, "ls", "records/visits", "--all", "--config", cfg)
    assert f"{entry[:16]}" in out and "[erased]" in out
    code, _, err = run(capsys, "erase", "1", "--config", cfg)
    assert code == 1 and "first 4 or more" in one_line_error(err, "erase")


def test_admin_entries_are_listed_as_the_admin(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ls", "--config", str(nodes[0].config), "--json")
    memberships = [e for e in json.loads(out) if e["kind"] == "membership"]
    assert code == 0
    assert memberships and {e["author_name"] for e in memberships} == {"admin"}


def test_a_watcher_of_a_namespace_sees_an_erasure_made_on_another_node(
    nodes: list[InProcessNode], tmp_path: Path
) -> None:
    a, b = nodes
    with a.client() as c:
        pushed = c.push("model/mlp", checkpoint(tmp_path / "w.safetensors", 3.0))
    wait_for(lambda: b.core.state.store.entry_status(pushed.entry_id) is not None, 60, "sync")
    events: list[pb.Event] = []
    ready = threading.Event()

    def watch() -> None:
        with b.client() as w:
            stream = w.watch("model/mlp")
            ready.set()
            for ev in stream:
                events.append(ev)
                if ev.kind == "entry_erased":
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(10)
    time.sleep(0.5)  # the stream is open once the server has the call
    with a.client() as c:
        c.erase([pushed.entry_id])
    t.join(60)
    erased = [e for e in events if e.kind == "entry_erased"]
    assert [e.entry_id for e in erased] == [pushed.entry_id]
    assert erased[0].namespace == "model/mlp" and erased[0].entry_kind == "contribution"


def test_a_node_that_is_not_running_is_named_with_what_to_check() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", timeout=10) as c, pytest.raises(CrdtdError) as caught:
        c.status()
    assert f"no node answers at 127.0.0.1:{port}" in str(caught.value)
    assert "is the node running" in str(caught.value)


def test_output_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("id\n" + "\n".join(str(i) for i in range(100)) + "\n")
    query = f"SELECT * FROM merge('{rows}', key => 'id')"
    proc = subprocess.Popen(
        [*crdtd_command(), "sql", query, "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader (head) left before the rows came
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_sql_json_prints_one_document_with_the_rows_and_input_sets(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(nodes[0].config)
    visits = tmp_path / "visits.csv"
    visits.write_text("visit,ward\nv-json,c\n")
    assert run(capsys, "push", "records/visits", str(visits), "--config", cfg)[0] == 0
    query = "SELECT visit, ward FROM records_visits WHERE visit = 'v-json'"
    code, out, err = run(capsys, "sql", query, "--config", cfg, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rows"] == [{"visit": "v-json", "ward": "c"}]
    assert list(doc["input_set_digests"]) == ["records/visits"]


def test_every_verb_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    from crdtd.cli import build_parser

    def verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append((*prefix, name))
                    out += verbs(sub, (*prefix, name))
        return out

    found = verbs(build_parser(), ())
    assert ("federation", "revoke") in found and ("sql",) in found
    for argv in found:
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0
        description = text.split("\n\n")[1]
        assert not description.startswith(("positional", "options")), (argv, text)


def test_an_error_line_names_the_whole_verb(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fed_dir = tmp_path / "fed"
    assert main(["federation", "init", "--dir", str(fed_dir)]) == 0
    assert main(["federation", "add-node", "site-a", "--dir", str(fed_dir)]) == 0
    capsys.readouterr()
    assert main(["federation", "add-node", "site-a", "--dir", str(fed_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("crdtd federation add-node: error: ") and "already exists" in err


def test_erasing_what_this_node_did_not_sign_says_how_to_sign_it(
    nodes: list[InProcessNode], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b = nodes
    wait_for(b.core.is_member, 60, "site-b's membership (it follows site-a's)")
    with b.client() as c:
        pushed = c.push("model/mlp", checkpoint(tmp_path / "b.safetensors", 5.0))
    wait_for(lambda: a.core.state.store.entry_status(pushed.entry_id) is not None, 60, "sync")
    cfg = str(a.config)
    code, _, err = run(capsys, "erase", pushed.entry_id.hex()[:16], "--config", cfg)
    assert code == 1 and "--admin-dir FED_DIR" in one_line_error(err, "erase")
    assert "--key MEMBER.key" in err
    code, _, err = run(capsys, "erase", "--author", "site-b", "--config", cfg)
    assert code == 1 and "--admin-dir FED_DIR" in one_line_error(err, "erase")
    assert "admin.key" not in err  # signing with the admin key outside its chain would fork it


def test_a_node_started_before_the_nodes_added_earlier_says_why_it_cannot_take_pushes_yet(
    tmp_path: Path,
) -> None:
    cfg_a, cfg_b = federation(tmp_path, 2, namespaces=NAMESPACES)
    b = InProcessNode(cfg_b)  # site-b's membership follows site-a's in the admin's chain
    a = None
    try:
        assert not b.core.is_member()
        with b.client() as c, pytest.raises(CrdtdError) as caught:
            c.push("model/mlp", checkpoint(tmp_path / "early.safetensors", 1.0))
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "this node's own membership entry is not in its state yet" in str(caught.value)
        assert "bootstrap" in str(caught.value)
        a = InProcessNode(cfg_a)
        wait_for(b.core.is_member, 60, "site-b's membership to apply after a sync")
        with b.client() as c:
            c.push("model/mlp", tmp_path / "early.safetensors")
    finally:
        for n in (b, a):
            if n is not None:
                n.stop()
