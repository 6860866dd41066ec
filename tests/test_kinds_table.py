"""Table namespaces through a real node: push Parquet / Arrow / CSV, read back the merge."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import grpc
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd import merge
from crdtd.client import Client
from crdtd.errors import ConfigError, CrdtdError
from crdtd.kinds.table import TableSettings, merge_files
from crdtd.node.config import load_daemon_config
from tests.node_support import InProcessNode, checkpoint, federation

TABLE = "records/admissions"
NAMESPACES = {
    TABLE: {"kind": "table", "key": ["site", "id"], "timestamp": "ts", "tombstone": "deleted"},
    "records/plain": {"kind": "table", "key": "id", "format": "csv"},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    root = tmp_path_factory.mktemp("table-node")
    (config,) = federation(root, 1, namespaces=NAMESPACES)
    n = InProcessNode(config)
    yield n
    n.stop()


@pytest.fixture()
def client(node: InProcessNode) -> Client:
    with node.client() as c:
        yield c


def _parquet(path: Path, rows: dict[str, list]) -> Path:
    pq.write_table(pa.table(rows), path)
    return path


def _code(exc: pytest.ExceptionInfo[CrdtdError]) -> grpc.StatusCode:
    return exc.value.code  # type: ignore[attr-defined]


def test_pushed_tables_come_back_as_one_merged_arrow_table(client: Client, tmp_path: Path) -> None:
    a = {"site": ["a", "a", "b"], "id": [1, 2, 1], "ts": [1, 1, 1], "ward": ["x", "y", "z"]}
    b = {"site": ["a", "b"], "id": [2, 1], "ts": [2, 0], "ward": ["Y", "old"], "age": [40, 50]}
    client.push(TABLE, _parquet(tmp_path / "a.parquet", a))
    pl.DataFrame(b).write_ipc(tmp_path / "b.arrow")
    client.push(TABLE, tmp_path / "b.arrow")
    got = client.table(TABLE)
    assert isinstance(got, pa.Table)
    want = merge(
        pl.DataFrame(a),
        pl.DataFrame(b),
        key=["site", "id"],
        timestamp="ts",
        tombstone="deleted",
        drop_deleted=True,
    )
    assert pl.from_arrow(got).equals(want)
    assert pl.from_arrow(got).filter(pl.col("id") == 2)["ward"].to_list() == ["Y"]
    assert isinstance(client.table(TABLE, as_="polars"), pl.DataFrame)
    assert client.table(TABLE, as_="pandas").shape == (3, 6)


def test_erasing_a_contribution_removes_its_rows(client: Client, tmp_path: Path) -> None:
    keep = tmp_path / "keep.csv"
    keep.write_text("id,name\n1,ann\n2,bob\n")
    gone = tmp_path / "gone.csv"
    gone.write_text("id,name\n3,cy\n4,di\n")
    client.push("records/plain", keep)
    r = client.push("records/plain", gone)
    assert sorted(client.table("records/plain")["id"].to_pylist()) == [1, 2, 3, 4]
    client.erase([r.entry_id])
    assert sorted(client.table("records/plain")["id"].to_pylist()) == [1, 2]


def test_materialise_writes_the_namespace_format_and_provenance_beside_it(
    client: Client, tmp_path: Path
) -> None:
    one = tmp_path / "one.csv"
    one.write_text("id,score\n10,1\n11,2\n")
    two = tmp_path / "two.csv"
    two.write_text("id,score\n11,5\n12,3\n")
    r1 = client.push("records/plain", one)
    r2 = client.push("records/plain", two)
    out = tmp_path / "merged.csv"
    m = client.materialise("records/plain", out=out, provenance=True)
    assert (m.kind, m.format) == ("table", "csv")
    assert m.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    columns = client.table("records/plain").column_names  # earlier tests' rows add columns
    assert {"id", "score"} <= set(columns)
    assert out.read_text().splitlines()[0] == ",".join(f'"{c}"' for c in columns)
    prov = pl.read_parquet(m.provenance_path)
    assert prov.columns == ["id", "entry_id", "author"]
    holders = prov.filter(pl.col("id") == 11)["entry_id"].to_list()
    assert holders == sorted([r1.entry_id.hex(), r2.entry_id.hex()])
    assert m.summary["rows"] == pl.read_csv(out).height
    again = client.materialise("records/plain", out=tmp_path / "again.parquet", format="parquet")
    assert again.format == "parquet" and pq.read_table(tmp_path / "again.parquet").num_rows


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("ragged csv", "line 3 has 2 fields, the header has 3"),
        ("missing key", "key column 'site' is missing"),
        ("null key", "key column 'id' has 1 null value"),
        ("safetensors file", "is a table namespace and takes parquet or arrow or csv payloads"),
        ("declared csv, sent parquet", "the push says 'csv' but the bytes are parquet"),
        ("binary junk", "not Parquet, Arrow IPC or UTF-8 CSV"),
    ],
)
def test_a_bad_table_is_refused_naming_the_problem_and_the_node_keeps_serving(
    client: Client, tmp_path: Path, case: str, words: str
) -> None:
    before = client.status().state_root
    with pytest.raises(CrdtdError) as exc:
        if case == "ragged csv":
            bad = tmp_path / "bad.csv"
            bad.write_text("site,id,ts\na,1,1\nb,2\n")
            client.push(TABLE, bad)
        elif case == "missing key":
            client.push(TABLE, _parquet(tmp_path / "k.parquet", {"id": [1], "ts": [1]}))
        elif case == "null key":
            rows = {"site": ["a", "b"], "id": [1, None], "ts": [1, 1]}
            client.push(TABLE, _parquet(tmp_path / "n.parquet", rows))
        elif case == "safetensors file":
            client.push(
                TABLE, checkpoint(tmp_path / "m.safetensors", 1.0), payload_kind="safetensors"
            )
        elif case == "declared csv, sent parquet":
            rows = {"site": ["a"], "id": [1], "ts": [1]}
            client.push(TABLE, _parquet(tmp_path / "p.parquet", rows), payload_kind="csv")
        else:
            client.push(TABLE, b"\x00\x01\xfe\xff" * 100)
    assert _code(exc) is grpc.StatusCode.INVALID_ARGUMENT, str(exc.value)
    assert words in str(exc.value) and TABLE in str(exc.value)
    assert client.status().state_root == before


def test_status_shows_table_namespaces_with_their_key(client: Client) -> None:
    info = {n.name: n for n in client.status().namespace_info}
    assert info[TABLE].kind == "table"
    assert info[TABLE].settings["key"] == ["site", "id"]


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('kind = "table"\n', "needs its key column"),
        ('kind = "table"\nkey = "id"\nstrategy = "ties"\n', "unknown key for a table namespace"),
        ('kind = "table"\nkey = "id"\nformat = "xlsx"\n', "'xlsx' is not one of parquet"),
        ('kind = "table"\nkey = ["id", "id"]\n', "names a column twice"),
        ('kind = "table"\nkey = "id"\ntimestamp = "id"\n', "is also a key column"),
    ],
)
def test_a_bad_table_namespace_config_is_named(tmp_path: Path, table: str, words: str) -> None:
    (path,) = federation(tmp_path, 1, namespaces={}, limits=None)
    path.write_text(path.read_text() + '\n[namespaces."t/x"]\n' + table)
    with pytest.raises(ConfigError, match="t/x") as exc:
        load_daemon_config(path, env={})
    assert words in str(exc.value)


_rows = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 3), st.sampled_from(["p", "q", None])),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(st.lists(_rows, min_size=1, max_size=4), st.sampled_from(["parquet", "arrow", "csv"]))
def test_merged_table_bytes_do_not_depend_on_contribution_order(
    tmp_path_factory: pytest.TempPathFactory, inputs: list, fmt: str
) -> None:
    d = tmp_path_factory.mktemp("order")
    paths = []
    for i, rows in enumerate(inputs):
        df = pl.DataFrame(rows, schema=["id", "ts", "v"], orient="row")
        paths.append((_parquet(d / f"{i}.parquet", df.to_arrow().to_pydict()), "parquet"))
    s = TableSettings(key=("id",), timestamp="ts")
    digests = set()
    for n, order in enumerate(itertools.islice(itertools.permutations(paths), 6)):
        out = d / f"out-{n}.{fmt}"
        merge_files(list(order), s, out, fmt)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
