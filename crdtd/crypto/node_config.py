"""The node config file (`NAME.toml`): schema, strict loader and writer.

Sections: [node], [federation], [peer], [client], [metrics], [tls], [gossip]. Every key, its
type and default is declared once in `SCHEMA` (docs/identity.md documents the same table).
Unknown keys are rejected with the file, line and key named; `CRDTD_<SECTION>_<KEY>`
environment variables override file values; relative paths resolve against the directory
holding the config file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import PublicKeys, SignaturePolicy, key_id_of
from crdtd.crypto.toml_io import TomlValue, key_line, read_toml, render_table, section_line
from crdtd.crypto.x509 import TlsMaterial
from crdtd.errors import ConfigError

REQUIRED = object()
"""Marker: the key has no default."""


@dataclass(frozen=True)
class Field:
    """One config key: its type ('str', 'int', 'bool', 'path', 'hex', 'list'), default, doc."""

    type: str
    default: Any
    doc: str


SCHEMA: dict[str, dict[str, Field]] = {
    "node": {
        "name": Field("str", REQUIRED, "node name, unique in the federation"),
        "key": Field("path", REQUIRED, "Ed25519 (+ ML-DSA-65) node key file, mode 0600"),
        "data_dir": Field("path", REQUIRED, "store directory (SQLite + chunks)"),
        "membership": Field("path", REQUIRED, "this node's membership entry, signed by the admin"),
    },
    "federation": {
        "id": Field("str", REQUIRED, "federation id; peers with another id are refused"),
        "signatures": Field(
            "str", "ed25519", 'required signatures: "ed25519" or "ed25519+ml-dsa-65"'
        ),
        "admin_key_id": Field("hex", REQUIRED, "sha256 of the admin Ed25519 public key"),
        "admin_ed25519_public": Field("hex", REQUIRED, "admin Ed25519 public key (32 bytes)"),
        "admin_ml_dsa_65_public": Field("hex", "", "admin ML-DSA-65 public key (hybrid only)"),
    },
    "peer": {
        "host": Field("str", "127.0.0.1", "address the peer (node-to-node) gRPC server binds"),
        "port": Field("int", REQUIRED, "peer gRPC port (0 = any free port)"),
        "advertise": Field("str", "", "host:port other nodes dial; default host:port"),
        "bootstrap": Field("list", [], "host:port of peers to contact first"),
        "plaintext_loopback": Field("bool", False, "allow plain-text gRPC (loopback only, dev)"),
    },
    "client": {
        "host": Field("str", "127.0.0.1", "address the client gRPC API binds (loopback default)"),
        "port": Field("int", 7401, "client gRPC port"),
    },
    "metrics": {
        "host": Field("str", "127.0.0.1", "address of the Prometheus /metrics endpoint"),
        "port": Field("int", 9401, "metrics port (0 disables the endpoint)"),
    },
    "tls": {
        "ca_cert": Field("path", REQUIRED, "federation CA certificate (PEM)"),
        "cert": Field("path", REQUIRED, "this node's TLS certificate (PEM, ECDSA P-256)"),
        "key": Field("path", REQUIRED, "this node's TLS private key (PEM, mode 0600)"),
    },
    "gossip": {
        "interval_ms": Field("int", 200, "gossip round interval"),
        "fanout": Field("int", 3, "peers contacted per round"),
        "probe_interval_ms": Field("int", 1000, "failure-detector probe interval"),
        "probe_timeout_ms": Field("int", 500, "probe timeout"),
        "suspicion_mult": Field("int", 4, "suspicion timeout = mult * log(N+1) probe intervals"),
        "push_pull_interval_ms": Field("int", 30000, "full anti-entropy session interval"),
        "set_reconciliation": Field(
            "bool", True, "offer rateless IBLT set reconciliation (riblt/1); false: Merkle only"
        ),
    },
}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_INT_RANGES = {"port": (0, 65535), "fanout": (1, 1000)}


def valid_node_name(name: str) -> str:
    """Node names: lowercase letters, digits, '-' and '_', at most 63 characters."""
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"node name {name!r}: use [a-z0-9][a-z0-9_-]{{0,62}}")
    return name


def key_location(path: Path, section: str, key: str) -> str:
    """`FILE:LINE: [section] key` for messages: the key's line, else (a key that is
    missing) its section's header line."""
    line = key_line(path, section, key) or section_line(path, section)
    return f"{path}:{line}: [{section}] {key}" if line else f"{path}: [{section}] {key}"


def parse_env_value(raw: str, ftype: str) -> Any:
    if ftype == "int":
        return int(raw)
    if ftype == "bool":
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"not a boolean: {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if ftype == "list":
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def coerce_value(value: Any, ftype: str, where: str, key: str, base: Path) -> Any:
    if ftype == "int":
        if type(value) is not int:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        lo, hi = _INT_RANGES.get(key, (0, 10**9))
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {value} outside [{lo}, {hi}]")
        return value
    if ftype == "bool":
        if type(value) is not bool:
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if ftype == "list":
        if type(value) is not list or any(type(v) is not str for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if type(value) is not str:
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if ftype == "path":
        if not value:
            raise ConfigError(f"{where}: empty path")
        if "\x00" in value:  # the OS cannot name it; Path.resolve would raise ValueError
            raise ConfigError(f"{where}: path contains a NUL character")
        return (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    if ftype == "hex":
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ConfigError(f"{where}: not hex") from None
    return value


def parse_section(
    path: Path,
    section: str,
    fields: Mapping[str, Field],
    table: Any,
    env: Mapping[str, str] | None,
    *,
    coerce: Callable[[Field, Any, str, str], Any],
    from_env: Callable[[str, Field], Any],
) -> dict[str, Any]:
    """Validate one flat TOML table against `fields`: unknown keys rejected with file and line,
    CRDTD_<SECTION>_<KEY> overrides applied, defaults filled, each value coerced."""
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    for key in table:
        if key not in fields:
            raise ConfigError(
                f"{key_location(path, section, key)}: unknown key; known: {', '.join(fields)}"
            )
    parsed: dict[str, Any] = {}
    for key, spec in fields.items():
        where = key_location(path, section, key)
        env_name = f"CRDTD_{section.upper()}_{key.upper()}"
        if env is not None and env_name in env:
            where = f"environment {env_name}"
            try:
                value: Any = from_env(env[env_name], spec)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        elif key in table:
            value = table[key]
        elif spec.default is REQUIRED:
            raise ConfigError(f"{path}: [{section}] {key} is required ({spec.doc})")
        else:
            value = spec.default
        parsed[key] = coerce(spec, value, where, key)
    return parsed


def _check_hostport(text: str, where: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{where}: {text!r} is not host:port")
    return text


@dataclass(frozen=True)
class FederationSettings:
    """Who the federation is: id, signature policy and the admin's public keys."""

    id: str
    policy: SignaturePolicy
    admin: PublicKeys

    def to_table(self) -> dict[str, TomlValue]:
        """Values for a `[federation]` table."""
        out: dict[str, TomlValue] = {
            "id": self.id,
            "signatures": str(self.policy),
            "admin_key_id": self.admin.key_id.hex(),
            "admin_ed25519_public": self.admin.ed25519.hex(),
        }
        if self.admin.ml_dsa_65 is not None:
            out["admin_ml_dsa_65_public"] = self.admin.ml_dsa_65.hex()
        return out

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str) -> FederationSettings:
        """Build and cross-check from parsed `[federation]` values."""
        policy = SignaturePolicy.parse(values["signatures"])
        ml = values.get("admin_ml_dsa_65_public") or None
        try:
            admin = PublicKeys(values["admin_ed25519_public"], ml)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if key_id_of(admin.ed25519) != values["admin_key_id"]:
            raise ConfigError(f"{where}: admin_key_id is not sha256(admin_ed25519_public)")
        if policy.hybrid and admin.ml_dsa_65 is None:
            raise ConfigError(f"{where}: signatures {policy} needs admin_ml_dsa_65_public")
        return cls(values["id"], policy, admin)


@dataclass(frozen=True)
class GossipSettings:
    """Gossip and failure-detector tunables (hashicorp/memberlist LAN defaults)."""

    interval_ms: int = 200
    fanout: int = 3
    probe_interval_ms: int = 1000
    probe_timeout_ms: int = 500
    suspicion_mult: int = 4
    push_pull_interval_ms: int = 30000
    set_reconciliation: bool = True


@dataclass(frozen=True)
class NodeConfig:
    """A loaded node config with absolute paths."""

    path: Path
    name: str
    key: Path
    data_dir: Path
    membership: Path
    federation: FederationSettings
    peer_host: str
    peer_port: int
    advertise: str
    bootstrap: tuple[str, ...]
    plaintext_loopback: bool
    client_host: str
    client_port: int
    metrics_host: str
    metrics_port: int
    tls_ca_cert: Path
    tls_cert: Path
    tls_key: Path
    gossip: GossipSettings = field(default_factory=GossipSettings)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def load_key(self) -> NodeKey:
        """The node's signing key (file must be 0600)."""
        return NodeKey.load(self.key)

    def tls_material(self) -> TlsMaterial:
        """PEM bytes for grpc mutual TLS."""
        return TlsMaterial.load(self.tls_cert, self.tls_key, self.tls_ca_cert)

    def membership_bytes(self) -> bytes:
        """Wire bytes of this node's membership entry (decode with `Entry.from_bytes`)."""
        try:
            return self.membership.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.path}: [node] membership {self.membership}: {exc}") from None

    def to_toml(self) -> str:
        """The config as TOML, paths relative to the config file's directory when inside it."""
        base = self.path.parent.resolve()

        def rel(p: Path) -> str:
            try:
                return str(p.resolve().relative_to(base))
            except ValueError:
                return str(p)

        g = self.gossip
        parts = [
            f"# crdtd node config for {self.name!r}; every key is documented in docs/identity.md.\n"
            "# Relative paths resolve against the directory holding this file.\n",
            render_table(
                "node",
                {
                    "name": self.name,
                    "key": rel(self.key),
                    "data_dir": rel(self.data_dir),
                    "membership": rel(self.membership),
                },
            ),
            render_table("federation", self.federation.to_table()),
            render_table(
                "peer",
                {
                    "host": self.peer_host,
                    "port": self.peer_port,
                    "advertise": self.advertise,
                    "bootstrap": list(self.bootstrap),
                    "plaintext_loopback": self.plaintext_loopback,
                },
            ),
            render_table("client", {"host": self.client_host, "port": self.client_port}),
            render_table("metrics", {"host": self.metrics_host, "port": self.metrics_port}),
            render_table(
                "tls",
                {
                    "ca_cert": rel(self.tls_ca_cert),
                    "cert": rel(self.tls_cert),
                    "key": rel(self.tls_key),
                },
            ),
            render_table(
                "gossip",
                {
                    "interval_ms": g.interval_ms,
                    "fanout": g.fanout,
                    "probe_interval_ms": g.probe_interval_ms,
                    "probe_timeout_ms": g.probe_timeout_ms,
                    "suspicion_mult": g.suspicion_mult,
                    "push_pull_interval_ms": g.push_pull_interval_ms,
                    "set_reconciliation": g.set_reconciliation,
                },
            ),
        ]
        return "\n".join(parts)


def load_node_config(
    path: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    extra_sections: Iterable[str] = (),
) -> NodeConfig:
    """Read and validate a node config. `env` (e.g. os.environ) supplies CRDTD_<SECTION>_<KEY>
    overrides; sections named in `extra_sections` are passed through untouched in `.extra`."""
    path = Path(path)
    raw = read_toml(path)
    base = path.parent.resolve()
    extras = list(extra_sections)
    allowed_extra = set(extras)
    values: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for section in raw:
        if section in allowed_extra:
            extra[section] = raw[section]
        elif section not in SCHEMA:
            line = section_line(path, section)
            known = ", ".join([*SCHEMA, *(s for s in extras if s not in SCHEMA)])
            raise ConfigError(
                f"{path}{f':{line}' if line else ''}: unknown section [{section}]; known: {known}"
            )
    for section, fields in SCHEMA.items():
        values[section] = parse_section(
            path,
            section,
            fields,
            raw.get(section),
            env,
            coerce=lambda spec, value, where, key: coerce_value(value, spec.type, where, key, base),
            from_env=lambda raw_value, spec: parse_env_value(raw_value, spec.type),
        )

    node, peer = values["node"], values["peer"]
    valid_node_name(node["name"])
    advertise = peer["advertise"] or f"{peer['host']}:{peer['port']}"
    _check_hostport(advertise, key_location(path, "peer", "advertise"))
    for item in peer["bootstrap"]:
        _check_hostport(item, key_location(path, "peer", "bootstrap"))
    if peer["plaintext_loopback"] and not is_loopback_host(peer["host"]):
        raise ConfigError(
            f"{key_location(path, 'peer', 'plaintext_loopback')}: plain text needs a loopback host"
        )
    tls = values["tls"]
    return NodeConfig(
        path=path.resolve(),
        name=node["name"],
        key=node["key"],
        data_dir=node["data_dir"],
        membership=node["membership"],
        federation=FederationSettings.from_values(values["federation"], f"{path}: [federation]"),
        peer_host=peer["host"],
        peer_port=peer["port"],
        advertise=advertise,
        bootstrap=peer["bootstrap"],
        plaintext_loopback=peer["plaintext_loopback"],
        client_host=values["client"]["host"],
        client_port=values["client"]["port"],
        metrics_host=values["metrics"]["host"],
        metrics_port=values["metrics"]["port"],
        tls_ca_cert=tls["ca_cert"],
        tls_cert=tls["cert"],
        tls_key=tls["key"],
        gossip=GossipSettings(**values["gossip"]),
        extra=extra,
    )


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
