"""Undecodable request bodies become INVALID_ARGUMENT naming the message type, on every RPC.

gRPC Python deserialises a request before the servicer runs; a body that is not valid
protobuf raises DecodeError inside grpc, which a client sees as `UNKNOWN` ("Unexpected
DecodeError") on unary requests and as an internal error on streamed ones. `RequestGuard`
is one server interceptor, installed on the Peer server and on the client API server, that
swaps each handler's deserializer for one that returns an `Undecodable` marker instead of
raising, and refuses the marker before the servicer sees it: `INVALID_ARGUMENT` with
`MalformedRequestError`'s text (the method and the message type). Oversized bodies never
get here: grpc refuses them with `RESOURCE_EXHAUSTED` against the server's receive limit.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from crdtd.errors import MalformedRequestError


@dataclass(frozen=True)
class Undecodable:
    """What the guarded deserializer returns for bytes that do not parse."""

    error: MalformedRequestError


def _type_name(decode: Callable[[bytes], Any], method: str) -> str:
    """The protobuf full name of the message `decode` parses (generated `X.FromString`)."""
    cls = getattr(decode, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "") or f"request message of {method}")


def _safe(decode: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    type_name = _type_name(decode, method)

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception:  # any parse failure is the caller's bad bytes, never ours
            return Undecodable(
                MalformedRequestError(
                    f"{method}: the request body ({len(raw)} bytes) is not a valid "
                    f"{type_name} protobuf message"
                )
            )

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, bad: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad.error))


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that raises MalformedRequestError at the first undecodable message
    (the servicer maps it, like any ValidationError, to INVALID_ARGUMENT)."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error
        yield request


async def _result(value: Any) -> Any:
    """A handler's reply, awaited when the handler is a coroutine function."""
    return await value if inspect.isawaitable(value) else value


def _unary_in(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async for reply in behaviour(request, context):
                yield reply

        return stream_out

    async def once(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        return await _result(behaviour(request, context))

    return once


def _stream_in(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_out(
            requests: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for reply in behaviour(_checked(requests), context):
                    yield reply
            except MalformedRequestError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return stream_out

    async def once(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await _result(behaviour(_checked(requests), context))
        except MalformedRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    return once


def guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` with a deserializer that cannot raise and undecodable bodies refused."""
    decode = handler.request_deserializer
    if decode is None:
        return handler
    kw = {
        "request_deserializer": _safe(decode, method),
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_stream_in(handler.stream_stream), **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_stream_in(handler.stream_unary), **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_unary_in(handler.unary_stream), **kw)
    return grpc.unary_unary_rpc_method_handler(_unary_in(handler.unary_unary), **kw)


class RequestGuard(grpc.aio.ServerInterceptor):
    """Server interceptor: every method's undecodable request -> INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        return guarded(handler, details.method)


__all__ = ["RequestGuard", "Undecodable", "guarded"]
