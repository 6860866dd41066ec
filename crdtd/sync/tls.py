"""Channel security for the Peer service: mutual TLS with the federation CA, or refusal.

Mutual TLS is the only mode for real deployments: the server demands a client certificate
issued by the federation CA, the client trusts only that CA, and the handshake then checks
that the certificate names the Ed25519 key that signs (crdtd.sync.handshake). Plain text is
allowed for development only when the config asks for it (`plaintext_loopback = true`) AND
every address involved (bind, advertise, bootstrap) is a loopback address; anything else is
a ConfigError naming the address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from crdtd.crypto.x509 import TlsMaterial
from crdtd.errors import ConfigError
from crdtd.sync.membership import is_loopback


def choose_security(
    plaintext_loopback: bool,
    addresses: Iterable[str],
    load_tls: Callable[[], TlsMaterial],
    where: str = "config",
) -> TlsMaterial | None:
    """The TLS material to use, or None for plain text (only loopback, only when asked)."""
    if not plaintext_loopback:
        return load_tls()
    for address in addresses:
        if address and not is_loopback(address):
            raise ConfigError(
                f"{where}: plain-text gRPC is allowed only when every peer address is loopback, "
                f"but {address!r} is not; remove plaintext_loopback to use mutual TLS"
            )
    return None


def security_for_node(config: Any) -> TlsMaterial | None:
    """Decide for a loaded node config (crdtd.crypto.node_config.NodeConfig)."""
    addresses = [
        f"{config.peer_host}:{config.peer_port}",
        config.advertise,
        *config.bootstrap,
    ]
    return choose_security(
        config.plaintext_loopback,
        addresses,
        config.tls_material,
        f"{config.path}: [peer] plaintext_loopback",
    )


def server_credentials(material: TlsMaterial) -> Any:
    """grpc server credentials that require a client certificate from the federation CA."""
    return material.server_credentials(require_client_auth=True)


def channel_credentials(material: TlsMaterial) -> Any:
    """grpc channel credentials presenting our certificate and trusting only the CA."""
    return material.channel_credentials()
