"""Health probes need no credentials, also when the client API demands mutual TLS: a real
in-process daemon, real TLS, a probe that trusts the federation CA and presents nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crdtd.client import Client
from crdtd.errors import CrdtdError
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb
from tests.node_support import InProcessNode, federation


def probe(address: str, ca: bytes, service: str = "") -> int:
    """What a probe sees: TLS trusting the CA, no client certificate, no token."""
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(reply.status)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mtls_node_answers_health_probes_without_a_client_certificate(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1, auth={"mode": "mtls"})
    n = InProcessNode(config)
    try:
        ca = n.daemon.config.node.tls_material().ca_pem
        with n.client(timeout=10) as c:
            health = c.status().health_address
        assert health and health != n.address
        serving = health_pb2.HealthCheckResponse.SERVING
        assert probe(health, ca) == serving
        assert probe(health, ca, "crdtd.v1.Node") == serving
        # the health port serves health and nothing else
        with grpc.secure_channel(health, grpc.ssl_channel_credentials(ca)) as ch:
            status = ch.unary_unary(
                "/crdtd.v1.Node/Status",
                request_serializer=pb.StatusRequest.SerializeToString,
                response_deserializer=pb.StatusReply.FromString,
            )
            with pytest.raises(grpc.RpcError) as info:
                status(pb.StatusRequest(), timeout=10)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        # the client port still demands a certificate, health included
        with pytest.raises(grpc.RpcError):
            probe(n.address, ca)
        with Client(n.address, timeout=5) as plain, pytest.raises(CrdtdError):
            plain.status()
    finally:
        n.stop()


def test_health_port_from_the_config_is_where_probes_go(tmp_path: Path) -> None:
    port = free_port()
    (config,) = federation(tmp_path, 1, auth={"mode": "mtls", "health_port": port})
    n = InProcessNode(config)
    try:
        ca = n.daemon.config.node.tls_material().ca_pem
        assert probe(f"127.0.0.1:{port}", ca) == health_pb2.HealthCheckResponse.SERVING
        with n.client(timeout=10) as c:
            assert c.status().health_address == f"127.0.0.1:{port}"
    finally:
        n.stop()


def test_token_node_serves_health_on_its_client_port_only(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1)
    n = InProcessNode(config)
    try:
        with n.client(timeout=10) as c:
            assert c.status().health_address == ""
            c.wait_ready(10)  # the open health check on the client port, no token
    finally:
        n.stop()
