"""`crdtd.client.Client`: the Python client of a node's `crdtd.v1.Node` API.

```python
from crdtd.client import Client
with Client.from_config("fed/site-a.toml") as c:      # or Client("127.0.0.1:7401", token=...)
    r = c.push("model/mlp", "site-a.safetensors", metadata={"num_examples": 120})
    m = c.materialise("model/mlp", out="merged.safetensors")
    print(m.output_sha256, m.input_set_digest, m.excluded)
```

Errors come back as crdtd errors (`crdtd.node.status_map.error_for`); `.code` holds the gRPC
status code. Payloads travel in 1 MiB messages; pass `progress=True` for a progress bar.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.x509 import TlsMaterial
from crdtd.errors import ConfigError, LocalFileError
from crdtd.node.metadata_pb import meta_from_pb, meta_to_pb
from crdtd.node.status_map import error_for
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import node_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:7401"
Recalled = list[tuple[float, dict[str, Any]]]
Records = list[dict[str, Any]]
# Payload kind a member-signed push declares for a file suffix (the node checks the bytes).
SUFFIX_KINDS = {
    ".safetensors": "safetensors",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".sketch": "sketch",
}
PIECE = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class PushResult:
    """A push's acknowledgement: the entry is durable on the node."""

    entry_id: bytes
    payload_digest: bytes
    already_present: bool
    author: bytes
    seq: int
    erased: bool = False
    """Held but erased on arrival: every entry of this author is erased (`erase --author`)."""


@dataclass(frozen=True)
class EntryInfo:
    """One entry as List/Get report it."""

    id: bytes
    kind: str
    namespace: str
    author: bytes
    author_name: str
    seq: int
    payload_digest: bytes
    payload_size: int
    payload_kind: str
    metadata: dict[str, Any]
    removed: bool
    base_id: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (bytes as hex)."""
        return {
            "id": self.id.hex(),
            "kind": self.kind,
            "namespace": self.namespace,
            "author": self.author.hex(),
            "author_name": self.author_name,
            "seq": self.seq,
            "payload_digest": self.payload_digest.hex(),
            "payload_size": self.payload_size,
            "payload_kind": self.payload_kind,
            "metadata": {
                k: v.hex() if isinstance(v, bytes) else v for k, v in self.metadata.items()
            },
            "removed": self.removed,
            "base_id": self.base_id.hex(),
        }


@dataclass(frozen=True)
class MaterialiseResult:
    """What Materialise produced: hashes, inputs, who was left out and why."""

    output_sha256: str
    input_set_digest: str
    inputs: tuple[bytes, ...]
    excluded: tuple[tuple[bytes, str], ...]
    strategy: str
    params_json: str
    out_path: str
    size: int
    seconds: float
    local_path: str = ""
    kind: str = "model"
    format: str = "safetensors"
    summary: dict[str, Any] = field(default_factory=dict)
    provenance_sha256: str = ""
    provenance_path: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": self.format,
            "summary": self.summary,
            "provenance_sha256": self.provenance_sha256,
            "provenance_path": self.provenance_path,
            "output_sha256": self.output_sha256,
            "input_set_digest": self.input_set_digest,
            "inputs": [i.hex() for i in self.inputs],
            "excluded": [{"author": a.hex(), "reason": r} for a, r in self.excluded],
            "strategy": self.strategy,
            "params": self.params_json,
            "out_path": self.out_path,
            "local_path": self.local_path,
            "size": self.size,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class PeerInfo:
    name: str
    address: str
    key_id: bytes
    alive: bool
    in_sync: bool
    seconds_since_sync: float
    revoked: bool = False


@dataclass(frozen=True)
class QueryResult:
    """A SQL query's rows (`pyarrow.Table`), the namespaces it read and their set digests."""

    table: Any
    namespaces: tuple[str, ...]
    input_set_digests: dict[str, str]
    seconds: float


@dataclass(frozen=True)
class NamespaceInfo:
    """A namespace as Status reports it: kind, visible contributions, bytes, settings."""

    name: str
    kind: str
    contributions: int
    payload_bytes: int
    settings: dict[str, Any]


@dataclass(frozen=True)
class NodeStatus:
    """A node's identity, state root, entry counts and peers."""

    node_id: bytes
    node_name: str
    federation_id: str
    state_root: bytes
    entry_counts: dict[str, int]
    peers: tuple[PeerInfo, ...]
    version: str
    uptime_seconds: float
    peer_address: str
    client_address: str
    metrics_address: str
    namespaces: tuple[str, ...] = field(default=())
    namespace_info: tuple[NamespaceInfo, ...] = field(default=())
    health_address: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "node_name": self.node_name,
            "federation_id": self.federation_id,
            "state_root": self.state_root.hex(),
            "entry_counts": dict(sorted(self.entry_counts.items())),
            "peers": [
                {
                    "name": p.name,
                    "address": p.address,
                    "key_id": p.key_id.hex(),
                    "alive": p.alive,
                    "in_sync": p.in_sync,
                    "revoked": p.revoked,
                    "seconds_since_sync": None
                    if p.seconds_since_sync < 0
                    else round(p.seconds_since_sync, 3),
                }
                for p in self.peers
            ],
            "version": self.version,
            "uptime_seconds": round(self.uptime_seconds, 3),
            "peer_address": self.peer_address,
            "client_address": self.client_address,
            "metrics_address": self.metrics_address,
            "health_address": self.health_address,
            "namespaces": list(self.namespaces),
            "namespace_info": [
                {
                    "name": n.name,
                    "kind": n.kind,
                    "contributions": n.contributions,
                    "payload_bytes": n.payload_bytes,
                    "settings": n.settings,
                }
                for n in self.namespace_info
            ],
        }


def _entry_info(s: pb.EntrySummary) -> EntryInfo:
    return EntryInfo(
        id=s.id,
        kind=s.kind,
        namespace=s.namespace,
        author=s.author,
        author_name=s.author_name,
        seq=s.seq,
        payload_digest=s.payload_digest,
        payload_size=s.payload_size,
        payload_kind=s.payload_kind,
        metadata={kv.key: meta_from_pb(kv.value) for kv in s.metadata},
        removed=s.removed,
        base_id=s.base_id,
    )


def _readable_file(payload: str | os.PathLike[str]) -> Path:
    """The file a push names, or LocalFileError saying why it cannot be pushed."""
    path = Path(os.fspath(payload))
    if not path.exists():
        raise LocalFileError(f"{path}: no such file to push")
    if not path.is_file():
        raise LocalFileError(f"{path}: not a regular file (push one file per contribution)")
    if not os.access(path, os.R_OK):
        raise LocalFileError(f"{path}: not readable by this user")
    return path


def _output_dir(target: Path) -> None:
    """LocalFileError unless `target` can be created: its directory exists and is one."""
    parent = target.parent
    if not parent.is_dir():
        raise LocalFileError(f"{target}: directory {parent} does not exist")
    if target.is_dir():
        raise LocalFileError(f"{target}: is a directory; name the output file")


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=desc, disable=not enabled)


class Client:
    """A connection to one node's client API (blocking calls)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        tls: TlsMaterial | None = None,
        timeout: float | None = None,
        max_message: int = 8 << 20,
    ) -> None:
        self.address = address or os.environ.get("CRDTD_NODE") or DEFAULT_ADDRESS
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ]
        if tls is not None:
            self.channel = grpc.secure_channel(self.address, tls.channel_credentials(), options)
        else:
            self.channel = grpc.insecure_channel(self.address, options)
        self.stub = pb_grpc.NodeStub(self.channel)
        self._tls = tls is not None
        self._token = token
        self._token_file = token_file

    @property
    def _meta(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token (read from its file on first use, since a node
        creates its token file when it first starts)."""
        if self._token is None and self._token_file is not None:
            from crdtd.node.config import read_token

            self._token = read_token(self._token_file)
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    @classmethod
    def from_config(cls, path: Path | str, timeout: float | None = None) -> Client:
        """Address and credentials from a node's config: its token file, or its own TLS
        certificate when the client API uses mutual TLS."""
        from crdtd.node.config import load_daemon_config

        cfg = load_daemon_config(path, check_strategies=False)
        token_file = cfg.token_file if cfg.auth_mode == "token" else None
        tls = cfg.node.tls_material() if cfg.client_tls else None
        return cls(cfg.client_address, token_file=token_file, tls=tls, timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def _call(self, fn: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return fn(request, metadata=self._meta, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _stream(self, it: Any) -> Iterator[Any]:
        try:
            yield from it
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _error(self, err: grpc.RpcError) -> Exception:
        """The crdtd error for a failed call; a node that cannot be reached is named, with
        what most often causes it."""
        code, details = err.code(), err.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
            if self._tls:
                hint = "is the node running, and are this certificate and CA the federation's?"
            elif "Socket closed" in details or "handshake" in details.lower():
                hint = (
                    'if its client API uses TLS ([auth] mode = "mtls" or tls = true), connect '
                    "with its config (--config NODE.toml) or --cert, --tls-key and --ca"
                )
            else:
                hint = "is the node running? (--config NODE.toml or --node HOST:PORT)"
            details = f"no node answers at {self.address}: {hint} ({details})"
        return error_for(code, details)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the node answers (health check SERVING) or raise PeerError."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.FutureTimeoutError:
            from crdtd.errors import PeerError

            raise PeerError(f"node {self.address} did not answer within {timeout} s") from None
        except grpc.RpcError as err:
            raise self._error(err) from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            from crdtd.errors import PeerError

            raise PeerError(f"node {self.address} is not serving ({reply.status})")

    def push(
        self,
        namespace: str,
        payload: str | os.PathLike[str] | bytes,
        *,
        metadata: Mapping[str, Any] | None = None,
        base_id: bytes | None = None,
        payload_kind: str = "",
        key: NodeKey | None = None,
        signed_entry: bytes = b"",
        progress: bool = False,
    ) -> PushResult:
        """Push a payload (file path or bytes); signed by the node, or by `key` (a member key)
        when given, or carried already signed in `signed_entry` (e.g. by the admin). Returns
        once the node has made the entry durable."""
        data = payload if isinstance(payload, bytes) else None
        path = None if data is not None else _readable_file(payload)  # type: ignore[arg-type]
        size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
        header = pb.PushHeader(
            namespace=namespace,
            payload_kind=payload_kind,
            payload_size=size,
            base_id=base_id or b"",
            metadata=[
                pb.KeyValue(key=k, value=meta_to_pb(v)) for k, v in sorted((metadata or {}).items())
            ],
        )
        if signed_entry:
            header.signed_entry = signed_entry
        elif key is not None:
            suffix = path.suffix.lower() if path is not None else ""
            kind = payload_kind or SUFFIX_KINDS.get(suffix, "bytes")
            header.payload_kind = kind
            header.signed_entry = self._sign_contribution(
                key, namespace, data, path, kind, metadata, base_id
            )

        def requests() -> Iterator[pb.PushRequest]:
            yield pb.PushRequest(header=header)
            with _bar(size, "push", progress) as bar:
                if data is not None:
                    for i in range(0, len(data), PIECE):
                        bar.update(min(PIECE, len(data) - i))
                        yield pb.PushRequest(data=data[i : i + PIECE])
                    return
                with open(path, "rb") as f:  # type: ignore[arg-type]
                    while block := f.read(PIECE):
                        bar.update(len(block))
                        yield pb.PushRequest(data=block)

        r = self._call(self.stub.PushContribution, requests())
        return PushResult(
            r.entry_id, r.payload_digest, r.already_present, r.author, r.seq, r.erased
        )

    def _sign_contribution(
        self,
        key: NodeKey,
        namespace: str,
        data: bytes | None,
        path: Path | None,
        payload_kind: str,
        metadata: Mapping[str, Any] | None,
        base_id: bytes | None,
    ) -> bytes:
        from crdtd.state.entry import make_contribution
        from crdtd.store.chunks import BytesSource, FileSource

        manifest = BytesSource(data).manifest if data is not None else FileSource(path).manifest  # type: ignore[arg-type]
        seq, prev = self.chain_head(key.key_id)
        entry = make_contribution(
            key,
            seq,
            prev,
            namespace,
            manifest.digest,
            manifest.size,
            payload_kind=payload_kind,
            base_id=base_id,
            metadata=dict(metadata or {}),
        )
        return entry.to_bytes()

    def chain_head(self, author: bytes = b"") -> tuple[int, bytes | None]:
        """(next seq, prev) of `author`'s hash chain as the node holds it."""
        r = self._call(self.stub.ChainHead, pb.ChainHeadRequest(author=author))
        return int(r.next_seq), (r.prev or None)

    def submit(self, entry: Any) -> tuple[bytes, str]:
        """Apply a signed entry without payload (an `Entry` or its wire bytes)."""
        wire = entry if isinstance(entry, bytes) else entry.to_bytes()
        r = self._call(self.stub.SubmitEntry, pb.SubmitEntryRequest(entry=wire))
        return r.entry_id, r.status

    def list(
        self, namespace: str = "", *, include_removed: bool = False, author: bytes = b""
    ) -> list[EntryInfo]:
        """Entries the node holds (contributions of `namespace`, or every kind)."""
        r = self._call(
            self.stub.List,
            pb.ListRequest(namespace=namespace, include_removed=include_removed, author=author),
        )
        return [_entry_info(s) for s in r.entries]

    def get(self, entry_id: bytes, out: BinaryIO | None = None) -> tuple[EntryInfo, bytes]:
        """An entry and its payload (written to `out` when given, else returned)."""
        info: EntryInfo | None = None
        parts: list[bytes] = []
        for msg in self._stream(self.stub.Get(pb.GetRequest(id=entry_id), metadata=self._meta)):
            if msg.WhichOneof("part") == "entry":
                info = _entry_info(msg.entry)
            elif out is not None:
                out.write(msg.data)
            else:
                parts.append(msg.data)
        assert info is not None
        return info, b"".join(parts)

    def erase(
        self,
        ids: Iterable[bytes] = (),
        *,
        author: bytes | None = None,
        reason: str = "",
        key: NodeKey | None = None,
        removal: Any = None,
    ) -> tuple[bytes, int]:
        """Erase entries; returns (removal id, entries erased on this node).

        The removal is signed by the node (its own entries only), by `key` (a member key
        that signs nothing elsewhere: its next seq is taken from this node), or given
        already signed as `removal` (e.g. by `Federation.sign_admin_entry` for the admin,
        whose hash chain lives in the federation directory).
        """
        targets = sorted(set(ids))
        request = pb.EraseRequest(ids=targets, author=author or b"", reason=reason)
        if removal is not None:
            wire = removal if isinstance(removal, bytes) else removal.to_bytes()
            request = pb.EraseRequest(signed_removal=wire)
        elif key is not None:
            from crdtd.state.entry import make_removal

            seq, prev = self.chain_head(key.key_id)
            removal = make_removal(key, seq, prev, targets, target_author=author, reason=reason)
            request = pb.EraseRequest(signed_removal=removal.to_bytes())
        r = self._call(self.stub.Erase, request)
        return r.removal_id, int(r.erased)

    def materialise(
        self,
        namespace: str,
        *,
        out: str | os.PathLike[str] | None = None,
        remote_path: str = "",
        strategy: str = "",
        params: Mapping[str, Any] | None = None,
        dtype: str = "",
        format: str = "",
        provenance: bool = False,
        progress: bool = False,
        round: int | None = None,
    ) -> MaterialiseResult:
        """Merge the namespace on the node. With `remote_path` the node writes the file on its
        own disk; otherwise the bytes stream back (to `out` when given). With `provenance`
        the provenance file lands beside the output (`OUT.provenance.FORMAT`). In a rounds
        namespace `round` picks the round whose global to build (None: the latest)."""
        result, _, _ = self._materialise(
            namespace,
            out=out,
            remote_path=remote_path,
            strategy=strategy,
            params=params,
            dtype=dtype,
            format=format,
            provenance=provenance,
            progress=progress,
            round=round,
        )
        return result

    def _materialise(
        self,
        namespace: str,
        *,
        out: str | os.PathLike[str] | None = None,
        remote_path: str = "",
        strategy: str = "",
        params: Mapping[str, Any] | None = None,
        dtype: str = "",
        format: str = "",
        provenance: bool = False,
        progress: bool = False,
        round: int | None = None,
    ) -> tuple[MaterialiseResult, bytes, bytes]:
        """Materialise; returns the result and, when `out` is None and nothing is written on
        the node, the output and provenance bytes."""
        request = pb.MaterialiseRequest(
            namespace=namespace,
            strategy=strategy,
            params=[
                pb.Param(key=k, value=v if isinstance(v, str) else json.dumps(v))
                for k, v in sorted((params or {}).items())
            ],
            out_path=remote_path,
            dtype=dtype,
            format=format,
            provenance=provenance,
            round=round,
        )
        target = Path(out) if out is not None and not remote_path else None
        if target is not None:
            _output_dir(target)
        tmp = None if target is None else target.with_name(f".{target.name}.part")
        prov_tmp = None if target is None else target.with_name(f".{target.name}.prov.part")
        handle = None if tmp is None else tmp.open("wb")
        prov_handle = None
        data: list[bytes] = []
        prov: list[bytes] = []
        result = None
        done_ok = False
        try:
            with _bar(0, "materialise", progress) as bar:
                stream = self.stub.Materialise(request, metadata=self._meta, timeout=self.timeout)
                for msg in self._stream(stream):
                    part = msg.WhichOneof("part")
                    if part == "data":
                        if handle is not None:
                            handle.write(msg.data)
                        else:
                            data.append(msg.data)
                        bar.update(len(msg.data))
                    elif part == "provenance":
                        if prov_tmp is not None:
                            if prov_handle is None:
                                prov_handle = prov_tmp.open("wb")
                            prov_handle.write(msg.provenance)
                        else:
                            prov.append(msg.provenance)
                    else:
                        result = msg.result
            done_ok = result is not None
        finally:
            if handle is not None:
                handle.close()
            if prov_handle is not None:
                prov_handle.close()
            if not done_ok:  # a refused or broken merge leaves no partial file behind
                for part_file in (tmp, prov_tmp):
                    if part_file is not None:
                        part_file.unlink(missing_ok=True)
        if result is None:
            raise ConfigError(f"node {self.address}: Materialise ended without a result")
        local_prov = ""
        if tmp is not None and target is not None:
            os.replace(tmp, target)
            if prov_handle is not None and prov_tmp is not None:
                beside = target.with_name(f"{target.name}.provenance.{result.provenance_format}")
                os.replace(prov_tmp, beside)
                local_prov = str(beside)
        done = MaterialiseResult(
            output_sha256=result.output_sha256,
            input_set_digest=result.input_set_digest,
            inputs=tuple(result.inputs),
            excluded=tuple((x.author, x.reason) for x in result.excluded),
            strategy=result.strategy,
            params_json=result.params_json,
            out_path=result.out_path,
            size=int(result.size),
            seconds=result.seconds,
            local_path=str(target) if target is not None else "",
            kind=result.kind or "model",
            format=result.format or "safetensors",
            summary=json.loads(result.summary_json or "{}"),
            provenance_sha256=result.provenance_sha256,
            provenance_path=result.provenance_path or local_prov,
        )
        return done, b"".join(data), b"".join(prov)

    def global_model(
        self, namespace: str, round: int | None = None
    ) -> tuple[MaterialiseResult, bytes]:
        """A rounds namespace's global of `round` (None: the latest), and its bytes in memory."""
        result, data, _ = self._materialise(namespace, round=round)
        return result, data

    def table(self, namespace: str, *, as_: str = "arrow") -> Any:
        """The merged table of a table namespace, streamed as Arrow IPC: a `pyarrow.Table`, or
        a polars / pandas DataFrame with `as_="polars"` / `as_="pandas"`."""
        from crdtd.kinds.table import read_output

        if as_ not in ("arrow", "polars", "pandas"):
            raise ConfigError(f"as_={as_!r}: expected 'arrow', 'polars' or 'pandas'")
        _, data, _ = self._materialise(namespace, format="arrow")
        table = read_output(data, "arrow")
        if as_ == "polars":
            import polars as pl

            return pl.from_arrow(table)
        if as_ == "pandas":
            return table.to_pandas()
        return table

    def sql(self, query: str) -> QueryResult:
        """Run one SELECT on the node over its merged table namespaces (DuckDB); each
        namespace is a table, by name (`"records/x"`) or alias (`records_x`)."""
        import pyarrow as pa

        parts: list[bytes] = []
        result = None
        stream = self.stub.Sql(
            pb.SqlRequest(query=query), metadata=self._meta, timeout=self.timeout
        )
        for msg in self._stream(stream):
            if msg.WhichOneof("part") == "data":
                parts.append(msg.data)
            else:
                result = msg.result
        if result is None:
            raise ConfigError(f"node {self.address}: Sql ended without a result")
        with pa.ipc.open_stream(pa.BufferReader(b"".join(parts))) as r:
            table = r.read_all()
        return QueryResult(
            table=table,
            namespaces=tuple(result.namespaces),
            input_set_digests=dict(result.input_set_digests),
            seconds=result.seconds,
        )

    def recall(
        self,
        namespace: str,
        query: str = "",
        *,
        k: int = 5,
        embedding: Sequence[float] | None = None,
    ) -> Recalled:
        """The `k` memories of a memory namespace nearest the query, best first, as
        (score, memory): by cosine similarity to `embedding` when given, else by keyword."""
        r = self._call(
            self.stub.Recall,
            pb.RecallRequest(
                namespace=namespace, query=query, k=k, embedding=list(embedding or [])
            ),
        )
        return [(m.score, json.loads(m.record_json)) for m in r.memories]

    def memories(self, namespace: str) -> Records:
        """The merged memories of a memory namespace (rank order), streamed as JSON Lines."""
        _, data, _ = self._materialise(namespace)
        return [json.loads(line) for line in data.decode().splitlines() if line]

    def status(self) -> NodeStatus:
        """The node's identity, state root, entry counts and peers."""
        r = self._call(self.stub.Status, pb.StatusRequest())
        return NodeStatus(
            node_id=r.node_id,
            node_name=r.node_name,
            federation_id=r.federation_id,
            state_root=r.state_root,
            entry_counts=dict(r.entry_counts),
            peers=tuple(
                PeerInfo(
                    p.name, p.address, p.key_id, p.alive, p.in_sync, p.seconds_since_sync, p.revoked
                )
                for p in r.peers
            ),
            version=r.version,
            uptime_seconds=r.uptime_seconds,
            peer_address=r.peer_address,
            client_address=r.client_address,
            metrics_address=r.metrics_address,
            namespaces=tuple(r.namespaces),
            namespace_info=tuple(
                NamespaceInfo(
                    n.name,
                    n.kind,
                    int(n.contributions),
                    int(n.payload_bytes),
                    json.loads(n.settings_json or "{}"),
                )
                for n in r.namespace_status
            ),
            health_address=r.health_address,
        )

    def trust(self) -> pb.TrustReply:
        """Trust scores of every member as the node computes them."""
        return self._call(self.stub.Trust, pb.TrustRequest())

    def watch(self, namespace: str = "") -> Iterator[pb.Event]:
        """Events from now on (entries applied, erased, refused; peers up and down)."""
        return self._stream(
            self.stub.Watch(pb.WatchRequest(namespace=namespace), metadata=self._meta)
        )


__all__ = [
    "Client",
    "EntryInfo",
    "MaterialiseResult",
    "NamespaceInfo",
    "NodeStatus",
    "PeerInfo",
    "PushResult",
    "QueryResult",
]
