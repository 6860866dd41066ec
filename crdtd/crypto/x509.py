"""Federation X.509 CA and node TLS certificates for gRPC mutual TLS.

TLS keys are ECDSA P-256 (gRPC's TLS stack refuses Ed25519 certificates). A node certificate
names the node's Ed25519 key id in a SAN URI `crdtd:node:<key id hex>` and its federation in
`crdtd:federation:<id>`; the sync handshake then proves the peer holds that Ed25519 key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crdtd.crypto.keys import check_private_file, write_private_file
from crdtd.errors import HandshakeError, KeyFileError

NODE_URI_PREFIX = "crdtd:node:"
FEDERATION_URI_PREFIX = "crdtd:federation:"
CA_VALIDITY = dt.timedelta(days=3650)
NODE_VALIDITY = dt.timedelta(days=825)
_CLOCK_SKEW = dt.timedelta(hours=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of an ECDSA key (write it with `write_private_file`)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_tls_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """Read an ECDSA P-256 key file (must be 0600)."""
    check_private_file(path)
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except Exception as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: expected an ECDSA P-256 key")
    return key


def load_certificate(data: bytes | str | Path) -> x509.Certificate:
    """Parse a PEM or DER certificate, or read one from a path."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except Exception as exc:
        raise HandshakeError(f"not an X.509 certificate ({exc})") from None


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def key_id_from_cert(cert: bytes | x509.Certificate) -> bytes:
    """The Ed25519 key id named by a node certificate's `crdtd:node:` SAN URI."""
    if not isinstance(cert, x509.Certificate):
        cert = load_certificate(cert)
    found = [u[len(NODE_URI_PREFIX) :] for u in _san_uris(cert) if u.startswith(NODE_URI_PREFIX)]
    if len(found) != 1:
        raise HandshakeError(f"certificate names {len(found)} crdtd:node key ids, expected 1")
    try:
        key_id = bytes.fromhex(found[0])
    except ValueError:
        raise HandshakeError(f"certificate key id {found[0][:70]!r} is not hex") from None
    if len(key_id) != 32:
        raise HandshakeError(f"certificate key id has {len(key_id)} bytes, expected 32")
    return key_id


def federation_id_from_cert(cert: bytes | x509.Certificate) -> str | None:
    """The federation id named by a `crdtd:federation:` SAN URI, or None."""
    if not isinstance(cert, x509.Certificate):
        cert = load_certificate(cert)
    for uri in _san_uris(cert):
        if uri.startswith(FEDERATION_URI_PREFIX):
            return uri[len(FEDERATION_URI_PREFIX) :]
    return None


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise HandshakeError unless `ca_cert` signed `cert` and `cert` is valid now."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as exc:
        raise HandshakeError(f"certificate not issued by the federation CA ({exc})") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise HandshakeError("certificate is outside its validity period")


@dataclass(frozen=True)
class FederationCA:
    """The federation's certificate authority: an ECDSA P-256 key and self-signed cert."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, federation_id: str) -> FederationCA:
        """A new CA whose certificate names the federation."""
        key = generate_tls_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crdtd"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"crdtd federation CA {federation_id}"),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(FEDERATION_URI_PREFIX + federation_id)]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM (distribute it; it is public)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def federation_id(self) -> str | None:
        """The federation the CA certificate names."""
        return federation_id_from_cert(self.cert)

    def save(self, cert_path: Path | str, key_path: Path | str) -> None:
        """Write the certificate (0644) and the key (0600)."""
        write_private_file(key_path, private_key_pem(self.key))
        Path(cert_path).write_bytes(self.cert_pem)

    @classmethod
    def load(cls, cert_path: Path | str, key_path: Path | str) -> FederationCA:
        """Read a CA written by `save`."""
        return cls(load_tls_key(key_path), load_certificate(Path(cert_path)))

    def issue_node_cert(
        self,
        key_id: bytes,
        tls_public_key: ec.EllipticCurvePublicKey,
        name: str,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    ) -> x509.Certificate:
        """A client+server certificate for a node's TLS key naming its Ed25519 key id."""
        if len(key_id) != 32:
            raise ValueError("key id must be 32 bytes")
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(NODE_URI_PREFIX + key_id.hex()),
        ]
        fed = self.federation_id
        if fed is not None:
            sans.append(x509.UniformResourceIdentifier(FEDERATION_URI_PREFIX + fed))
        for host in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crdtd"),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(tls_public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + NODE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(tls_public_key), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue_node_tls(
        self,
        key_id: bytes,
        name: str,
        cert_path: Path | str,
        key_path: Path | str,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
        *,
        overwrite: bool = False,
    ) -> x509.Certificate:
        """Generate a node TLS key, issue its certificate, and write both (key 0600)."""
        tls_key = generate_tls_key()
        cert = self.issue_node_cert(key_id, tls_key.public_key(), name, hosts)
        write_private_file(key_path, private_key_pem(tls_key), overwrite=overwrite)
        Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes gRPC needs for mutual TLS: our cert and key, and the federation CA."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    @classmethod
    def load(cls, cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> TlsMaterial:
        """Read the three files (the key must be 0600)."""
        check_private_file(key_path)
        paths = {"cert": Path(cert_path), "key": Path(key_path), "ca": Path(ca_path)}
        for label, path in paths.items():
            if not path.is_file():
                raise KeyFileError(f"{path}: TLS {label} file not found")
        return cls(paths["cert"].read_bytes(), paths["key"].read_bytes(), paths["ca"].read_bytes())

    @property
    def key_id(self) -> bytes:
        """The Ed25519 key id our certificate names."""
        return key_id_from_cert(self.cert_pem)

    def server_credentials(self, require_client_auth: bool = True) -> Any:
        """`grpc.ssl_server_credentials` demanding a client cert from the same CA."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=require_client_auth,
        )

    def channel_credentials(self) -> Any:
        """`grpc.ssl_channel_credentials` presenting our cert and trusting only the CA."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


def peer_certificate(context: Any) -> x509.Certificate:
    """The client certificate of a gRPC call (sync or aio ServicerContext)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise HandshakeError("peer presented no TLS certificate")
    return load_certificate(pems[0])


def peer_key_id(context: Any) -> bytes:
    """The Ed25519 key id named by the calling peer's TLS certificate."""
    return key_id_from_cert(peer_certificate(context))
