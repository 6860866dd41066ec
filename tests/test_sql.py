"""SQL over merged table namespaces (a real node) and over files (`merge(...)`)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import polars as pl
import pytest

from crdtd import merge
from crdtd.cli import main
from crdtd.client import Client
from crdtd.errors import CrdtdError, SqlError
from crdtd.sql import run
from tests.node_support import InProcessNode, federation

NAMESPACES = {
    "records/admissions": {"kind": "table", "key": "id", "timestamp": "ts"},
    "records/wards": {"kind": "table", "key": "ward"},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    root = tmp_path_factory.mktemp("sql-node")
    (config,) = federation(root, 1, namespaces=NAMESPACES)
    n = InProcessNode(config)
    with n.client() as c:
        a = root / "a.csv"
        a.write_text("id,ts,ward\n1,1,cardio\n2,1,onco\n3,1,onco\n")
        b = root / "b.csv"
        b.write_text("id,ts,ward\n2,2,cardio\n4,1,neuro\n")
        w = root / "w.csv"
        w.write_text("ward,floor\ncardio,1\nonco,2\nneuro,3\n")
        c.push("records/admissions", a)
        c.push("records/admissions", b)
        c.push("records/wards", w)
    yield n
    n.stop()


@pytest.fixture()
def client(node: InProcessNode) -> Client:
    with node.client() as c:
        yield c


def test_sql_reads_each_namespace_as_its_merged_table(client: Client) -> None:
    r = client.sql(
        'SELECT ward, count(*) AS n FROM "records/admissions" GROUP BY ward ORDER BY ward'
    )
    assert r.table.to_pylist() == [
        {"ward": "cardio", "n": 2},
        {"ward": "neuro", "n": 1},
        {"ward": "onco", "n": 1},
    ]
    assert r.namespaces == ("records/admissions",)
    assert len(r.input_set_digests["records/admissions"]) == 64


def test_namespaces_join_by_their_plain_alias(client: Client) -> None:
    r = client.sql(
        "SELECT a.id, w.floor FROM records_admissions a JOIN records_wards w USING (ward) "
        "ORDER BY a.id"
    )
    assert r.table.to_pylist() == [
        {"id": 1, "floor": 1},
        {"id": 2, "floor": 1},
        {"id": 3, "floor": 2},
        {"id": 4, "floor": 3},
    ]
    assert r.namespaces == ("records/admissions", "records/wards")


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("SELECT * FROM nowhere", "table namespaces"),
        ("DELETE FROM records_wards", "Only SELECT statements"),
        ("SELECT 1; SELECT 2", "exactly one SELECT"),
        ("SELECT * FROM read_csv('/etc/hostname')", "disabled by configuration"),
        ("SELECT * FROM merge('a.parquet', key => 'id')", "merge(...) reads files"),
    ],
)
def test_a_query_the_node_will_not_run_gets_a_typed_error(
    client: Client, query: str, words: str
) -> None:
    with pytest.raises(CrdtdError) as exc:
        client.sql(query)
    assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert words in str(exc.value)
    assert client.status().node_name == "site-a"


def test_merge_table_function_merges_files_outside_any_node(tmp_path: Path) -> None:
    a = tmp_path / "a.parquet"
    b = tmp_path / "b.csv"
    pl.DataFrame({"id": [1, 2], "v": [10, 20]}).write_parquet(a)
    b.write_text("id,v,w\n2,5,x\n3,30,y\n")
    q = f"SELECT * FROM merge('{a}', '{b}', key => 'id') ORDER BY id"
    got = run(q, {}, files=True).table
    want = merge(pl.read_parquet(a), pl.read_csv(b), key="id")
    assert pl.from_arrow(got).equals(want)
    twice = f"SELECT count(*) AS n FROM merge('{a}', key => ['id']) x, merge('{b}', key => 'id') y"
    assert run(twice, {}, files=True).table.to_pylist() == [{"n": 4}]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        ("merge('{a}')", "needs key =>"),
        ("merge('{a}', key => 'id', colour => 'red')", "unknown option(s) ['colour']"),
        ("merge('{a}', key => 'nope')", "nope"),
        ("merge('{missing}', key => 'id')", "no such file"),
    ],
)
def test_a_bad_merge_call_is_named(tmp_path: Path, call: str, words: str) -> None:
    a = tmp_path / "a.parquet"
    pl.DataFrame({"id": [1]}).write_parquet(a)
    q = "SELECT * FROM " + call.format(a=a, missing=tmp_path / "missing.parquet")
    with pytest.raises(SqlError, match="merge") as exc:
        run(q, {}, files=True)
    assert words in str(exc.value)


def test_crdtd_sql_prints_json_lines_and_writes_parquet(
    node: InProcessNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(node.config)
    q = 'SELECT id, ward FROM "records/admissions" ORDER BY id'
    assert main(["sql", q, "--format", "jsonl", "--config", cfg]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == {"id": 2, "ward": "cardio"}
    out = tmp_path / "rows.parquet"
    assert main(["sql", q, "--format", "parquet", "--out", str(out), "--config", cfg]) == 0
    assert pl.read_parquet(out).height == 4
    local = tmp_path / "l.csv"
    local.write_text("id,ward\n9,x\n")
    mixed = f"SELECT count(*) AS n FROM merge('{local}', key => 'id') l, records_wards w"
    assert main(["sql", mixed, "--format", "jsonl", "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 3}
