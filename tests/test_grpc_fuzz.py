"""Garbage, truncated and oversized request bodies on every RPC of both services, sent as raw
bytes to a real daemon (client API with a bearer token; Peer service over mutual TLS with a
real session): each gets a typed status, the state root does not move, and the node keeps
serving. Methods are enumerated from the service descriptors, so a new RPC is covered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.node.config import load_daemon_config, read_token
from crdtd.proto_gen.crdtd.v1 import node_pb2, peer_pb2
from crdtd.state.e4 import E4State
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import Identity
from crdtd.sync.session import Connection
from crdtd.sync.transport import SESSION_METADATA, GrpcTransport
from tests.node_support import NAMESPACE, InProcessNode, federation

SERVICES = (
    node_pb2.DESCRIPTOR.services_by_name["Node"],
    peer_pb2.DESCRIPTOR.services_by_name["Peer"],
)
METHODS: tuple[MethodDescriptor, ...] = tuple(m for s in SERVICES for m in s.methods)
TYPED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Statuses a well-formed request may get (never UNKNOWN or INTERNAL)."""

GARBAGE = (
    b"\xff\xff\xff",  # a tag varint that never ends
    b"\x07",  # wire type 7 does not exist
    b"\x0a\x05ab",  # field 1 claims 5 bytes, 2 follow
    b"\x00",  # field number 0
    b"\x0a\xff\xff\xff\xff\x0f",  # a length of 4 GiB
    bytes(range(256)),
)


def path_of(m: MethodDescriptor) -> str:
    return f"/{m.containing_service.full_name}/{m.name}"


def message_class(m: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(m.input_type)


def decodes(m: MethodDescriptor, body: bytes) -> bool:
    try:
        message_class(m).FromString(body)
    except DecodeError:
        return False
    return True


def populated(msg: Message, depth: int = 0) -> Message:
    """`msg` with every field set (strings and bytes long enough to cut inside)."""
    for f in msg.DESCRIPTOR.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry or depth > 2:
                continue
            child = getattr(msg, f.name).add() if _repeated(f) else getattr(msg, f.name)
            populated(child, depth + 1)
            continue
        value: object = {
            FieldDescriptor.TYPE_STRING: "x" * 12,
            FieldDescriptor.TYPE_BYTES: b"y" * 12,
            FieldDescriptor.TYPE_BOOL: True,
            FieldDescriptor.TYPE_DOUBLE: 1.5,
            FieldDescriptor.TYPE_FLOAT: 1.5,
            FieldDescriptor.TYPE_ENUM: 1,
        }.get(f.type, 7)
        if _repeated(f):
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)
    return msg


def _repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def truncations(m: MethodDescriptor) -> list[bytes]:
    """Prefixes of a fully populated request that no longer decode (shortest, middle and
    longest); a message without fields carries one unknown length-delimited field."""
    raw = populated(message_class(m)()).SerializeToString() or b"\x7a\x0c" + b"z" * 12
    cut = [raw[:k] for k in range(1, len(raw)) if not decodes(m, raw[:k])]
    assert cut, f"{path_of(m)}: no truncation of its populated request fails to decode"
    return sorted({cut[0], cut[len(cut) // 2], cut[-1]}, key=len)


@dataclass
class Target:
    node: InProcessNode
    node_channel: grpc.Channel
    peer_channel: grpc.Channel
    node_metadata: tuple[tuple[str, object], ...]
    peer_metadata: tuple[tuple[str, object], ...]
    limits: dict[str, int]

    def root(self) -> bytes:
        return self.node.core.state.merkle_root()

    def call(
        self, m: MethodDescriptor, bodies: list[bytes], timeout: float = 20
    ) -> grpc.StatusCode:
        """Send raw `bodies` (one for unary requests) and return the status code."""
        node = m.containing_service.name == "Node"
        channel = self.node_channel if node else self.peer_channel
        meta = self.node_metadata if node else self.peer_metadata
        path = path_of(m)
        try:
            if m.client_streaming and m.server_streaming:
                list(channel.stream_stream(path)(iter(bodies), metadata=meta, timeout=timeout))
            elif m.client_streaming:
                channel.stream_unary(path)(iter(bodies), metadata=meta, timeout=timeout)
            elif m.server_streaming:
                (body,) = bodies
                list(channel.unary_stream(path)(body, metadata=meta, timeout=timeout))
            else:
                (body,) = bodies
                channel.unary_unary(path)(body, metadata=meta, timeout=timeout)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    def still_serving(self) -> None:
        with self.node.client(timeout=20) as c:
            c.wait_ready(20)
            assert c.status().state_root == self.root()


def _session(config: Path, peer_address: str, data_dir: Path) -> bytes:
    """A real Peer session token of member `config` at `peer_address`."""
    node = load_daemon_config(config, check_strategies=False).node
    state = E4State.open(data_dir, node.federation.admin, node.federation.policy)
    identity = Identity(
        node.load_key(),
        node.membership_bytes(),
        node.federation.id,
        node.federation.admin,
        node.federation.policy,
    )

    async def handshake() -> bytes:
        transport = GrpcTransport(node.tls_material(), SyncConfig())
        client = transport.connect(peer_address)
        try:
            await Connection(client, identity, state).ensure()
            token = client._session
            assert token
            return token
        finally:
            await transport.close()

    try:
        return asyncio.run(handshake())
    finally:
        state.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    server_config, fuzzer_config = federation(root, 2)
    node = InProcessNode(server_config)
    cfg = node.daemon.config
    peer_address = cfg.node.advertise
    token = _session(fuzzer_config, peer_address, root / "fuzzer-state")
    tls = load_daemon_config(fuzzer_config, check_strategies=False).node.tls_material()
    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    node_channel = grpc.insecure_channel(node.address, unlimited)
    peer_channel = grpc.secure_channel(peer_address, tls.channel_credentials(), unlimited)
    sync = SyncConfig.from_gossip_settings(cfg.node.gossip)
    yield Target(
        node,
        node_channel,
        peer_channel,
        (("authorization", f"Bearer {read_token(cfg.token_file)}"),),
        ((SESSION_METADATA, token),),
        {"Node": cfg.max_message, "Peer": sync.max_message_bytes},
    )
    node_channel.close()
    peer_channel.close()
    node.stop()


def test_every_rpc_of_both_services_is_enumerated() -> None:
    names = {path_of(m) for m in METHODS}
    assert {"/crdtd.v1.Node/PushContribution", "/crdtd.v1.Peer/Push"} <= names
    assert len(names) == sum(len(s.methods) for s in SERVICES) >= 18


@pytest.mark.parametrize("method", METHODS, ids=path_of)
def test_garbage_and_truncated_bodies_get_invalid_argument_naming_the_type(
    target: Target, method: MethodDescriptor
) -> None:
    before = target.root()
    bodies = [*GARBAGE, *truncations(method)]
    for body in bodies:
        assert not decodes(method, body)
        code = target.call(method, [body])
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (path_of(method), body[:16], code)
    assert target.root() == before
    target.still_serving()


def test_the_status_message_names_the_method_and_message_type(target: Target) -> None:
    (status,) = [m for m in METHODS if path_of(m) == "/crdtd.v1.Node/Status"]
    try:
        target.node_channel.unary_unary(path_of(status))(
            b"\xff\xff", metadata=target.node_metadata, timeout=20
        )
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "crdtd.v1.StatusRequest" in err.details()
        assert "/crdtd.v1.Node/Status" in err.details()
    else:
        raise AssertionError("a garbage body was accepted")


@pytest.mark.parametrize("method", METHODS, ids=path_of)
def test_oversized_bodies_get_resource_exhausted(target: Target, method: MethodDescriptor) -> None:
    before = target.root()
    body = b"\x0a" + b"\x00" * target.limits[method.containing_service.name]
    assert target.call(method, [body]) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert target.root() == before
    target.still_serving()


FIRST_OF_STREAM: dict[str, Message] = {
    "/crdtd.v1.Node/PushContribution": node_pb2.PushRequest(
        header=node_pb2.PushHeader(namespace=NAMESPACE, payload_size=100)
    ),
    "/crdtd.v1.Peer/Push": peer_pb2.PushMessage(record=peer_pb2.EntryRecord()),
}
"""A first message each streamed request gets past, so garbage arrives mid-stream."""


@pytest.mark.parametrize("method", [m for m in METHODS if m.client_streaming], ids=path_of)
def test_garbage_after_a_valid_first_message_gets_invalid_argument(
    target: Target, method: MethodDescriptor
) -> None:
    before = target.root()
    first = FIRST_OF_STREAM.get(path_of(method), message_class(method)()).SerializeToString()
    for garbage in GARBAGE:
        code = target.call(method, [first, garbage])
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (path_of(method), garbage[:16], code)
    assert target.root() == before
    target.still_serving()


def test_garbage_without_credentials_is_refused_as_unauthenticated(target: Target) -> None:
    for m in METHODS:
        if m.containing_service.name != "Node":
            continue
        try:
            target.node_channel.unary_unary(path_of(m))(b"\xff\xff", timeout=20)
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED, path_of(m)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(index=st.integers(0, len(METHODS) - 1), body=st.binary(max_size=96))
def test_generated_bodies_get_only_typed_statuses_and_change_nothing(
    target: Target, index: int, body: bytes
) -> None:
    method = METHODS[index]
    before = target.root()
    watch = path_of(method) == "/crdtd.v1.Node/Watch"
    code = target.call(method, [body], timeout=1.0 if watch else 20)
    if not decodes(method, body):
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (path_of(method), body, code)
    elif watch:
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED  # an open event stream
    else:
        assert code in TYPED, (path_of(method), body, code)
    assert target.root() == before


def test_a_peer_hello_naming_a_100k_character_federation_gets_a_short_refusal(
    target: Target,
) -> None:
    (handshake,) = [m for m in METHODS if path_of(m) == "/crdtd.v1.Peer/Handshake"]
    hello = peer_pb2.HandshakeRequest(
        federation_id="f" * 100_000, protocol_version=1, nonce=b"n" * 32
    )
    try:
        target.peer_channel.unary_unary(path_of(handshake))(
            hello.SerializeToString(), metadata=target.peer_metadata, timeout=20
        )
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED, err.details()[:200]
        assert "federation" in err.details() and len(err.details()) < 600
    else:
        raise AssertionError("a hello from another federation was accepted")
