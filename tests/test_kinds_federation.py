"""Three real daemons (subprocesses, mutual TLS) share a table, a sketch and a memory
namespace: every node materialises the same bytes, SQL gives the same rows everywhere,
erasing one site's table removes its rows everywhere, and a distinct count over three
sites' patients is within its stated bound with no patient id ever leaving its site."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import polars as pl
import pyarrow as pa
import pytest

from crdtd.errors import CrdtdError
from crdtd.kinds.sketch import SketchSettings, build_sketch
from crdtd.node.config import load_daemon_config
from tests.node_support import converged, federation, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

TABLE, SKETCH, MEMORY = "records/admissions", "stats/patients", "agents/ward-memory"
NAMESPACES = {
    TABLE: {"kind": "table", "key": "admission", "timestamp": "ts"},
    SKETCH: {"kind": "sketch", "sketch": "hll", "lg_k": 14},
    MEMORY: {"kind": "memory", "dim": 3, "similarity": 0.9},
}
# each site's patients; the ranges overlap, 12,000 distinct in all
PATIENTS = {"a": (0, 6000), "b": (4000, 9000), "c": (8500, 12000)}


def patient_ids(site: str) -> list[str]:
    lo, hi = PATIENTS[site]
    return [f"pid-{i:05d}" for i in range(lo, hi)]


def admissions(site: str) -> pl.DataFrame:
    n = {"a": 30, "b": 20, "c": 25}[site]
    start = {"a": 0, "b": 20, "c": 45}[site]  # a and b overlap on admissions 20..29
    return pl.DataFrame(
        {
            "admission": [f"adm-{i:03d}" for i in range(start, start + n)],
            "ts": [1 if site == "a" else 2] * n,
            "ward": [f"ward-{site}"] * n,
            "days": list(range(n)),
        }
    )


def memories(site: str) -> bytes:
    recs = [
        {"id": f"{site}1", "text": "Ward 4 closes at 8pm", "embedding": [1, 0, 0], "author": site},
        {
            "id": f"{site}2",
            "text": f"Site {site} restocked saline",
            "embedding": [0, 1, 0.1],
            "author": site,
            "importance": 0.7,
        },
        {
            "id": f"{site}3",
            "text": f"Dr {site.upper()} is on call",
            "key": "on-call",
            "time": ord(site),
            "author": site,
        },
    ]
    return ("\n".join(json.dumps(r) for r in recs) + "\n").encode()


@pytest.fixture(scope="module")
def fed3(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kinds-fed")
    configs = federation(root, 3, namespaces=NAMESPACES)
    with running(configs) as daemons:
        yield root, dict(zip("abc", daemons))


def _materialise_everywhere(root: Path, nodes, ns: str, suffix: str) -> list:
    out = []
    for name, d in sorted(nodes.items()):
        with d.client() as c:
            path = root / f"{ns.replace('/', '_')}-{name}{suffix}"
            m = c.materialise(ns, out=path, provenance=True)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == m.output_sha256
            out.append(m)
    return out


def test_three_sites_share_every_kind_and_materialise_identical_bytes(fed3) -> None:
    root, nodes = fed3
    entries = {}
    for site, d in nodes.items():
        with d.client() as c:
            table = root / f"adm-{site}.parquet"
            admissions(site).write_parquet(table)
            entries[site] = c.push(TABLE, table)
            sketch = build_sketch(SketchSettings(type="hll", lg_k=14), patient_ids(site))
            c.push(SKETCH, sketch, payload_kind="sketch")
            c.push(MEMORY, memories(site), payload_kind="jsonl")
    wait_for(lambda: converged(list(nodes.values())), 90, "three equal state roots")
    for ns, suffix in ((TABLE, ".parquet"), (SKETCH, ".sketch"), (MEMORY, ".jsonl")):
        results = _materialise_everywhere(root, nodes, ns, suffix)
        assert len({r.output_sha256 for r in results}) == 1, ns
        assert len({r.provenance_sha256 for r in results}) == 1, ns
        assert len(results[0].inputs) == 3
    merged = pl.read_parquet(root / "records_admissions-a.parquet")
    assert merged.height == 65  # a: 0..29, b: 20..39 (10 shared), c: 45..69
    shared = merged.filter(pl.col("admission") == "adm-025")
    assert shared["ward"].to_list() == ["ward-b"]  # the newer timestamp won
    mem = [json.loads(x) for x in (root / "agents_ward-memory-a.jsonl").read_text().splitlines()]
    by_text = {m["text"]: m for m in mem}
    assert by_text["Ward 4 closes at 8pm"]["support"] == 3  # exact duplicates
    saline = [m for m in mem if "saline" in m["text"]]
    assert len(saline) == 1 and saline[0]["merged"] == 3  # near duplicates
    assert [m["text"] for m in mem if m["key"] == "on-call"] == ["Dr C is on call"]


def test_sql_gives_the_same_rows_on_every_node(fed3) -> None:
    _, nodes = fed3
    q = 'SELECT ward, count(*) AS n, sum(days) AS days FROM "records/admissions" GROUP BY ward ORDER BY ward'
    results = []
    for d in nodes.values():
        with d.client() as c:
            results.append(c.sql(q))
    assert all(r.table.equals(results[0].table) for r in results)
    assert len({json.dumps(r.input_set_digests) for r in results}) == 1
    assert results[0].table.column("ward").to_pylist() == ["ward-a", "ward-b", "ward-c"]


def test_distinct_patients_within_the_bound_and_no_id_leaves_its_site(fed3) -> None:
    root, nodes = fed3
    with nodes["b"].client() as c:
        s = c.materialise(SKETCH, out=root / "union.sketch").summary
    assert s["lower_bound"] <= 12000 <= s["upper_bound"]
    assert s["confidence"] > 0.997
    for d in nodes.values():
        data_dir = load_daemon_config(d.config, check_strategies=False).node.data_dir
        for f in data_dir.rglob("*"):
            if f.is_file():
                assert b"pid-" not in f.read_bytes(), f"a patient id is in {f}"


def test_erasing_one_sites_table_removes_its_rows_on_every_node(fed3) -> None:
    _, nodes = fed3
    with nodes["c"].client() as c:
        (mine,) = [e for e in c.list(TABLE) if e.author_name == "site-c"]
        c.erase([mine.id], reason="site c withdrew")
    wait_for(lambda: converged(list(nodes.values())), 90, "roots agree after the erasure")
    counts = set()
    for d in nodes.values():
        with d.client() as c:
            t = c.table(TABLE)
            assert isinstance(t, pa.Table)
            assert not any(a >= "adm-045" for a in t.column("admission").to_pylist())
            counts.add(
                c.sql('SELECT count(*) AS n FROM "records/admissions"').table.to_pylist()[0]["n"]
            )
    assert counts == {40}


@pytest.mark.parametrize(
    ("ns", "kind", "payload", "words"),
    [
        (TABLE, "csv", b"admission,ts,ward\nadm-1,1,x\nadm-2,1\n", "line 3 has 2 fields"),
        (SKETCH, "sketch", build_sketch(SketchSettings(type="theta"), ["x"]), "is a theta sketch"),
        (MEMORY, "jsonl", b'{"text": "no id"}\n', "record has no 'id'"),
        (MEMORY, "jsonl", b'{"id": "x", "text": "t", "embedding": [1, 2]}\n', "dimension 2"),
    ],
)
def test_bad_input_of_every_kind_is_refused_and_the_daemon_keeps_serving(
    fed3, ns: str, kind: str, payload: bytes, words: str
) -> None:
    _, nodes = fed3
    with nodes["a"].client() as c:
        before = c.status().state_root
        with pytest.raises(CrdtdError) as exc:
            c.push(ns, payload, payload_kind=kind)
        assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert words in str(exc.value) and ns in str(exc.value)
        assert c.status().state_root == before
