"""Transports: how a session reaches a peer. One interface, two implementations.

`PeerClient` is the calling side of crdtd.v1.Peer as plain async methods on protobuf
messages; `PeerHandler` is the answering side (crdtd.sync.peer.LocalPeer). `GrpcTransport`
dials real gRPC channels (mutual TLS, or plain text on loopback) and serves a handler with
grpc.aio; `InProcessNetwork` connects handlers directly inside one process (messages are
still serialised, so byte counts and copies match the wire) for simulations and fast tests.
Both raise the same typed errors (crdtd.sync.status), so sessions never know which they have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from crdtd.crypto.x509 import TlsMaterial
from crdtd.errors import ConfigError, CrdtdError, PeerUnavailableError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import peer_pb2_grpc as pb_grpc
from crdtd.sync.config import SyncConfig
from crdtd.sync.membership import is_loopback
from crdtd.sync.status import peer_error, status_for
from crdtd.sync.tls import channel_credentials, server_credentials

SESSION_METADATA = "crdtd-session-bin"
"""Call metadata key carrying the session token (binary, hence the -bin suffix)."""
M = TypeVar("M", bound=Message)


@dataclass
class TransferStats:
    """What one client moved: calls (round trips) and serialized message bytes each way."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_total(self) -> int:
        """Bytes in both directions."""
        return self.bytes_sent + self.bytes_received

    def call(self, method: str) -> None:
        self.calls += 1
        self.by_method[method] = self.by_method.get(method, 0) + 1

    def snapshot(self) -> TransferStats:
        """A copy (to subtract from later)."""
        return TransferStats(self.calls, self.bytes_sent, self.bytes_received, dict(self.by_method))


@dataclass(frozen=True)
class Caller:
    """Who is calling a handler: session token, TLS-certified key id (None without TLS)."""

    session: bytes | None
    tls_key_id: bytes | None
    address: str = ""


class PeerHandler(Protocol):
    """The answering side of crdtd.v1.Peer (implemented by crdtd.sync.peer.LocalPeer)."""

    async def handshake(self, caller: Caller, req: pb.HandshakeRequest) -> pb.HandshakeResponse: ...

    async def prove(self, caller: Caller, req: pb.ProveRequest) -> pb.ProveResponse: ...

    async def digest(self, caller: Caller, req: pb.DigestRequest) -> pb.DigestResponse: ...

    def fetch_entries(
        self, caller: Caller, req: pb.FetchEntriesRequest
    ) -> AsyncIterator[pb.EntryBatch]: ...

    def fetch_chunks(
        self, caller: Caller, req: pb.FetchChunksRequest
    ) -> AsyncIterator[pb.ChunkPiece]: ...

    async def offer(self, caller: Caller, req: pb.OfferRequest) -> pb.OfferResponse: ...

    async def push(
        self, caller: Caller, messages: AsyncIterator[pb.PushMessage]
    ) -> pb.PushResponse: ...

    async def notify(self, caller: Caller, req: pb.NotifyRequest) -> pb.NotifyResponse: ...


class PeerClient(Protocol):
    """The calling side of crdtd.v1.Peer for one peer address."""

    address: str
    stats: TransferStats

    def set_session(self, token: bytes | None) -> None: ...

    async def handshake(self, req: pb.HandshakeRequest) -> pb.HandshakeResponse: ...

    async def prove(self, req: pb.ProveRequest) -> pb.ProveResponse: ...

    async def digest(self, req: pb.DigestRequest) -> pb.DigestResponse: ...

    def fetch_entries(self, req: pb.FetchEntriesRequest) -> AsyncIterator[pb.EntryBatch]: ...

    def fetch_chunks(self, req: pb.FetchChunksRequest) -> AsyncIterator[pb.ChunkPiece]: ...

    async def offer(self, req: pb.OfferRequest) -> pb.OfferResponse: ...

    async def push(self, messages: AsyncIterator[pb.PushMessage]) -> pb.PushResponse: ...

    async def notify(self, req: pb.NotifyRequest) -> pb.NotifyResponse: ...


class Listener(Protocol):
    """A served handler: where it listens, and how to stop it."""

    address: str

    async def stop(self, grace: float | None = None) -> None: ...


class Transport(Protocol):
    """Dials peers and serves our handler."""

    def connect(self, address: str) -> PeerClient: ...

    async def serve(self, handler: PeerHandler, bind: str) -> Listener: ...

    async def close(self) -> None: ...


# -- gRPC ------------------------------------------------------------------------------------


class GrpcPeerClient:
    """PeerClient over a grpc.aio channel; every error becomes a typed PeerError."""

    def __init__(self, address: str, channel: grpc.aio.Channel, config: SyncConfig) -> None:
        self.address = address
        self.stub = pb_grpc.PeerStub(channel)
        self.config = config
        self.stats = TransferStats()
        self._session: bytes | None = None

    def set_session(self, token: bytes | None) -> None:
        self._session = token

    def _metadata(self) -> tuple[tuple[str, bytes], ...] | None:
        return ((SESSION_METADATA, self._session),) if self._session else None

    def _error(self, exc: grpc.aio.AioRpcError) -> CrdtdError:
        return peer_error(exc.code(), exc.details() or "", self.address)

    async def _unary(self, name: str, method: Any, req: M) -> Any:
        self.stats.call(name)
        self.stats.bytes_sent += req.ByteSize()
        try:
            reply = await method(req, timeout=self.config.rpc_timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        self.stats.bytes_received += reply.ByteSize()
        return reply

    async def _stream(self, name: str, method: Any, req: M) -> AsyncIterator[Any]:
        self.stats.call(name)
        self.stats.bytes_sent += req.ByteSize()
        call = method(req, metadata=self._metadata())
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(
                        call.read(), timeout=self.config.stream_idle_timeout
                    )
                except asyncio.TimeoutError:
                    call.cancel()
                    raise PeerUnavailableError(
                        f"peer {self.address}: {name} stream idle for "
                        f"{self.config.stream_idle_timeout:g} s"
                    ) from None
                if msg is grpc.aio.EOF:
                    return
                self.stats.bytes_received += msg.ByteSize()
                yield msg
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            if not call.done():
                call.cancel()

    async def handshake(self, req: pb.HandshakeRequest) -> pb.HandshakeResponse:
        reply: pb.HandshakeResponse = await self._unary("Handshake", self.stub.Handshake, req)
        return reply

    async def prove(self, req: pb.ProveRequest) -> pb.ProveResponse:
        reply: pb.ProveResponse = await self._unary("Prove", self.stub.Prove, req)
        return reply

    async def digest(self, req: pb.DigestRequest) -> pb.DigestResponse:
        reply: pb.DigestResponse = await self._unary("Digest", self.stub.Digest, req)
        return reply

    def fetch_entries(self, req: pb.FetchEntriesRequest) -> AsyncIterator[pb.EntryBatch]:
        return self._stream("FetchEntries", self.stub.FetchEntries, req)

    def fetch_chunks(self, req: pb.FetchChunksRequest) -> AsyncIterator[pb.ChunkPiece]:
        return self._stream("FetchChunks", self.stub.FetchChunks, req)

    async def offer(self, req: pb.OfferRequest) -> pb.OfferResponse:
        reply: pb.OfferResponse = await self._unary("Offer", self.stub.Offer, req)
        return reply

    async def push(self, messages: AsyncIterator[pb.PushMessage]) -> pb.PushResponse:
        self.stats.call("Push")
        broken: list[BaseException] = []

        async def counted() -> AsyncIterator[pb.PushMessage]:
            try:
                async for m in messages:
                    self.stats.bytes_sent += m.ByteSize()
                    yield m
            except Exception as exc:  # grpc.aio cancels the call; keep the cause
                broken.append(exc)
                raise

        try:
            reply: pb.PushResponse = await self.stub.Push(counted(), metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        except asyncio.CancelledError:
            if not broken:
                raise
            raise PeerUnavailableError(
                f"peer {self.address}: push aborted while sending ({broken[0]!r})"
            ) from broken[0]
        self.stats.bytes_received += reply.ByteSize()
        return reply

    async def notify(self, req: pb.NotifyRequest) -> pb.NotifyResponse:
        reply: pb.NotifyResponse = await self._unary("Notify", self.stub.Notify, req)
        return reply


@dataclass
class _GrpcListener:
    address: str
    server: grpc.aio.Server

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


class GrpcTransport:
    """Real gRPC: one cached channel per peer address; mutual TLS unless `tls` is None
    (plain text; crdtd.sync.tls decides when that is allowed)."""

    def __init__(self, tls: TlsMaterial | None, config: SyncConfig | None = None) -> None:
        self.tls = tls
        self.config = config or SyncConfig()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            options = self.config.grpc_options()
            if self.tls is None:
                ch = grpc.aio.insecure_channel(address, options=options)
            else:
                ch = grpc.aio.secure_channel(
                    address, channel_credentials(self.tls), options=options
                )
            self._channels[address] = ch
        return ch

    def connect(self, address: str) -> GrpcPeerClient:
        """A client for `address` (the channel is shared between clients of one address)."""
        if self.tls is None and not is_loopback(address):
            raise ConfigError(
                f"refusing plain-text gRPC to {address}: plain text is for loopback only"
            )
        return GrpcPeerClient(address, self._channel(address), self.config)

    async def forget(self, address: str) -> None:
        """Close the cached channel to a peer (after it failed, so the next dial is fresh)."""
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def serve(self, handler: PeerHandler, bind: str) -> _GrpcListener:
        """Start a grpc.aio server for `handler` on `bind` (port 0 picks a free port)."""
        from crdtd.sync.guard import RequestGuard
        from crdtd.sync.service import PeerServicer

        server = grpc.aio.server(interceptors=[RequestGuard()], options=self.config.grpc_options())
        pb_grpc.add_PeerServicer_to_server(PeerServicer(handler, tls=self.tls is not None), server)
        host, _, _ = bind.rpartition(":")
        if self.tls is None:
            if not is_loopback(bind):
                raise ConfigError(f"refusing to serve plain-text gRPC on {bind}: loopback only")
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, server_credentials(self.tls))
        if port == 0:
            raise PeerUnavailableError(f"cannot listen on {bind}")
        await server.start()
        return _GrpcListener(f"{host}:{port}", server)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


# -- in-process ------------------------------------------------------------------------------


def _copy(msg: M) -> tuple[M, int]:
    data = msg.SerializeToString()
    return type(msg).FromString(data), len(data)


class InProcessNetwork:
    """Handlers registered by address; `down` addresses are unreachable (for simulations)."""

    def __init__(self, tls: bool = True) -> None:
        self.tls = tls
        self.handlers: dict[str, PeerHandler] = {}
        self.down: set[str] = set()
        self._next_port = 1

    def transport(self, key_id: bytes, config: SyncConfig | None = None) -> InProcessTransport:
        """A transport that dials as the node holding `key_id` (its simulated TLS identity)."""
        return InProcessTransport(self, key_id, config or SyncConfig())

    def handler(self, address: str) -> PeerHandler:
        h = self.handlers.get(address)
        if h is None or address in self.down:
            raise PeerUnavailableError(f"peer {address}: UNAVAILABLE: no node listening")
        return h


@dataclass
class _InProcessListener:
    address: str
    network: InProcessNetwork

    async def stop(self, grace: float | None = None) -> None:
        self.network.handlers.pop(self.address, None)


class InProcessPeerClient:
    """PeerClient that calls a handler directly (messages serialised, errors typed)."""

    def __init__(self, network: InProcessNetwork, address: str, key_id: bytes) -> None:
        self.network = network
        self.address = address
        self.key_id = key_id
        self.stats = TransferStats()
        self._session: bytes | None = None

    def set_session(self, token: bytes | None) -> None:
        self._session = token

    def _caller(self) -> Caller:
        return Caller(self._session, self.key_id if self.network.tls else None, "in-process")

    async def _unary(self, name: str, call: Callable[[Caller, Any], Awaitable[Any]], req: M) -> Any:
        self.stats.call(name)
        req, n = _copy(req)
        self.stats.bytes_sent += n
        try:
            reply = await call(self._caller(), req)
        except CrdtdError as exc:
            raise peer_error(status_for(exc), str(exc), self.address) from None
        reply, n = _copy(reply)
        self.stats.bytes_received += n
        return reply

    async def _stream(
        self, name: str, call: Callable[[Caller, Any], AsyncIterator[Any]], req: M
    ) -> AsyncIterator[Any]:
        self.stats.call(name)
        req, n = _copy(req)
        self.stats.bytes_sent += n
        try:
            async for msg in call(self._caller(), req):
                msg, n = _copy(msg)
                self.stats.bytes_received += n
                yield msg
        except CrdtdError as exc:
            raise peer_error(status_for(exc), str(exc), self.address) from None

    async def handshake(self, req: pb.HandshakeRequest) -> pb.HandshakeResponse:
        h = self.network.handler(self.address)
        reply: pb.HandshakeResponse = await self._unary("Handshake", h.handshake, req)
        return reply

    async def prove(self, req: pb.ProveRequest) -> pb.ProveResponse:
        h = self.network.handler(self.address)
        reply: pb.ProveResponse = await self._unary("Prove", h.prove, req)
        return reply

    async def digest(self, req: pb.DigestRequest) -> pb.DigestResponse:
        h = self.network.handler(self.address)
        reply: pb.DigestResponse = await self._unary("Digest", h.digest, req)
        return reply

    def fetch_entries(self, req: pb.FetchEntriesRequest) -> AsyncIterator[pb.EntryBatch]:
        h = self.network.handler(self.address)
        return self._stream("FetchEntries", h.fetch_entries, req)

    def fetch_chunks(self, req: pb.FetchChunksRequest) -> AsyncIterator[pb.ChunkPiece]:
        h = self.network.handler(self.address)
        return self._stream("FetchChunks", h.fetch_chunks, req)

    async def offer(self, req: pb.OfferRequest) -> pb.OfferResponse:
        h = self.network.handler(self.address)
        reply: pb.OfferResponse = await self._unary("Offer", h.offer, req)
        return reply

    async def push(self, messages: AsyncIterator[pb.PushMessage]) -> pb.PushResponse:
        h = self.network.handler(self.address)
        self.stats.call("Push")

        async def copied() -> AsyncIterator[pb.PushMessage]:
            async for m in messages:
                m2, n = _copy(m)
                self.stats.bytes_sent += n
                yield m2

        try:
            reply = await h.push(self._caller(), copied())
        except CrdtdError as exc:
            raise peer_error(status_for(exc), str(exc), self.address) from None
        reply, n = _copy(reply)
        self.stats.bytes_received += n
        return reply

    async def notify(self, req: pb.NotifyRequest) -> pb.NotifyResponse:
        h = self.network.handler(self.address)
        reply: pb.NotifyResponse = await self._unary("Notify", h.notify, req)
        return reply


class InProcessTransport:
    """Transport over an InProcessNetwork, dialing as one node."""

    def __init__(self, network: InProcessNetwork, key_id: bytes, config: SyncConfig) -> None:
        self.network = network
        self.key_id = key_id
        self.config = config

    def connect(self, address: str) -> InProcessPeerClient:
        return InProcessPeerClient(self.network, address, self.key_id)

    async def forget(self, address: str) -> None:
        return None

    async def serve(self, handler: PeerHandler, bind: str) -> _InProcessListener:
        """Register `handler`; a bind ending in ':0' gets the next free simulated port."""
        host, _, port = bind.rpartition(":")
        if port == "0":
            while f"{host}:{self.network._next_port}" in self.network.handlers:
                self.network._next_port += 1
            bind = f"{host}:{self.network._next_port}"
            self.network._next_port += 1
        self.network.handlers[bind] = handler
        self.network.down.discard(bind)
        return _InProcessListener(bind, self.network)

    async def close(self) -> None:
        return None
