"""Memory namespaces: agents push memory records; a node merges, dedups, budgets, recalls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.client import Client
from crdtd.errors import CrdtdError
from crdtd.kinds.memory import (
    EXACT_PAIRS_MAX,
    MemorySettings,
    keyword_index,
    merge_records,
    quantise,
    read_records,
    recall,
    similar_pairs,
)
from tests.node_support import InProcessNode, federation

MEM = "agents/ward-memory"
NAMESPACES = {
    MEM: {"kind": "memory", "dim": 3, "similarity": 0.9},
    "agents/budget": {"kind": "memory", "max_records": 3, "agent_quota": 2},
}


def jsonl(records: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    root = tmp_path_factory.mktemp("memory-node")
    (config,) = federation(root, 1, namespaces=NAMESPACES)
    n = InProcessNode(config)
    yield n
    n.stop()


@pytest.fixture()
def client(node: InProcessNode) -> Client:
    with node.client() as c:
        yield c


TRIAGE = [
    {
        "id": "t1",
        "text": "Ward 4 closes at 8pm",
        "embedding": [1, 0, 0],
        "importance": 0.9,
        "author": "triage",
        "tags": ["ops"],
    },
    {
        "id": "t2",
        "text": "Ward 4 closes at eight",
        "embedding": [0.98, 0.1, 0],
        "importance": 0.3,
        "author": "triage",
    },
    {"id": "t3", "text": "Coffee machine is in room 2", "embedding": [0, 1, 0], "author": "triage"},
    {"id": "t4", "text": "Dr Lee is on call", "key": "on-call", "time": 1, "author": "triage"},
]
PHARMACY = [
    {
        "id": "p1",
        "text": "Ward 4 closes at 8pm",
        "importance": 0.5,
        "author": "pharmacy",
        "tags": ["night"],
    },
    {"id": "p2", "text": "Dr Kim is on call", "key": "on-call", "time": 2, "author": "pharmacy"},
    {"id": "p3", "text": "Dr Roy is on call", "key": "on-call", "time": 2, "author": "pharmacy"},
]


def test_pushed_memories_merge_exact_and_near_duplicates_with_provenance(
    client: Client, tmp_path: Path
) -> None:
    a = client.push(MEM, jsonl(TRIAGE), payload_kind="jsonl")
    b = client.push(MEM, jsonl(PHARMACY), payload_kind="jsonl")
    out = tmp_path / "memory.jsonl"
    m = client.materialise(MEM, out=out, provenance=True)
    assert (m.kind, m.format) == ("memory", "jsonl")
    assert m.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    mems = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [x["text"] for x in mems]
    # the near duplicate ("eight") and the exact one (pharmacy) are one memory; the
    # superseded on-call fact (time 1) is gone; the two concurrent ones (time 2) both stay
    assert texts[0] == "Ward 4 closes at 8pm"
    assert sorted(texts[1:]) == [
        "Coffee machine is in room 2",
        "Dr Kim is on call",
        "Dr Roy is on call",
    ]
    top = mems[0]
    assert (top["support"], top["merged"], top["importance"]) == (2, 3, 0.9)
    assert top["tags"] == ["night", "ops"]
    prov = [json.loads(line) for line in Path(m.provenance_path).read_text().splitlines()]
    sources = {(s["entry_id"], s["record_id"]) for s in prov[0]["sources"]}
    assert sources == {(a.entry_id.hex(), "t1"), (a.entry_id.hex(), "t2"), (b.entry_id.hex(), "p1")}
    assert client.memories(MEM) == mems


def test_recall_ranks_by_embedding_or_by_keyword(client: Client) -> None:
    by_vector = client.recall(MEM, k=2, embedding=[0.1, 1.0, 0.0])
    assert by_vector[0][1]["text"] == "Coffee machine is in room 2"
    assert by_vector[0][0] > 0.9 and len(by_vector) == 2
    by_words = client.recall(MEM, "who is on call", k=5)
    assert {m["text"] for _, m in by_words[:2]} == {"Dr Kim is on call", "Dr Roy is on call"}
    assert by_words[0][0] > by_words[2][0]  # "is" alone matches less than "on call"
    with pytest.raises(CrdtdError, match="dimension 2, the namespace's dim is 3"):
        client.recall(MEM, k=1, embedding=[1.0, 0.0])


def bm25_reference(texts: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """BM25 written out term by term over Python lists: the formula the vectorised one must give."""
    import math
    import re

    docs = [re.findall(r"\w+", t.lower()) for t in texts]
    avg = sum(len(d) for d in docs) / len(docs)
    scores = [0.0] * len(docs)
    for term in sorted(set(re.findall(r"\w+", query.lower()))):
        df = sum(1 for d in docs if term in d)
        if not df:
            continue
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / (avg or 1.0)))
    return scores


WORDS = st.sampled_from(["call", "on", "ward", "kim", "roy", "night", "bed", "x"])


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.lists(WORDS, min_size=0, max_size=6).map(" ".join), min_size=1, max_size=30),
    query=st.lists(WORDS, min_size=1, max_size=3).map(" ".join),
    k=st.integers(1, 8),
)
def test_keyword_recall_over_a_kept_index_ranks_as_bm25_written_out(texts, query, k) -> None:
    import polars as pl

    memories = pl.DataFrame({"id": [f"m{i}" for i in range(len(texts))], "text": texts})
    s = MemorySettings()
    _, kept = recall(memories, query, k, None, s, keyword_index(memories["text"]))
    assert kept == recall(memories, query, k, None, s)[1]
    ref = bm25_reference(texts, query)
    want = sorted((i for i in range(len(texts)) if ref[i] > 0), key=lambda i: (-ref[i], i))[:k]
    assert [hit["id"] for _, hit in kept] == [f"m{i}" for i in want]
    assert [score for score, _ in kept] == pytest.approx([ref[i] for i in want])


def test_budget_keeps_the_best_scoring_memories_within_each_agents_quota(
    client: Client,
) -> None:
    records = [
        {"id": f"a{i}", "text": f"alpha fact {i}", "importance": 0.9 - i / 10, "author": "alpha"}
        for i in range(4)
    ] + [{"id": "b0", "text": "beta fact", "importance": 0.1, "author": "beta"}]
    client.push("agents/budget", jsonl(records), payload_kind="jsonl")
    kept = client.memories("agents/budget")
    assert [m["id"] for m in kept] == ["a0", "a1", "b0"]  # alpha's quota is 2, total 3


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ([{"text": "no id here"}], "line 1: record has no 'id'"),
        (
            [{"id": "x", "text": "t", "embedding": [1, 2]}],
            "embedding has dimension 2, the namespace's dim is 3",
        ),
        ([{"id": "x", "text": "t", "colour": "red"}], "unknown field(s) ['colour']"),
        ([{"id": "x", "text": "t", "importance": 3}], "'importance' must be a number in [0, 1]"),
        (
            [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}],
            "line 2: record id 'x' already used on line 1",
        ),
        ("not json", "line 1: not JSON"),
    ],
)
def test_a_bad_memory_record_is_refused_naming_it_and_the_node_keeps_serving(
    client: Client, records: object, words: str
) -> None:
    before = client.status().state_root
    data = records.encode() + b"\n" if isinstance(records, str) else jsonl(records)  # type: ignore[arg-type]
    with pytest.raises(CrdtdError) as exc:
        client.push(MEM, data, payload_kind="jsonl")
    assert exc.value.code is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert words in str(exc.value) and MEM in str(exc.value)
    assert client.status().state_root == before


_record = st.fixed_dictionaries(
    {
        "text": st.sampled_from(["a", "b", "c", "d"]),
        "embedding": st.sampled_from([[1, 0], [0.99, 0.05], [0, 1], [-1, 0.2]]),
        "importance": st.sampled_from([0.2, 0.5, 0.9]),
        "author": st.sampled_from(["x", "y", "z"]),
        "time": st.integers(0, 3),
    },
    optional={"key": st.sampled_from(["k1", "k2"])},
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_record, min_size=1, max_size=5), min_size=1, max_size=4), st.randoms())
def test_merged_memory_bytes_do_not_depend_on_contribution_order(inputs, rnd) -> None:
    s = MemorySettings(dim=2, similarity=0.95, max_records=5, agent_quota=2)
    frames = []
    for i, recs in enumerate(inputs):
        data = jsonl([{**r, "id": f"r{j}"} for j, r in enumerate(recs)])
        frames.append(read_records(data, bytes([i]) * 32, bytes([i % 2]) * 32, s))
    first = merge_records(frames, s).write_ndjson()
    shuffled = list(frames)
    rnd.shuffle(shuffled)
    assert merge_records(shuffled, s).write_ndjson() == first
    assert merge_records(shuffled + shuffled[:1], s).write_ndjson() == first


def test_hashed_candidates_find_planted_near_duplicates_in_a_large_set() -> None:
    rng = np.random.default_rng(7)
    n = EXACT_PAIRS_MAX + 1000
    emb = rng.standard_normal((n, 16))
    planted = np.arange(0, 200, 2)
    emb[planted + 1] = emb[planted] + 0.01 * rng.standard_normal((len(planted), 16))
    pairs = {tuple(p) for p in similar_pairs(quantise(emb), 0.99).tolist()}
    assert {(int(i), int(i) + 1) for i in planted} <= pairs
    assert len(pairs) < 2 * len(planted)  # random directions in 16-d are not similar
