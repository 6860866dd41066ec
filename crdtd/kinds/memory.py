"""`memory` namespaces: agent memories merged, deduplicated and kept within a budget.

A contribution is a JSON Lines file of memory records:

    {"id": "m-17", "text": "Ward 4 closes at 8pm", "embedding": [0.1, ...], "importance": 0.8,
     "tags": ["ops"], "author": "triage-agent", "time": 42, "key": "ward4/closing"}

`id` and `text` are required; `embedding` (exactly `dim` numbers), `importance` (0..1,
default 0.5), `tags`, `author` (the agent; default: the signing node's key id, 16 hex),
`time` (logical time, an integer >= 0, default 0) and `key` are optional.

Materialise, a pure function of the accepted set (numpy and polars, no Python loop per record):

1. **Registers.** Records with a `key` state a changing fact: per key only the records with
   the newest `time` are kept; equal newest times are concurrent and all kept, until a
   later write supersedes them.
2. **Exact duplicates.** Records with the same content (`text`, `key`) are one memory; its
   content id is `sha256(text \\0 key)`.
3. **Near duplicates.** With embeddings, memories without a key whose cosine similarity is at
   least `similarity` join one cluster (connected components). Similarity is computed on
   embeddings quantised to 12-bit integers per component, so every dot product is exact and
   every node finds the same pairs; above 4096 memories, candidate pairs come from 16
   random-hyperplane hash tables (integer hyperplanes, fixed seed) and are then checked.
4. **Representative.** Each memory (exact group or cluster) is represented by its first
   record in the order (importance desc, time desc, then input order: entry id, line); it
   carries the highest importance and time of its members, the union of their tags, its
   `support` (distinct authors) and `merged` (records).
5. **Budget.** Memories rank by the score (importance desc, support desc, time desc, then
   text and key asc); each author keeps at most `agent_quota`, then the first `max_records`
   are kept.

The output is JSON Lines in rank order. Provenance: per memory, every record merged into it
(entry id, entry author, agent, record id).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.crypto.node_config import Field
from crdtd.errors import ConfigError, CrdtdError, MemoryRecordError, WrongKindError
from crdtd.kinds.base import (
    Excluded,
    Materialised,
    MaterialiseRequest,
    Where,
    accepted_set,
    check_payload_kind,
    ids_digest,
    read_payload,
    sha256_file,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from crdtd.node.config import NamespaceConfig

FIELDS = ("id", "text", "embedding", "importance", "tags", "author", "time", "key")
QUANT = 1 << 12  # embedding components are quantised to integers in [-QUANT, QUANT]
EXACT_PAIRS_MAX = 4096  # up to this many embedded memories, every pair is compared
LSH_TABLES = 16
LSH_BITS = 12
LSH_SEED = 0x6372647464  # "crdtd": fixed, so every node draws the same hyperplanes
BLOCK = 2048


@dataclass(frozen=True)
class MemorySettings:
    """How a memory namespace merges: embedding size, near-duplicate threshold, budget."""

    dim: int = 0
    similarity: float = 0.95
    near_duplicates: bool = True
    max_records: int = 0
    agent_quota: int = 0


class MemoryKind:
    """Agent memory records (JSON Lines) deduplicated and kept within a budget."""

    name = "memory"
    settings: Mapping[str, Field] = {
        "dim": Field("count", 0, "embedding length records must have (0: no embeddings)"),
        "similarity": Field("float", 0.95, "cosine similarity from which memories are one"),
        "near_duplicates": Field("bool", True, "merge near-duplicate embeddings"),
        "max_records": Field("count", 0, "memories kept in total (0: all)"),
        "agent_quota": Field("count", 0, "memories kept per author (0: no limit)"),
    }

    def parse_settings(self, values: Mapping[str, Any], where: Where) -> MemorySettings:
        if not 0.0 < values["similarity"] <= 1.0:
            raise ConfigError(f"{where('similarity')}: must be in (0, 1]")
        return MemorySettings(
            dim=values["dim"],
            similarity=values["similarity"],
            near_duplicates=values["near_duplicates"],
            max_records=values["max_records"],
            agent_quota=values["agent_quota"],
        )

    def takes(self, ns: NamespaceConfig) -> tuple[str, ...]:
        return ("jsonl",)

    def check_push(self, ns: NamespaceConfig, payload_kind: str, path: Path) -> str:
        """Every line a well-formed record (MemoryRecordError naming line and field)."""
        check_payload_kind(ns, payload_kind, ("jsonl",))
        check_records(path.read_bytes(), ns.settings, ns.name)
        return "jsonl"

    def output_name(self, ns: NamespaceConfig, request: MaterialiseRequest) -> str:
        return "memory.jsonl"

    def materialise(
        self, core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
    ) -> Materialised:
        """Merge the accepted records into `work_dir/out/memory.jsonl`."""
        started = time.monotonic()
        if request.strategy or request.dtype or request.format not in ("", "jsonl"):
            raise ConfigError(
                f"namespace {ns.name!r} is a memory namespace: its output is jsonl; "
                "strategy, dtype and other formats do not apply"
            )
        merged, inputs, excluded = merged_memories(core, ns, request.provenance)
        out = work_dir / "out" / "memory.jsonl"
        out.parent.mkdir(parents=True)
        out.write_bytes(to_jsonl(merged.drop("sources", strict=False)))
        prov = None
        if request.provenance:
            prov = out.with_name(out.name + ".provenance.jsonl")
            prov.write_bytes(to_jsonl(merged.select("content_id", "id", "sources")))
        return Materialised(
            path=out,
            sha256=sha256_file(out),
            size=out.stat().st_size,
            input_set_digest=ids_digest(inputs, ns.settings),
            inputs=inputs,
            excluded=excluded,
            strategy="memory",
            params=_params(ns.settings),
            seconds=time.monotonic() - started,
            kind=self.name,
            format="jsonl",
            summary={
                "memories": merged.height,
                "records": int(merged["merged"].sum()) if merged.height else 0,
                "authors": merged["author"].n_unique() if merged.height else 0,
            },
            provenance=prov,
            provenance_sha256=sha256_file(prov) if prov is not None else "",
        )


KIND = MemoryKind()


def _params(s: MemorySettings) -> dict[str, Any]:
    return {
        "dim": s.dim,
        "similarity": s.similarity,
        "near_duplicates": s.near_duplicates,
        "max_records": s.max_records,
        "agent_quota": s.agent_quota,
    }


# -- checking records --------------------------------------------------------------------------


def check_records(data: bytes, s: MemorySettings, namespace: str) -> int:
    """Check a JSON Lines payload strictly; returns the number of records."""
    where = f"namespace {namespace!r}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MemoryRecordError(f"{where}: the payload is not UTF-8 (byte {exc.start})") from None
    seen: dict[str, int] = {}
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}: line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MemoryRecordError(f"{at}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise MemoryRecordError(f"{at}: JSON nested too deep") from None
        if not isinstance(rec, dict):
            raise MemoryRecordError(f"{at}: a record is a JSON object, not {type(rec).__name__}")
        _check_record(rec, s, at)
        if rec["id"] in seen:
            raise MemoryRecordError(
                f"{at}: record id {rec['id']!r} already used on line {seen[rec['id']]}"
            )
        seen[rec["id"]] = lineno
        n += 1
    if not n:
        raise MemoryRecordError(f"{where}: the payload holds no records")
    return n


def _check_record(rec: dict[str, Any], s: MemorySettings, at: str) -> None:
    unknown = sorted(set(rec) - set(FIELDS))
    if unknown:
        raise MemoryRecordError(f"{at}: unknown field(s) {unknown}; known: {', '.join(FIELDS)}")
    for name in ("id", "text"):
        if name not in rec:
            raise MemoryRecordError(f"{at}: record has no {name!r}")
        if not isinstance(rec[name], str) or not rec[name]:
            raise MemoryRecordError(f"{at}: {name!r} must be a non-empty string")
    for name in ("author", "key"):
        if name in rec and rec[name] is not None and not isinstance(rec[name], str):
            raise MemoryRecordError(f"{at}: {name!r} must be a string")
    imp = rec.get("importance", 0.5)
    if isinstance(imp, bool) or not isinstance(imp, int | float) or not 0 <= imp <= 1:
        raise MemoryRecordError(f"{at}: 'importance' must be a number in [0, 1], got {imp!r}")
    t = rec.get("time", 0)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 1 << 62:
        raise MemoryRecordError(f"{at}: 'time' must be an integer >= 0, got {t!r}")
    tags = rec.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise MemoryRecordError(f"{at}: 'tags' must be a list of strings")
    emb = rec.get("embedding")
    if emb is not None:
        if not s.dim:
            raise MemoryRecordError(
                f"{at}: the namespace takes no embeddings (set dim in its config)"
            )
        if not isinstance(emb, list) or len(emb) != s.dim:
            got = len(emb) if isinstance(emb, list) else type(emb).__name__
            raise MemoryRecordError(
                f"{at}: embedding has dimension {got}, the namespace's dim is {s.dim}"
            )
        for x in emb:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise MemoryRecordError(f"{at}: embedding values must be finite numbers")


# -- merging ----------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    import polars as pl

    return {
        "id": pl.String,
        "text": pl.String,
        "embedding": pl.List(pl.Float64),
        "importance": pl.Float64,
        "tags": pl.List(pl.String),
        "author": pl.String,
        "time": pl.Int64,
        "key": pl.String,
    }


def read_records(data: bytes, entry: bytes, author: bytes, s: MemorySettings) -> pl.DataFrame:
    """One contribution's records as columns (vectorised checks; MemoryRecordError if bad)."""
    import polars as pl

    try:
        df = pl.read_ndjson(io.BytesIO(data), schema=_schema())
    except Exception as exc:  # polars raises several types for bad JSON
        raise MemoryRecordError(f"records cannot be read: {exc}") from None
    bad = df.filter(
        pl.col("id").is_null()
        | pl.col("text").is_null()
        | (pl.col("importance").fill_null(0.5) < 0)
        | (pl.col("importance").fill_null(0.5) > 1)
        | (pl.col("time").fill_null(0) < 0)
        | (pl.col("embedding").is_not_null() & (pl.col("embedding").list.len() != s.dim))
    )
    if not df.height:
        raise MemoryRecordError("the payload holds no records")
    if bad.height:
        raise MemoryRecordError(f"{bad.height} record(s) lack id/text or break a field's range")
    if df["id"].n_unique() != df.height:
        raise MemoryRecordError("a record id appears twice")
    return df.with_columns(
        pl.col("importance").fill_null(0.5),
        pl.col("time").fill_null(0),
        pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col("key").fill_null(""),
        pl.col("author").fill_null(author.hex()[:16]),
        pl.lit(entry.hex()).alias("entry"),
        pl.lit(author.hex()).alias("entry_author"),
    )


def recall_node(
    core: Any, namespace: str, query: str, k: int, embedding: list[float]
) -> tuple[str, list[tuple[float, dict[str, Any]]], str]:
    """The `Recall` RPC's work: (method, hits, input-set digest) for a memory namespace."""
    ns = core.namespace(namespace)
    if ns.kind != "memory":
        raise WrongKindError(f"namespace {namespace!r} is a {ns.kind} namespace, not memory")
    if not query.strip() and not embedding:
        raise MemoryRecordError("recall needs a query text or a query embedding")
    memories, inputs, _ = merged_memories(core, ns)
    digest = ids_digest(inputs, ns.settings)
    index = None
    if not embedding:
        index = core.views.get_or_make(
            (ns.name, digest + "+keywords"), lambda: keyword_index(memories["text"])
        )
    method, hits = recall(memories, query, k, embedding or None, ns.settings, index)
    return method, hits, digest


def merged_memories(
    core: Any, ns: NamespaceConfig, provenance: bool = False
) -> tuple[pl.DataFrame, tuple[bytes, ...], tuple[Excluded, ...]]:
    """The namespace's merged memories (cached per input set), inputs and exclusions."""
    entries, excluded = accepted_set(core, ns, ("jsonl",))
    digest = ids_digest([e.id for e in entries], ns.settings)
    if provenance:
        digest += "+provenance"

    def make() -> tuple[pl.DataFrame, tuple[bytes, ...], tuple[Excluded, ...]]:
        frames = []
        invalid: list[Excluded] = []
        for e in entries:
            data = read_payload(core.state.store, e)
            try:
                frames.append(read_records(data, e.id, e.author, ns.settings))
            except CrdtdError as exc:
                invalid.append(Excluded(e.author, f"invalid contribution: {exc}", (e.id,)))
        if not frames:
            why = "; ".join(x.reason for x in invalid)
            raise MemoryRecordError(f"namespace {ns.name!r}: no valid contribution ({why})")
        inputs = tuple(e.id for e in entries if all(e.id not in x.entries for x in invalid))
        return merge_records(frames, ns.settings, provenance), inputs, (*excluded, *invalid)

    result: tuple[pl.DataFrame, tuple[bytes, ...], tuple[Excluded, ...]]
    result = core.views.get_or_make((ns.name, digest), make)
    return result


def merge_records(
    frames: list[pl.DataFrame], s: MemorySettings, provenance: bool = False
) -> pl.DataFrame:
    """Registers, exact and near duplicates, budget: one row per kept memory, rank order
    (with a `sources` column when `provenance`)."""
    import polars as pl

    by_entry = {f["entry"][0]: f for f in frames if f.height}  # a contribution counts once
    df = pl.concat([by_entry[e] for e in sorted(by_entry)], how="vertical").with_row_index("row")
    # 1. registers: per key, only the newest time (ties are concurrent: all kept)
    keyed = df.filter(pl.col("key") != "")
    if keyed.height:
        newest = keyed.filter(pl.col("time") == pl.col("time").max().over("key"))
        df = pl.concat([df.filter(pl.col("key") == ""), newest], how="vertical")
    # 2. exact duplicates: one group per (text, key); records in representative order
    df = df.sort(["importance", "time", "row"], descending=[True, True, False])
    content = ["text", "key"]
    groups = df.group_by(content).agg(
        pl.col("id").first(),
        pl.col("embedding").first(),
        pl.col("importance").max(),
        pl.col("tags").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
        pl.col("author").first(),
        pl.col("time").max(),
        pl.col("author").unique().alias("authors"),
        pl.len().alias("merged"),
        pl.col("row").first(),
    )
    if provenance:
        groups = groups.join(_sources(df, content), on=content, how="left", nulls_equal=True)
    # 3. near duplicates: groups whose embeddings are similar become one memory
    if s.dim and s.near_duplicates:
        groups = _near_duplicates(groups, s, provenance)
    merged = groups.with_columns(pl.col("authors").list.len().alias("support")).drop("authors")
    # 4. budget: rank by the score, per-author quota, then the total
    merged = merged.sort(
        ["importance", "support", "time", "text", "key"],
        descending=[True, True, True, False, False],
    )
    if s.agent_quota:
        merged = merged.filter(pl.int_range(pl.len()).over("author") < s.agent_quota)
    if s.max_records:
        merged = merged.head(s.max_records)
    cids = [
        hashlib.sha256(t.encode() + b"\0" + k.encode()).hexdigest()
        for t, k in zip(merged["text"].to_list(), merged["key"].to_list())
    ]
    if provenance:
        e = pl.element().struct
        merged = merged.with_columns(
            pl.col("sources").list.eval(
                pl.element().sort_by(e.field("entry_id"), e.field("record_id"))
            )
        )
    columns = ["id", "text", "embedding", "importance", "tags", "author", "time", "key"]
    merged = merged.with_columns(
        pl.when(pl.col("key") == "").then(None).otherwise(pl.col("key")).alias("key"),
        pl.Series("content_id", cids, dtype=pl.String),
    ).select(
        *(c for c in columns if s.dim or c != "embedding"),
        "support",
        "merged",
        "content_id",
        *(["sources"] if provenance else []),
    )
    return merged


def _sources(df: pl.DataFrame, content: list[str]) -> pl.DataFrame:
    """Per content group, every record in it: entry id, entry author, agent, record id."""
    import polars as pl

    return (
        df.sort(["entry", "id"])
        .group_by(content, maintain_order=True)
        .agg(
            pl.struct(
                pl.col("entry").alias("entry_id"),
                pl.col("entry_author"),
                pl.col("author").alias("agent"),
                pl.col("id").alias("record_id"),
            ).alias("sources")
        )
    )


def _near_duplicates(groups: pl.DataFrame, s: MemorySettings, provenance: bool) -> pl.DataFrame:
    """Join groups whose (keyless) embeddings are similar: connected components, each
    represented by its first group in the order (importance, time) desc, then input order."""
    import numpy as np
    import polars as pl

    groups = groups.sort(["importance", "time", "row"], descending=[True, True, False])
    mask = (groups["embedding"].is_not_null() & (groups["key"] == "")).to_numpy()
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return groups
    emb = groups["embedding"].filter(pl.Series(mask)).list.to_array(s.dim).to_numpy()
    q = quantise(np.asarray(emb, dtype=np.float64))
    pairs = similar_pairs(q, s.similarity)
    if not len(pairs):
        return groups
    first = components(groups.height, idx[pairs[:, 0]], idx[pairs[:, 1]])
    aggs = [
        pl.col("text").first(),
        pl.col("key").first(),
        pl.col("id").first(),
        pl.col("embedding").first(),
        pl.col("importance").max(),
        pl.col("tags").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
        pl.col("author").first(),
        pl.col("time").max(),
        pl.col("authors").list.explode().unique(),
        pl.col("merged").sum(),
        pl.col("row").first(),
    ]
    if provenance:
        aggs.append(pl.col("sources").list.explode())
    return (
        groups.with_columns(pl.Series("cluster", first))
        .group_by("cluster", maintain_order=True)
        .agg(aggs)
        .drop("cluster")
    )


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by edges (a[i], b[i]): each node's label is
    the smallest node in its component (min-label propagation with pointer jumping)."""
    import numpy as np

    label = np.arange(n)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def quantise(emb: np.ndarray) -> np.ndarray:
    """Each row scaled to max |x| = QUANT and rounded: exact integer arithmetic from here."""
    import numpy as np

    top = np.max(np.abs(emb), axis=1, keepdims=True)
    top[top == 0] = 1.0
    return np.rint(emb / top * QUANT)


def similar_pairs(q: np.ndarray, threshold: float) -> np.ndarray:
    """Index pairs (i < j) of rows whose cosine similarity is >= threshold (k x 2 array).

    Every pair up to EXACT_PAIRS_MAX rows; above, the pairs that share a bucket in one of
    LSH_TABLES random-hyperplane hash tables. Integer-valued inputs keep every dot product
    exact, so the same rows give the same pairs on every machine."""
    import numpy as np

    n = len(q)
    norms = np.einsum("ij,ij->i", q, q)
    live = norms > 0
    if n <= EXACT_PAIRS_MAX:
        found = []
        for start in range(0, n, BLOCK):
            a = np.arange(start, min(start + BLOCK, n))
            gram = q[a] @ q[start:].T
            i, j = np.nonzero(_similar(gram, norms[a][:, None], norms[start:][None, :], threshold))
            keep = a[i] < start + j
            found.append(np.stack([a[i][keep], start + j[keep]], axis=1))
        pairs = np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
        return pairs[live[pairs[:, 0]] & live[pairs[:, 1]]]
    bits = max(LSH_BITS, int(np.ceil(np.log2(n))))
    rng = np.random.Generator(np.random.PCG64(LSH_SEED))
    planes = rng.integers(-512, 513, size=(q.shape[1], LSH_TABLES * bits)).astype(np.float64)
    weights = np.int64(1) << np.arange(bits, dtype=np.int64)
    candidates = []
    above = (q @ planes) > 0
    for t in range(LSH_TABLES):
        sig = above[:, t * bits : (t + 1) * bits].astype(np.int64) @ weights
        order = np.argsort(sig, kind="stable")
        ss = sig[order]
        for d in range(1, n):  # pairs d apart in sorted order that share a bucket
            same = np.flatnonzero(ss[d:] == ss[:-d])
            if not len(same):
                break
            a, b = order[same], order[same + d]
            candidates.append(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))
    if not candidates:
        return np.empty((0, 2), dtype=np.int64)
    code = np.sort(np.concatenate(candidates))
    code = code[np.concatenate(([True], code[1:] != code[:-1]))]
    cand = np.stack([code // n, code % n], axis=1)
    cand = cand[live[cand[:, 0]] & live[cand[:, 1]]]
    keep = np.zeros(len(cand), dtype=bool)
    for start in range(0, len(cand), 1 << 16):
        c = cand[start : start + (1 << 16)]
        dots = np.einsum("ij,ij->i", q[c[:, 0]], q[c[:, 1]])
        keep[start : start + len(c)] = _similar(dots, norms[c[:, 0]], norms[c[:, 1]], threshold)
    return cand[keep]


def _similar(dots: np.ndarray, na: np.ndarray, nb: np.ndarray, threshold: float) -> np.ndarray:
    """cos >= threshold, as dot > 0 and dot**2 >= t**2 |a|**2 |b|**2 (no square roots)."""
    return (dots > 0) & (dots * dots >= threshold * threshold * (na * nb))


def to_jsonl(df: pl.DataFrame) -> bytes:
    """JSON Lines of a frame (polars' writer: shortest round-trip floats, column order)."""
    return df.write_ndjson().encode()


# -- recall -----------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def recall(
    memories: pl.DataFrame,
    query: str,
    k: int,
    embedding: list[float] | None,
    s: MemorySettings,
    index: KeywordIndex | None = None,
) -> tuple[str, list[tuple[float, dict[str, Any]]]]:
    """The `k` memories nearest the query: by cosine similarity to `embedding` when given,
    else by BM25 keyword ranking of `query` (over `index` when the caller kept one); ties by
    rank order. Returns (method, hits)."""
    import numpy as np

    if k <= 0 or not memories.height:
        return ("embedding" if embedding else "keyword"), []
    if embedding:
        if len(embedding) != s.dim:
            raise MemoryRecordError(
                f"query embedding has dimension {len(embedding)}, the namespace's dim is {s.dim}"
            )
        has = memories["embedding"].is_not_null().to_numpy()
        scores = np.full(memories.height, -np.inf)
        if has.any():
            emb = memories.filter(memories["embedding"].is_not_null())["embedding"]
            m = np.asarray(emb.list.to_array(s.dim).to_numpy(), dtype=np.float64)
            v = np.asarray(embedding, dtype=np.float64)
            denom = np.linalg.norm(m, axis=1) * (np.linalg.norm(v) or 1.0)
            denom[denom == 0] = 1.0
            scores[has] = (m @ v) / denom
        method = "embedding"
    else:
        scores = bm25(index or keyword_index(memories["text"]), query)
        method = "keyword"
    order = [int(i) for i in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[i])]
    if method == "keyword":
        order = [i for i in order if scores[i] > 0]
    rows = memories[order].drop("sources", strict=False).to_dicts()
    return method, [(float(scores[i]), row) for i, row in zip(order, rows, strict=True)]


@dataclass(frozen=True)
class KeywordIndex:
    """The memories' texts as lower-cased `\\w+` tokens, with their lengths: what BM25 needs
    from the texts, built once per merged view instead of at every query."""

    tokens: pl.Series
    lengths: np.ndarray
    avg_length: float


def keyword_index(texts: pl.Series) -> KeywordIndex:
    """Tokenise `texts` for `bm25` (vectorised with polars)."""
    import polars as pl

    tokens = texts.str.to_lowercase().str.extract_all(r"\w+")
    lengths = tokens.list.len().cast(pl.Float64).fill_null(0.0).to_numpy()
    avg = float(lengths.mean()) if len(lengths) else 0.0
    return KeywordIndex(tokens, lengths, avg)


def bm25(index: KeywordIndex, query: str, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 scores of the indexed texts for the words of `query` (lower-cased `\\w+` tokens),
    vectorised with polars (no Python loop per memory)."""
    import numpy as np
    import polars as pl

    terms = sorted(set(_WORD.findall(query.lower())))
    norm = k1 * (1 - b + b * index.lengths / (index.avg_length or 1.0))
    scores = np.zeros(len(index.lengths))
    for term in terms:
        tf = index.tokens.list.count_matches(term).cast(pl.Float64).fill_null(0.0).to_numpy()
        df = float(np.count_nonzero(tf))
        if not df:
            continue
        idf = math.log(1 + (len(tf) - df + 0.5) / (df + 0.5))
        scores += idf * tf * (k1 + 1) / (tf + norm)
    return scores
