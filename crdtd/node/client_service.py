"""`crdtd.v1.Node`: the client API servicer (grpc.aio), a thin adapter over `NodeCore`.

Every handler runs the blocking work with `asyncio.to_thread`, maps errors to gRPC status
codes through `status_map` (one place), and counts itself in the metrics. Authentication is
an interceptor: a bearer token compared in constant time, or mutual TLS enforced by the
transport; the standard health service stays open so probes need no credentials.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from crdtd import __version__
from crdtd.errors import (
    ConfigError,
    CrdtdError,
    MalformedEntryError,
    OversizedPayloadError,
    TruncatedPayloadError,
    UnauthenticatedError,
    UnauthorizedError,
    echo,
)
from crdtd.kinds.base import canonical_json, provenance_beside
from crdtd.node.core import EntryView, NodeCore, PeerView
from crdtd.node.logs import event, get_logger
from crdtd.node.materialise import (
    Materialised,
    MaterialiseRequest,
    materialise,
    output_name,
    parse_param,
)
from crdtd.node.metadata_pb import meta_from_pb, meta_to_pb, unique_pairs
from crdtd.node.status_map import message_for, status_for
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import node_pb2_grpc as pb_grpc
from crdtd.state.entry import Kind

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Node"].full_name
STREAM_PIECE = 1 << 20  # bytes per data message sent back (<= 1 MiB)
OPEN_METHODS = ("/grpc.health.v1.Health/",)

log = get_logger("crdtd.node.client")
T = TypeVar("T")


# -- messages ------------------------------------------------------------------------------


def summary_of(view: EntryView) -> pb.EntrySummary:
    """The EntrySummary message of an entry and its local status."""
    e = view.entry
    out = pb.EntrySummary(
        id=e.id,
        kind=e.kind.name.lower(),
        author=e.author,
        seq=e.seq,
        removed=view.removed,
        author_name=view.author_name,
    )
    if e.kind is Kind.CONTRIBUTION:
        b = e.body
        out.namespace = b.namespace  # type: ignore[union-attr]
        out.payload_digest = b.payload_digest  # type: ignore[union-attr]
        out.payload_size = b.payload_size  # type: ignore[union-attr]
        out.payload_kind = b.payload_kind  # type: ignore[union-attr]
        out.base_id = b.base_id or b""  # type: ignore[union-attr]
        for k in sorted(b.metadata):  # type: ignore[union-attr]
            out.metadata.append(pb.KeyValue(key=k, value=meta_to_pb(b.metadata[k])))  # type: ignore[union-attr]
    return out


# -- error mapping and metrics, in one wrapper per handler shape --------------------------------


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    code = status_for(exc)
    if not isinstance(exc, CrdtdError):
        log.exception("rpc.internal_error", extra={"crdtd_fields": {"method": method}})
    else:
        event(log, "rpc.refused", method=method, code=code.name, error=str(exc))
    await context.abort(code, message_for(exc))


def unary(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a unary-response handler: typed errors become statuses; metrics per call."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: NodeService, request: Any, context: grpc.aio.ServicerContext) -> T:
        start = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = status_for(exc).name
            await _abort(context, exc, name)
            raise AssertionError("unreachable") from None
        finally:
            self.core.metrics.rpc_total.labels(name, code).inc()
            self.core.metrics.rpc_duration.labels(name).observe(time.perf_counter() - start)

    return wrapper


def streaming(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """Wrap a server-streaming handler the same way."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(
        self: NodeService, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[T]:
        start = time.perf_counter()
        code = "OK"
        try:
            async for item in method(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = status_for(exc).name
            await _abort(context, exc, name)
        finally:
            self.core.metrics.rpc_total.labels(name, code).inc()
            self.core.metrics.rpc_duration.labels(name).observe(time.perf_counter() - start)

    return wrapper


async def _iterate(it: Iterator[T]) -> AsyncIterator[T]:
    """Drive a blocking iterator from worker threads."""
    sentinel = object()
    while True:
        item = await asyncio.to_thread(next, it, sentinel)
        if item is sentinel:
            return
        yield item  # type: ignore[misc]


# -- the servicer ---------------------------------------------------------------------------


class NodeService(pb_grpc.NodeServicer):
    """The client API over one NodeCore."""

    def __init__(self, core: NodeCore, nudge: Callable[[], None] | None = None) -> None:
        self.core = core
        self.nudge = nudge or (lambda: None)
        cfg = core.config
        self.push_slots = asyncio.Semaphore(cfg.max_concurrent_pushes)
        self.merge_slots = asyncio.Semaphore(cfg.max_concurrent_materialise)
        self.scratch = cfg.node.data_dir / "tmp"
        self.scratch.mkdir(parents=True, exist_ok=True)
        for stale in self.scratch.iterdir():  # left by a crash mid-push or mid-merge
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()

    # -- writing ------------------------------------------------------------------------------

    @unary
    async def PushContribution(
        self, request_iterator: AsyncIterator[pb.PushRequest], context: grpc.aio.ServicerContext
    ) -> pb.PushReply:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            raise MalformedEntryError(
                "empty push: the first message must be a PushHeader"
            ) from None
        if first.WhichOneof("part") != "header":
            raise MalformedEntryError("push: the first message must be a PushHeader, not data")
        h = first.header
        self.core.check_push_header(h.namespace, h.payload_kind, h.payload_size)
        metadata = unique_pairs(h.metadata, "push metadata", meta_from_pb)
        async with self.push_slots:
            path = self.scratch / f"push-{uuid.uuid4().hex}"
            try:
                received = await self._receive(request_iterator, path, h.payload_size)
                outcome = await asyncio.to_thread(
                    self.core.push_file,
                    path,
                    h.namespace,
                    h.payload_kind,
                    metadata,
                    h.base_id or None,
                    h.signed_entry,
                )
            finally:
                path.unlink(missing_ok=True)
        e = outcome.entry
        erased = self.core.is_erased(e.id)
        event(
            log,
            "push.accepted",
            entry=e.id,
            namespace=h.namespace,
            bytes=received,
            author=e.author[:8],
            seq=e.seq,
            already_present=outcome.already_present,
            erased=erased,
        )
        if not outcome.already_present:
            self.nudge()
        return pb.PushReply(
            entry_id=e.id,
            payload_digest=e.body.payload_digest,  # type: ignore[union-attr]
            already_present=outcome.already_present,
            author=e.author,
            seq=e.seq,
            erased=erased,
        )

    async def _receive(
        self, messages: AsyncIterator[pb.PushRequest], path: Path, declared: int
    ) -> int:
        """Write the payload messages to `path`; exactly `declared` bytes or a typed error."""
        received = 0
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            pending: list[bytes] = []
            size = 0
            async for msg in messages:
                if msg.WhichOneof("part") != "data":
                    raise MalformedEntryError("push: a second PushHeader arrived mid-payload")
                received += len(msg.data)
                if received > declared:
                    raise OversizedPayloadError(
                        f"push: more than the declared payload_size of {declared} bytes arrived"
                    )
                pending.append(msg.data)
                size += len(msg.data)
                if size >= 4 << 20:
                    await asyncio.to_thread(_write_all, fd, pending)
                    pending, size = [], 0
            await asyncio.to_thread(_write_all, fd, pending)
        finally:
            await asyncio.to_thread(os.close, fd)
        if received < declared:
            raise TruncatedPayloadError(
                f"push: the stream ended after {received} of {declared} declared bytes"
            )
        return received

    @unary
    async def SubmitEntry(
        self, request: pb.SubmitEntryRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitEntryReply:
        result = await asyncio.to_thread(self.core.submit, request.entry)
        event(log, "entry.submitted", entry=result.entry_id, status=result.status.value)
        if result.status.value != "duplicate":
            self.nudge()
        return pb.SubmitEntryReply(entry_id=result.entry_id, status=result.status.value)

    @unary
    async def Erase(
        self, request: pb.EraseRequest, context: grpc.aio.ServicerContext
    ) -> pb.EraseReply:
        entry, erased = await asyncio.to_thread(
            self.core.erase,
            list(request.ids),
            request.author or None,
            request.reason,
            request.signed_removal,
        )
        event(log, "erase.applied", removal=entry.id, erased=erased)
        self.nudge()
        return pb.EraseReply(removal_id=entry.id, erased=erased)

    # -- reading ------------------------------------------------------------------------------

    @unary
    async def ChainHead(
        self, request: pb.ChainHeadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChainHeadReply:
        author, seq, prev = await asyncio.to_thread(self.core.chain_head, request.author or None)
        return pb.ChainHeadReply(author=author, next_seq=seq, prev=prev or b"")

    @unary
    async def List(
        self, request: pb.ListRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReply:
        views = await asyncio.to_thread(
            self.core.list_entries, request.namespace, request.include_removed, request.author
        )
        return pb.ListReply(entries=[summary_of(v) for v in views])

    @streaming
    async def Get(
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetChunk]:
        view = await asyncio.to_thread(self.core.get, request.id)
        if request.summary_only:
            yield pb.GetChunk(entry=summary_of(view))
            return
        chunks = await asyncio.to_thread(lambda: iter(self.core.payload_chunks(request.id)))
        first = await asyncio.to_thread(next, chunks, None)  # fail before the summary goes out
        yield pb.GetChunk(entry=summary_of(view))
        if first is not None:
            for piece in _pieces(first):
                yield pb.GetChunk(data=piece)
            async for chunk in _iterate(chunks):
                for piece in _pieces(chunk):
                    yield pb.GetChunk(data=piece)

    @unary
    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        return await asyncio.to_thread(self._status, self.core.peers())

    def _status(self, peer_views: list[PeerView]) -> pb.StatusReply:
        core, cfg = self.core, self.core.config
        counts: dict[str, int] = {}
        for (kind, state), n in core.entry_counts().items():
            if state == "live":
                counts[kind] = counts.get(kind, 0) + n
            counts[state] = counts.get(state, 0) + n
        visible = core.visible_counts()
        counts["visible"] = sum(n for n, _ in visible.values())
        now = time.monotonic()
        peers = [
            pb.PeerStatus(
                name=p.name,
                address=p.address,
                key_id=p.key_id,
                alive=p.alive,
                in_sync=p.in_sync,
                seconds_since_sync=-1.0 if p.last_sync is None else now - p.last_sync,
                revoked=p.revoked,
            )
            for p in core.peer_status(peer_views)
        ]
        return pb.StatusReply(
            node_id=core.key_id,
            node_name=cfg.node.name,
            federation_id=cfg.node.federation.id,
            state_root=core.state.merkle_root(),
            entry_counts=counts,
            peers=peers,
            version=__version__,
            uptime_seconds=now - core.started,
            peer_address=cfg.node.advertise,
            client_address=cfg.client_address,
            metrics_address=cfg.metrics_address,
            health_address=core.health_address,
            namespaces=sorted(cfg.namespaces),
            namespace_status=namespace_status(core, visible),
        )

    @unary
    async def Trust(
        self, request: pb.TrustRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrustReply:
        return await asyncio.to_thread(self._trust)

    def _trust(self) -> pb.TrustReply:
        from crdtd.trust.scores import SCALE

        a = self.core.assessment()
        s = a.scores
        names = self.core.member_names()
        threshold = self.core.config.trust.default.threshold
        out = pb.TrustReply(threshold=threshold / SCALE, digest=s.digest().hex())
        for kid in sorted(s.dims):
            dims = {d: v / SCALE for d, v in zip(_DIMS, s.dims[kid])}
            trust = s.trust.get(kid, 0)
            out.scores.append(
                pb.TrustScore(
                    key_id=kid,
                    name=names.get(kid, ""),
                    dimensions=dims,
                    trust=trust / SCALE,
                    gated=a.revocations.is_revoked(kid) or trust < threshold,
                    revoked=a.revocations.is_revoked(kid),
                    faults=[f.describe() for f in s.faults.get(kid, ())],
                )
            )
        return out

    @streaming
    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Event]:
        async for ev in self.core.events.subscribe():
            if request.namespace and ev.namespace and ev.namespace != request.namespace:
                continue
            if request.namespace and not ev.namespace and ev.kind.startswith("entry_"):
                continue
            yield pb.Event(
                kind=ev.kind,
                entry_id=ev.entry_id,
                namespace=ev.namespace,
                detail=ev.detail,
                author=ev.author,
                entry_kind=ev.entry_kind,
            )

    # -- materialise --------------------------------------------------------------------------

    @streaming
    async def Materialise(
        self, request: pb.MaterialiseRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MaterialiseChunk]:
        core = self.core
        ns = core.namespace(request.namespace)
        asked = MaterialiseRequest(
            strategy=request.strategy,
            params=unique_pairs(request.params, "materialise params", parse_param),
            dtype=request.dtype,
            format=request.format,
            provenance=request.provenance,
            round=request.round if request.HasField("round") else None,
        )
        target = (
            self._out_path(request.out_path, output_name(ns, asked)) if request.out_path else None
        )
        work = self.scratch / f"merge-{uuid.uuid4().hex}"
        started = time.perf_counter()
        result = "error"
        prov_path = ""
        try:
            async with self.merge_slots:
                done: Materialised = await asyncio.to_thread(materialise, core, ns, asked, work)
            if target is not None:
                await asyncio.to_thread(_place, done.path, target)
                if done.provenance is not None:
                    beside = provenance_beside(target, done.provenance)
                    await asyncio.to_thread(_place, done.provenance, beside)
                    prov_path = str(beside)
            else:
                async for piece in _iterate(_file_pieces(done.path)):
                    yield pb.MaterialiseChunk(data=piece)
                if done.provenance is not None:
                    async for piece in _iterate(_file_pieces(done.provenance)):
                        yield pb.MaterialiseChunk(provenance=piece)
            result = "ok"
        finally:
            core.metrics.materialise_duration.labels(result).observe(time.perf_counter() - started)
            await asyncio.to_thread(shutil.rmtree, work, True)
        event(
            log,
            "materialise.done",
            namespace=ns.name,
            kind=done.kind,
            strategy=done.strategy,
            inputs=len(done.inputs),
            excluded=len(done.excluded),
            sha256=done.sha256,
            seconds=round(done.seconds, 3),
        )
        yield pb.MaterialiseChunk(result=result_message(done, target, prov_path))

    @streaming
    async def Sql(
        self, request: pb.SqlRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SqlChunk]:
        from crdtd.sql.node import query_node

        async with self.merge_slots:
            done = await asyncio.to_thread(query_node, self.core, request.query)
        data = await asyncio.to_thread(arrow_stream_bytes, done.table)
        for piece in _pieces(data):
            yield pb.SqlChunk(data=piece)
        event(
            log,
            "sql.done",
            rows=done.table.num_rows,
            namespaces=",".join(sorted(done.digests)),
            seconds=round(done.seconds, 3),
        )
        yield pb.SqlChunk(
            result=pb.SqlResult(
                rows=done.table.num_rows,
                namespaces=sorted(done.digests),
                input_set_digests=done.digests,
                seconds=done.seconds,
            )
        )

    @unary
    async def Recall(
        self, request: pb.RecallRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecallReply:
        from crdtd.kinds.memory import recall_node

        async with self.merge_slots:
            method, hits, digest = await asyncio.to_thread(
                recall_node,
                self.core,
                request.namespace,
                request.query,
                request.k or 5,
                list(request.embedding),
            )
        return pb.RecallReply(
            memories=[
                pb.RecalledMemory(score=score, record_json=canonical_json(rec))
                for score, rec in hits
            ],
            method=method,
            input_set_digest=digest,
        )

    def _out_path(self, text: str, default_name: str) -> Path:
        """Where out_path writes: inside [materialise] output_dir unless allow_any_path; a
        directory gets the kind's file name, a file must carry its suffix."""
        cfg = self.core.config
        root = cfg.output_dir.resolve()
        try:
            path = Path(text)
            path = (path if path.is_absolute() else root / path).resolve()
            if not cfg.allow_any_path and not path.is_relative_to(root):
                raise UnauthorizedError(
                    f"out_path {echo(text)} is outside [materialise] output_dir {root} "
                    f"(set allow_any_path = true in {cfg.path} to allow it)"
                )
            if path.is_dir():
                path = path / default_name
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"out_path {echo(text)} is not a usable path ({why})") from None
        suffix = Path(default_name).suffix
        if path.suffix != suffix:
            raise ConfigError(f"out_path {echo(text)} must name a {suffix} file or a directory")
        return path


def namespace_status(core: NodeCore, held: dict[str, tuple[int, int]]) -> list[pb.NamespaceStatus]:
    """Kind, visible contributions and payload bytes (`held`: namespace -> both, the store's
    kept counts) of every declared namespace (of every namespace held, when none are
    declared)."""
    from crdtd.kinds.base import canonical_json

    names = sorted(core.config.namespaces) or sorted(held)
    out = []
    for name in names:
        ns = core.config.namespace(name)
        if ns is None:
            continue
        n, size = held.get(name, (0, 0))
        out.append(
            pb.NamespaceStatus(
                name=name,
                kind=ns.kind,
                contributions=n,
                payload_bytes=size,
                settings_json=canonical_json(ns.describe()),
            )
        )
    return out


def result_message(
    done: Materialised, target: Path | None, provenance_path: str = ""
) -> pb.MaterialiseResult:
    """The MaterialiseResult message of a materialisation."""
    prov = done.provenance
    return pb.MaterialiseResult(
        output_sha256=done.sha256,
        input_set_digest=done.input_set_digest,
        inputs=list(done.inputs),
        excluded=[
            pb.Excluded(author=x.author, reason=x.reason, entries=list(x.entries))
            for x in done.excluded
        ],
        strategy=done.strategy,
        params_json=done.params_json,
        out_path=str(target) if target is not None else "",
        size=done.size,
        seconds=done.seconds,
        kind=done.kind,
        format=done.format,
        summary_json=done.summary_json,
        provenance_sha256=done.provenance_sha256,
        provenance_format=prov.suffix.lstrip(".") if prov is not None else "",
        provenance_path=provenance_path,
    )


_DIMS = ("integrity", "causality", "consistency", "gossip", "model")


def arrow_stream_bytes(table: Any) -> bytes:
    """A pyarrow Table as Arrow IPC stream bytes."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue())


def _write_all(fd: int, pieces: list[bytes]) -> None:
    for p in pieces:
        view = memoryview(p)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def _pieces(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), STREAM_PIECE):
        yield data[i : i + STREAM_PIECE]


def _file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(STREAM_PIECE):
            yield block


def _place(src: Path, dst: Path) -> None:
    """Move the merged file to `dst` atomically (copy + fsync + rename across filesystems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(src, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


# -- authentication -------------------------------------------------------------------------


class TokenAuth(grpc.aio.ServerInterceptor):
    """Require `authorization: Bearer <token>` on every call except health checks."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(given, self.expected):
            return await continuation(details)
        why = "no bearer token" if not given else "wrong bearer token"
        err = UnauthenticatedError(
            f"{why} for {echo(details.method)}: send 'authorization: Bearer <token>' "
            "(the token is in the node's [auth] token_file)"
        )
        event(log, "rpc.unauthenticated", method=details.method, reason=why)
        return _refuse(await continuation(details), err)


def _refuse(handler: grpc.RpcMethodHandler | None, err: CrdtdError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that fails with `err`'s status."""
    code, message = status_for(err), message_for(err)

    async def unary_fail(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream_fail(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield None  # pragma: no cover

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(unary_fail)
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_fail, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary_fail, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream_fail, **kw)
    return grpc.unary_unary_rpc_method_handler(unary_fail, **kw)


__all__ = [
    "SERVICE_NAME",
    "NodeService",
    "TokenAuth",
    "meta_from_pb",
    "meta_to_pb",
    "summary_of",
]
