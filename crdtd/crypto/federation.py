"""A federation directory: the admin key, the X.509 CA, and one ready config per node.

`init(dir)` creates the admin identity and CA; `add_node(dir, name)` creates a node's keys,
its TLS certificate, an admin-signed membership entry and `DIR/NAME.toml`. The admin signs
entries in one hash chain whose head lives in `admin-chain.toml`, so the admin never forks
its own chain (which would be a provable equivocation). Layout: docs/identity.md.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.node_config import (
    FederationSettings,
    GossipSettings,
    NodeConfig,
    load_node_config,
    valid_node_name,
)
from crdtd.crypto.schemes import ED25519, HYBRID, PublicKeys, SignaturePolicy
from crdtd.crypto.toml_io import read_toml, render_table
from crdtd.crypto.x509 import FederationCA
from crdtd.errors import ConfigError, CrdtdError
from crdtd.state.entry import Entry, Kind, make_contribution, make_membership, make_revocation

FEDERATION_FILE = "federation.toml"
ADMIN_KEY = "admin.key"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CHAIN_FILE = "admin-chain.toml"
NODES_FILE = "nodes.toml"
ADMIN_ENTRIES = "admin-entries"
LOCK_FILE = ".lock"

_FED_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class NodeRecord:
    """A node added to the federation (kept in nodes.toml for bootstrap lists and ports)."""

    name: str
    key_id: bytes
    host: str
    peer_port: int
    client_port: int
    metrics_port: int

    @property
    def peer_address(self) -> str:
        """host:port other nodes dial."""
        return f"{self.host}:{self.peer_port}"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one federation directory (admin chain, nodes list)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Federation:
    """A loaded federation directory."""

    directory: Path
    settings: FederationSettings

    @property
    def id(self) -> str:
        """The federation id."""
        return self.settings.id

    @property
    def policy(self) -> SignaturePolicy:
        """Signatures every entry must carry."""
        return self.settings.policy

    @property
    def admin(self) -> PublicKeys:
        """The admin's public keys (the root of membership)."""
        return self.settings.admin

    @classmethod
    def load(cls, directory: Path | str) -> Federation:
        """Read DIR/federation.toml (ConfigError names what is missing or wrong)."""
        directory = Path(directory).resolve()
        path = directory / FEDERATION_FILE
        raw = read_toml(path)
        table = raw.get("federation")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: missing [federation] table (not a federation directory?)")
        known = {
            "id",
            "signatures",
            "admin_key_id",
            "admin_ed25519_public",
            "admin_ml_dsa_65_public",
        }
        for key in table:
            if key not in known:
                raise ConfigError(f"{path}: [federation] {key}: unknown key")
        try:
            values = {
                "id": str(table["id"]),
                "signatures": str(table.get("signatures", ED25519)),
                "admin_key_id": bytes.fromhex(table["admin_key_id"]),
                "admin_ed25519_public": bytes.fromhex(table["admin_ed25519_public"]),
                "admin_ml_dsa_65_public": bytes.fromhex(table.get("admin_ml_dsa_65_public", "")),
            }
        except KeyError as exc:
            raise ConfigError(f"{path}: [federation] {exc.args[0]} is required") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: [federation] bad value ({exc})") from None
        return cls(directory, FederationSettings.from_values(values, f"{path}: [federation]"))

    # -- files ------------------------------------------------------------------------------

    @property
    def ca_cert_path(self) -> Path:
        """DIR/ca.pem."""
        return self.directory / CA_CERT

    def admin_key(self) -> NodeKey:
        """The admin signing key (DIR/admin.key, 0600)."""
        key = NodeKey.load(self.directory / ADMIN_KEY)
        if key.key_id != self.admin.key_id:
            raise ConfigError(
                f"{self.directory / ADMIN_KEY}: not the admin key federation.toml names"
            )
        return key

    def ca(self) -> FederationCA:
        """The federation CA (certificate and key)."""
        return FederationCA.load(self.ca_cert_path, self.directory / CA_KEY)

    def nodes(self) -> list[NodeRecord]:
        """Nodes added so far, in the order they were added."""
        path = self.directory / NODES_FILE
        if not path.exists():
            return []
        out = []
        for row in read_toml(path).get("node", []):
            try:
                out.append(
                    NodeRecord(
                        name=row["name"],
                        key_id=bytes.fromhex(row["key_id"]),
                        host=row["host"],
                        peer_port=int(row["peer_port"]),
                        client_port=int(row["client_port"]),
                        metrics_port=int(row["metrics_port"]),
                    )
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"{path}: bad [[node]] row ({exc})") from None
        return out

    def chain_head(self) -> tuple[int, bytes | None]:
        """(last seq, last id) of the admin's hash chain; (0, None) before the first entry."""
        path = self.directory / CHAIN_FILE
        if not path.exists():
            return 0, None
        raw = read_toml(path)
        try:
            seq = int(raw["seq"])
            head = bytes.fromhex(raw["head"]) if raw.get("head") else None
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: bad admin chain head ({exc})") from None
        return seq, head

    def sign_admin_entry(self, build: Callable[[NodeKey, int, bytes | None], Entry]) -> Entry:
        """Sign the next entry in the admin's chain: `build(admin_key, seq, prev)`; the entry
        is saved under DIR/admin-entries/ and the chain head advanced atomically."""
        with _locked(self.directory):
            return self._sign_admin_entry_locked(build)

    def _sign_admin_entry_locked(
        self, build: Callable[[NodeKey, int, bytes | None], Entry]
    ) -> Entry:
        seq, head = self.chain_head()
        entry = build(self.admin_key(), seq + 1, head)
        if entry.author != self.admin.key_id or entry.seq != seq + 1 or entry.prev != head:
            raise CrdtdError("admin entry builder did not continue the admin chain")
        entry.verify_signatures(self.admin, self.policy)
        log = self.directory / ADMIN_ENTRIES
        log.mkdir(exist_ok=True)
        (log / f"{entry.seq:08d}-{entry.kind.name.lower()}.entry").write_bytes(entry.to_bytes())
        _write_atomic(
            self.directory / CHAIN_FILE,
            "# head of the admin's entry chain; never edit by hand\n"
            f'seq = {entry.seq}\nhead = "{entry.id.hex()}"\n',
        )
        return entry

    def member_key_id(self, who: str) -> bytes:
        """A member's key id from a node name (nodes.toml) or 64 hex digits."""
        for n in self.nodes():
            if n.name == who:
                return n.key_id
        try:
            key_id = bytes.fromhex(who)
        except ValueError:
            key_id = b""
        if len(key_id) != 32:
            known = ", ".join(n.name for n in self.nodes()) or "none"
            raise ConfigError(
                f"{who!r} is neither a node of {self.directory} ({known}) nor a 64-hex key id"
            )
        return key_id

    def revoke(self, who: str, reason: str = "", successor: str | None = None) -> Entry:
        """Sign, as the admin, the revocation of member `who` (node name or key id), naming
        `successor` (node name, key id or key file) as its replacement when given."""
        key_id = self.member_key_id(who)
        if key_id == self.admin.key_id:
            raise ConfigError("the federation admin key cannot be revoked by itself here")
        heir = None
        if successor:
            path = Path(successor)
            heir = NodeKey.load(path).key_id if path.is_file() else self.member_key_id(successor)
            if heir == key_id:
                raise ConfigError(f"{successor!r}: a key cannot succeed itself")
        return self.sign_admin_entry(
            lambda admin, seq, prev: make_revocation(
                admin, seq, prev, key_id, successor=heir, reason=reason, policy=self.policy
            )
        )

    def namespace_key(self, namespace: str, members: list[str]) -> tuple[Entry, bytes]:
        """A fresh key for encrypted `namespace`, wrapped for `members` (node names or key
        ids) in the next epoch's envelope (crdtd.crypto.sealing), signed by the admin as a
        contribution of payload kind `crdtd-keys`. Returns (entry, envelope bytes); push both
        to a node. Every later contribution is sealed with the newest epoch's key, so leaving
        a member out rotates it away from that member."""
        from crdtd.crypto.sealing import KEYS_PAYLOAD_KIND, KeyEnvelope, new_namespace_key
        from crdtd.store.chunks import BytesSource

        publics: dict[bytes, bytes] = {}
        epoch = 0
        for e in self.admin_entries():
            if e.kind is Kind.MEMBERSHIP:
                body = e.as_membership()
                publics[body.member] = body.public_keys.ed25519
            elif (
                e.kind is Kind.CONTRIBUTION
                and e.payload_kind == KEYS_PAYLOAD_KIND
                and e.namespace == namespace
            ):
                epoch = max(epoch, KeyEnvelope.epoch_of(e))
        chosen: dict[bytes, bytes] = {}
        for who in members:
            kid = self.member_key_id(who)
            if kid not in publics:
                raise ConfigError(f"{who!r} has no membership signed in {self.directory}")
            chosen[kid] = publics[kid]
        if not chosen:
            raise ConfigError(f"namespace {namespace!r}: name at least one member")
        env = KeyEnvelope.seal(namespace, epoch + 1, new_namespace_key(), chosen)
        envelope = env.to_bytes()
        manifest = BytesSource(envelope).manifest
        entry = self.sign_admin_entry(
            lambda admin, seq, prev: make_contribution(
                admin,
                seq,
                prev,
                namespace,
                manifest.digest,
                manifest.size,
                payload_kind=KEYS_PAYLOAD_KIND,
                metadata={"epoch": env.epoch, "key_id": env.key_id.hex()},
                policy=self.policy,
            )
        )
        self._payload_path(entry).write_bytes(envelope)
        return entry, envelope

    def _payload_path(self, entry: Entry) -> Path:
        return self.directory / ADMIN_ENTRIES / f"{entry.seq:08d}-contribution.payload"

    def admin_payload(self, entry: Entry) -> bytes | None:
        """The payload of a contribution the admin signed (a key envelope), if kept here."""
        path = self._payload_path(entry)
        return path.read_bytes() if path.is_file() else None

    def admin_entries(self) -> list[Entry]:
        """Every entry the admin has signed, in chain order."""
        log = self.directory / ADMIN_ENTRIES
        if not log.exists():
            return []
        return [Entry.from_bytes(p.read_bytes()) for p in sorted(log.glob("*.entry"))]


def init(directory: Path | str, federation_id: str | None = None, pq: bool = False) -> Federation:
    """Create a federation directory: admin key (+ ML-DSA-65 if `pq`), CA, federation.toml."""
    directory = Path(directory).resolve()
    if (directory / FEDERATION_FILE).exists():
        raise ConfigError(f"{directory}: already holds a federation ({FEDERATION_FILE})")
    directory.mkdir(parents=True, exist_ok=True)
    admin = NodeKey.generate(pq_enabled=pq)
    fed_id = federation_id or f"fed-{admin.key_id.hex()[:16]}"
    if not _FED_ID_RE.fullmatch(fed_id):
        raise ConfigError(f"federation id {fed_id!r}: use [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    settings = FederationSettings(
        fed_id, HYBRID if pq else SignaturePolicy((ED25519,)), admin.public_keys
    )
    with _locked(directory):
        admin.save(directory / ADMIN_KEY)
        FederationCA.create(fed_id).save(directory / CA_CERT, directory / CA_KEY)
        _write_atomic(
            directory / FEDERATION_FILE,
            "# crdtd federation; created by `crdtd federation init`. See docs/identity.md.\n"
            + render_table("federation", settings.to_table()),
        )
    return Federation(directory, settings)


def _free_port(host: str, taken: set[int]) -> int:
    """A port free on `host` (or, for an address not on this machine, free here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError:
                sock.bind(("", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise ConfigError(f"no free port found on {host}")


def add_node(
    directory: Path | str,
    name: str,
    host: str = "127.0.0.1",
    peer_port: int | None = None,
    client_port: int | None = None,
    metrics_port: int | None = None,
) -> NodeConfig:
    """Create node NAME: key, TLS cert, admin-signed membership entry, and DIR/NAME.toml
    (ports given or picked free; bootstrap = nodes added before)."""
    fed = Federation.load(directory)
    d = fed.directory
    valid_node_name(name)
    paths = {
        "key": d / f"{name}.key",
        "tls_cert": d / f"{name}.tls.pem",
        "tls_key": d / f"{name}.tls.key",
        "membership": d / f"{name}.membership",
        "config": d / f"{name}.toml",
    }
    with _locked(d):
        existing = fed.nodes()
        if any(n.name == name for n in existing):
            raise ConfigError(f"{d / NODES_FILE}: node {name!r} already exists")
        for path in paths.values():
            if path.exists():
                raise ConfigError(f"{path}: already exists; pick another node name")
        taken = {p for n in existing for p in (n.peer_port, n.client_port, n.metrics_port)}
        ports = []
        for label, given in (
            ("peer", peer_port),
            ("client", client_port),
            ("metrics", metrics_port),
        ):
            if given is None:
                ports.append(_free_port(host, taken))
            elif given in taken:
                raise ConfigError(f"--{label}-port {given} is already used by another node")
            else:
                taken.add(given)
                ports.append(given)

        key = NodeKey.generate(pq_enabled=fed.policy.hybrid)
        key.save(paths["key"])
        fed.ca().issue_node_tls(
            key.key_id,
            name,
            paths["tls_cert"],
            paths["tls_key"],
            hosts=(host, "127.0.0.1", "localhost"),
        )
        entry = fed._sign_admin_entry_locked(
            lambda admin, seq, prev: make_membership(
                admin, seq, prev, key.public_keys, name, policy=fed.policy
            )
        )
        paths["membership"].write_bytes(entry.to_bytes())
        data_dir = d / f"{name}-data"
        data_dir.mkdir(mode=0o700, exist_ok=True)
        config = NodeConfig(
            path=paths["config"],
            name=name,
            key=paths["key"],
            data_dir=data_dir,
            membership=paths["membership"],
            federation=fed.settings,
            peer_host=host,
            peer_port=ports[0],
            advertise=f"{host}:{ports[0]}",
            bootstrap=tuple(n.peer_address for n in existing),
            plaintext_loopback=False,
            client_host="127.0.0.1",
            client_port=ports[1],
            metrics_host="127.0.0.1",
            metrics_port=ports[2],
            tls_ca_cert=fed.ca_cert_path,
            tls_cert=paths["tls_cert"],
            tls_key=paths["tls_key"],
            gossip=GossipSettings(),
        )
        _write_atomic(paths["config"], config.to_toml())
        record = NodeRecord(name, key.key_id, host, ports[0], ports[1], ports[2])
        _append_node(d, [*existing, record])
    return load_node_config(paths["config"])


def _append_node(directory: Path, nodes: list[NodeRecord]) -> None:
    rows: list[str] = ["# nodes added by `crdtd federation add-node`, in order\n"]
    for n in nodes:
        values: dict[str, Any] = {
            "name": n.name,
            "key_id": n.key_id.hex(),
            "host": n.host,
            "peer_port": n.peer_port,
            "client_port": n.client_port,
            "metrics_port": n.metrics_port,
        }
        rows.append(render_table("node", values, array=True))
    _write_atomic(directory / NODES_FILE, "\n".join(rows))


def issue_tls(
    directory: Path | str,
    name: str,
    key_path: Path | str,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    out_dir: Path | str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Issue a TLS key+cert for the node key at `key_path`; returns (cert path, key path)."""
    fed = Federation.load(directory)
    valid_node_name(name)
    node_key = NodeKey.load(key_path)
    out = Path(out_dir) if out_dir is not None else fed.directory
    out.mkdir(parents=True, exist_ok=True)
    cert_path, tls_key_path = out / f"{name}.tls.pem", out / f"{name}.tls.key"
    fed.ca().issue_node_tls(
        node_key.key_id, name, cert_path, tls_key_path, hosts, overwrite=overwrite
    )
    return cert_path, tls_key_path


__all__ = [
    "Federation",
    "NodeRecord",
    "add_node",
    "init",
    "issue_tls",
]
