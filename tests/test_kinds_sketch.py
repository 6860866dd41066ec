"""Sketch namespaces: sites push sketches (never ids); a node's union carries the estimate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.cli import main
from crdtd.client import Client
from crdtd.errors import CrdtdError
from crdtd.kinds.sketch import SketchSettings, build_sketch, join_all, summarise, union_bytes
from tests.node_support import InProcessNode, federation

HLL = "stats/patients"
NAMESPACES = {
    HLL: {"kind": "sketch", "sketch": "hll", "lg_k": 12},
    "stats/stay": {"kind": "sketch", "sketch": "kll", "k": 200},
    "stats/diagnoses": {"kind": "sketch", "sketch": "frequent_items", "lg_max_map_size": 6},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    root = tmp_path_factory.mktemp("sketch-node")
    (config,) = federation(root, 1, namespaces=NAMESPACES)
    n = InProcessNode(config)
    yield n
    n.stop()


@pytest.fixture()
def client(node: InProcessNode) -> Client:
    with node.client() as c:
        yield c


def _ids(lo: int, hi: int) -> list[str]:
    return [f"patient-{i}" for i in range(lo, hi)]


def test_union_of_site_sketches_estimates_the_distinct_count_within_its_bound(
    client: Client, tmp_path: Path
) -> None:
    s = SketchSettings(type="hll", lg_k=12)
    sites = [_ids(0, 6000), _ids(4000, 9000), _ids(8500, 12000)]
    for ids in sites:
        client.push(HLL, build_sketch(s, ids), payload_kind="sketch")
    out = tmp_path / "union.hll.sketch"
    m = client.materialise(HLL, out=out, provenance=True)
    assert (m.kind, m.format) == ("sketch", "sketch")
    est = m.summary
    assert est["lower_bound"] <= 12000 <= est["upper_bound"]
    assert est["confidence"] > 0.997 and abs(est["estimate"] - 12000) / 12000 < 0.05
    # the union's bytes are the lattice join of the three, in any order
    blobs = [build_sketch(s, ids) for ids in sites]
    assert out.read_bytes() == union_bytes(s, reversed(blobs)) == union_bytes(s, blobs)
    assert m.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    prov = json.loads(Path(m.provenance_path).read_text())
    assert len(prov["inputs"]) == 3 and {i["entry_id"] for i in prov["inputs"]} == {
        i.hex() for i in m.inputs
    }


def test_quantiles_and_frequent_items_merge_across_contributions(client: Client) -> None:
    kll = SketchSettings(type="kll", k=200)
    client.push(
        "stats/stay", build_sketch(kll, [float(d) for d in range(1, 101)]), payload_kind="sketch"
    )
    client.push(
        "stats/stay", build_sketch(kll, [float(d) for d in range(101, 201)]), payload_kind="sketch"
    )
    q = client.materialise("stats/stay", out=None).summary
    assert q["n"] == 200 and q["min"] == 1.0 and q["max"] == 200.0
    median = q["quantiles"]["0.5"]
    assert median["lower"] <= 100 <= median["upper"]
    fi = SketchSettings(type="frequent_items", lg_max_map_size=6)
    client.push(
        "stats/diagnoses", build_sketch(fi, ["flu"] * 30 + ["cold"] * 5), payload_kind="sketch"
    )
    client.push(
        "stats/diagnoses", build_sketch(fi, ["flu"] * 10 + ["covid"] * 8), payload_kind="sketch"
    )
    top = client.materialise("stats/diagnoses", out=None).summary["top"]
    assert top[0]["item"] == "flu" and top[0]["lower"] <= 40 <= top[0]["upper"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (
            lambda: build_sketch(SketchSettings(type="theta"), ["a"]),
            "the payload is a theta sketch",
        ),
        (
            lambda: build_sketch(SketchSettings(type="hll", lg_k=10), ["a"]),
            "the payload's lg_k is 10",
        ),
        (lambda: b"\x93\xa3hll\x0c\x00", "the payload is not a sketch"),
        (lambda: b"patient-1\npatient-2\n", "the payload is not a sketch"),
    ],
)
def test_a_sketch_of_another_type_or_size_is_refused_and_the_node_keeps_serving(
    client: Client, payload, words: str
) -> None:
    before = client.status().state_root
    with pytest.raises(CrdtdError) as exc:
        client.push(HLL, payload(), payload_kind="sketch")
    assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert words in str(exc.value)
    assert "takes hll sketches with lg_k 12" in str(exc.value)
    assert client.status().state_root == before


def test_crdtd_sketch_builds_from_a_column_and_pushes(
    node: InProcessNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "admissions.parquet"
    pl.DataFrame({"patient_id": _ids(0, 500) * 2, "ward": ["a"] * 1000}).write_parquet(data)
    out = tmp_path / "p.sketch"
    args = ["sketch", "hll", str(data), "--column", "patient_id", "--out", str(out), "--json"]
    assert main([*args, "--push", HLL, "--config", str(node.config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["values"] == 1000 and len(report["entry_id"]) == 64
    assert report["summary"]["lower_bound"] <= 500 <= report["summary"]["upper_bound"]
    assert b"patient-" not in out.read_bytes()
    assert main(["sketch", "hll", str(data), "--column", "nope", "--out", str(out)]) != 0


_values = st.lists(st.integers(0, 300), min_size=0, max_size=60)


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["hll", "theta", "kll", "frequent_items"]),
    st.lists(_values, min_size=1, max_size=4),
    st.randoms(),
)
def test_union_bytes_are_the_same_in_any_order_for_every_sketch_type(kind, inputs, rnd) -> None:
    s = SketchSettings(type=kind, lg_k=5 if kind == "theta" else 4, k=8, lg_max_map_size=3)
    conv = float if kind == "kll" else (str if kind == "frequent_items" else int)
    blobs = [build_sketch(s, [conv(v) for v in vals]) for vals in inputs]
    first = union_bytes(s, blobs)
    shuffled = list(blobs)
    rnd.shuffle(shuffled)
    assert union_bytes(s, shuffled + shuffled[:1]) == first
    summarise(s, join_all(s, []))  # the empty union still summarises
