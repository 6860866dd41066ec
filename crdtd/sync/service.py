"""The grpc.aio `crdtd.v1.Peer` servicer: a thin adapter from gRPC calls to a PeerHandler.

It only extracts who is calling (session token from metadata, the key id named by the TLS
client certificate) and turns typed crdtd errors into gRPC statuses (crdtd.sync.status).
All protocol logic lives in crdtd.sync.peer.LocalPeer, which the in-process transport calls
directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from crdtd.crypto.x509 import peer_key_id
from crdtd.errors import CrdtdError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.proto_gen.crdtd.v1 import peer_pb2_grpc as pb_grpc
from crdtd.sync.status import message_for, status_for
from crdtd.sync.transport import SESSION_METADATA, Caller, PeerHandler


class PeerServicer(pb_grpc.PeerServicer):
    """Adapts gRPC calls to `handler`; with `tls` every call must carry a client certificate."""

    def __init__(self, handler: PeerHandler, tls: bool) -> None:
        self.handler = handler
        self.tls = tls

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_METADATA:
                token = bytes(value) if isinstance(value, (bytes, bytearray)) else None
        tls_key = peer_key_id(context) if self.tls else None
        return Caller(token, tls_key, context.peer() or "")

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: CrdtdError) -> NoReturn:
        await context.abort(status_for(exc), message_for(exc))
        raise AssertionError("unreachable")  # context.abort raises

    async def Handshake(
        self, request: pb.HandshakeRequest, context: grpc.aio.ServicerContext
    ) -> pb.HandshakeResponse:
        try:
            return await self.handler.handshake(self._caller(context), request)
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def Prove(
        self, request: pb.ProveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProveResponse:
        try:
            return await self.handler.prove(self._caller(context), request)
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def Digest(
        self, request: pb.DigestRequest, context: grpc.aio.ServicerContext
    ) -> pb.DigestResponse:
        try:
            return await self.handler.digest(self._caller(context), request)
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def FetchEntries(
        self, request: pb.FetchEntriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EntryBatch]:
        try:
            async for batch in self.handler.fetch_entries(self._caller(context), request):
                yield batch
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def FetchChunks(
        self, request: pb.FetchChunksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChunkPiece]:
        try:
            async for piece in self.handler.fetch_chunks(self._caller(context), request):
                yield piece
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def Offer(
        self, request: pb.OfferRequest, context: grpc.aio.ServicerContext
    ) -> pb.OfferResponse:
        try:
            return await self.handler.offer(self._caller(context), request)
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def Push(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> pb.PushResponse:
        try:
            return await self.handler.push(self._caller(context), request_iterator)
        except CrdtdError as exc:
            await self._abort(context, exc)

    async def Notify(
        self, request: pb.NotifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.NotifyResponse:
        try:
            return await self.handler.notify(self._caller(context), request)
        except CrdtdError as exc:
            await self._abort(context, exc)
