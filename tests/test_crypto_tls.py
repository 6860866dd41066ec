"""Node certificates chain to the federation CA and work for real gRPC mutual TLS."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from crdtd.crypto import federation
from crdtd.crypto.node_config import NodeConfig
from crdtd.crypto.x509 import (
    TlsMaterial,
    federation_id_from_cert,
    key_id_from_cert,
    load_certificate,
    peer_key_id,
    verify_issued_by,
)
from crdtd.errors import HandshakeError

METHOD = "/crdtd.test.Echo/WhoAmI"


@pytest.fixture(scope="module")
def feds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeConfig]:
    home = tmp_path_factory.mktemp("feds")
    federation.init(home / "fed", federation_id="fed-one")
    federation.init(home / "other", federation_id="fed-two")
    return {
        "a": federation.add_node(home / "fed", "a"),
        "b": federation.add_node(home / "fed", "b"),
        "stranger": federation.add_node(home / "other", "stranger"),
    }


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    return peer_key_id(context)


@pytest.fixture(scope="module")
def server(feds: dict[str, NodeConfig]) -> Iterator[int]:
    handler = grpc.method_handlers_generic_handler(
        "crdtd.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)}
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_secure_port("127.0.0.1:0", feds["a"].tls_material().server_credentials())
    srv.start()
    yield port
    srv.stop(grace=None)


def call(port: int, material: TlsMaterial) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", material.channel_credentials()) as channel:
        return channel.unary_unary(METHOD)(b"", timeout=5)


def test_node_certificate_chains_to_the_ca_and_names_the_key_id(
    feds: dict[str, NodeConfig],
) -> None:
    cfg = feds["a"]
    cert = load_certificate(cfg.tls_cert)
    verify_issued_by(cert, load_certificate(cfg.tls_ca_cert))
    assert key_id_from_cert(cert) == cfg.load_key().key_id
    assert federation_id_from_cert(cert) == "fed-one"
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_certificate_from_another_ca_does_not_chain(feds: dict[str, NodeConfig]) -> None:
    stranger = load_certificate(feds["stranger"].tls_cert)
    with pytest.raises(HandshakeError, match="not issued by the federation CA"):
        verify_issued_by(stranger, load_certificate(feds["a"].tls_ca_cert))


def test_member_connects_with_mutual_tls_and_server_sees_its_key_id(
    feds: dict[str, NodeConfig], server: int
) -> None:
    assert call(server, feds["b"].tls_material()) == feds["b"].load_key().key_id


def test_client_cert_from_another_ca_is_refused(feds: dict[str, NodeConfig], server: int) -> None:
    stranger = feds["stranger"].tls_material()
    # trusts our CA (so only the client-cert check can fail) but presents a foreign cert
    mixed = TlsMaterial(stranger.cert_pem, stranger.key_pem, feds["b"].tls_material().ca_pem)
    with pytest.raises(grpc.RpcError) as info:
        call(server, mixed)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_that_trusts_another_ca_refuses_the_server(
    feds: dict[str, NodeConfig], server: int
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(server, feds["stranger"].tls_material())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_without_node_uri_has_no_key_id(feds: dict[str, NodeConfig]) -> None:
    with pytest.raises(HandshakeError, match="0 crdtd:node key ids"):
        key_id_from_cert(feds["a"].tls_material().ca_pem)
