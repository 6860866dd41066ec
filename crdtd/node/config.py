"""The daemon's config: the identity sections of `crdtd.crypto.node_config` plus its own.

One TOML file per node. The identity loader owns [node], [federation], [peer], [client],
[metrics], [tls] and [gossip]; this module adds [log], [limits], [auth], [materialise],
[trust] and [namespaces.NAME] through the loader's `extra_sections` hook and checks them the
same way: unknown keys are rejected naming file, line and key; `CRDTD_<SECTION>_<KEY>`
environment variables override the flat sections; relative paths resolve against the
directory holding the file. `crdtd config check FILE` runs exactly this loader.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.crypto.node_config import (
    Field,
    NodeConfig,
    coerce_value,
    is_loopback_host,
    key_location,
    load_node_config,
    parse_env_value,
    parse_section,
)
from crdtd.errors import ConfigError, CrdtdError, StrategyError, echo

if TYPE_CHECKING:
    from crdtd.crypto.keys import NodeKey
    from crdtd.state.entry import Entry
from crdtd.trust.gating import FederationPolicy, NamespacePolicy
from crdtd.trust.scores import SCALE

DAEMON_SECTIONS = ("log", "limits", "auth", "materialise", "scrub", "trust", "namespaces")
TOKEN_FILE = "client.token"
OUTPUT_DIR = "materialised"

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
AUTH_MODES = ("token", "mtls", "none")

# Every flat key of the daemon's sections: type, default, doc (docs/daemon.md repeats them).
# Types beyond the identity loader's: "size" (int bytes or "512MiB"), "float", "choice:a|b",
# "port" (0..65535).
DAEMON_SCHEMA: dict[str, dict[str, Field]] = {
    "log": {
        "format": Field("choice:text|json", "text", "one line per event: text or JSON"),
        "level": Field("choice:debug|info|warning|error", "info", "lowest level logged"),
    },
    "limits": {
        "max_payload": Field("size", "1GiB", "largest payload a client may push"),
        "max_message": Field("size", "4MiB", "largest gRPC message (payloads are streamed)"),
        "max_concurrent_pushes": Field("int", 8, "pushes received at once; more wait"),
        "max_concurrent_materialise": Field("int", 1, "merges run at once; more wait"),
        "drain_timeout_ms": Field("int", 10000, "on SIGTERM, how long in-flight RPCs may finish"),
    },
    "auth": {
        "mode": Field("choice:token|mtls|none", "token", "client auth: token, mtls or none"),
        "token_file": Field("str", "", "bearer token file (0600); default DATA_DIR/client.token"),
        "tls": Field("bool", False, "serve the client API over TLS (implied by mode = mtls)"),
        "health_port": Field(
            "port",
            0,
            "health-only port, TLS without client certificates (mtls: default a free one)",
        ),
    },
    "materialise": {
        "output_dir": Field("str", "", "where out_path may write; default DATA_DIR/materialised"),
        "allow_any_path": Field("bool", False, "let out_path name any path on this host"),
    },
    "scrub": {
        "enabled": Field("bool", True, "re-hash stored chunks in the background, repair bad ones"),
        "interval_ms": Field("int", 3_600_000, "time between the starts of two scrub passes"),
        "rate": Field("size", "32MiB", "chunk bytes re-hashed per second at most"),
    },
}

# Keys every namespace takes, whatever its kind; each kind adds its own
# (`crdtd.kinds.<kind>.KIND.settings`; the model kind's are strategy, params, payload_kind,
# trust_weighted, example_weighted, base and dtype).
NAMESPACE_SCHEMA: dict[str, Field] = {
    "kind": Field("str", "model", "what the namespace holds: model, table, sketch or memory"),
    "trust_threshold": Field(
        "float", -1.0, "trust (0..1) an author needs; default [trust.default]"
    ),
    "trust_dimensions": Field("list", [], "dimensions counted; default all five"),
    "encrypted": Field(
        "bool", False, "payloads sealed with a key only the admin's named members hold"
    ),
}


def namespace_schema(kind: str) -> dict[str, Field]:
    """Every key a namespace of `kind` takes: the common ones, then the kind's own."""
    from crdtd import kinds

    return {**NAMESPACE_SCHEMA, **kinds.get(kind).settings}


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_NS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


def parse_size(text: str | int, where: str = "size") -> int:
    """Bytes from an int or `512MiB`, `1GiB`, `64kB` (decimal units, binary with `i`)."""
    if isinstance(text, bool):
        raise ConfigError(f"{where}: expected a size like 512MiB, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ConfigError(f"{where}: {text!r} is not a size like 512MiB, 1GiB or 1048576")
        unit = (m.group(2) or "b").lower()
        base = 1024 if "i" in unit else 1000
        value = int(m.group(1)) * base ** "bkmgt".index(unit[0])
    if value <= 0:
        raise ConfigError(f"{where}: size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class NamespaceConfig:
    """How one namespace is merged, what it accepts, and who may be merged into it."""

    name: str
    policy: NamespacePolicy = field(default_factory=NamespacePolicy)
    payload_kind: str = "safetensors"
    base: bytes | None = None
    dtype: str | None = None
    kind: str = "model"
    settings: Any = None  # the kind's settings object (model: its round settings)
    encrypted: bool = False  # payloads sealed (crdtd.crypto.sealing); keys from the admin

    @property
    def rounds(self) -> bool:
        """True for a model namespace with `rounds = true` (one live update per author)."""
        return bool(getattr(self.settings, "rounds", False))

    @property
    def strategy(self) -> str:
        """The configured merge strategy."""
        return self.policy.strategy

    @property
    def params(self) -> Mapping[str, Any]:
        """The configured strategy parameters."""
        return self.policy.strategy_params

    @property
    def trust_threshold(self) -> float:
        """The threshold as a fraction of 1."""
        return self.policy.threshold / SCALE

    def describe(self) -> dict[str, Any]:
        """The namespace's settings as plain data (`crdtd status`, `crdtd config check`)."""
        from dataclasses import asdict, is_dataclass

        out: dict[str, Any] = {"kind": self.kind, "trust_threshold": self.trust_threshold}
        if self.encrypted:
            out["encrypted"] = True
        if self.kind == "model":
            out.update(
                strategy=self.strategy, params=dict(self.params), payload_kind=self.payload_kind
            )
            if self.rounds:
                rs = self.settings
                out.update(
                    rounds=True,
                    screen=rs.screen,
                    max_staleness=rs.max_staleness,
                    server_optimizer=rs.optimiser.name,
                )
        elif is_dataclass(self.settings) and not isinstance(self.settings, type):
            out.update(asdict(self.settings))
        return out


@dataclass(frozen=True)
class DaemonConfig:
    """A loaded daemon config: the identity part (`node`) and the daemon's settings."""

    node: NodeConfig
    log_format: str = "text"
    log_level: str = "info"
    max_payload: int = 1 << 30
    max_message: int = 4 << 20
    max_concurrent_pushes: int = 8
    max_concurrent_materialise: int = 1
    drain_timeout_ms: int = 10000
    auth_mode: str = "token"
    token_file: Path = Path(TOKEN_FILE)
    client_tls: bool = False
    health_port: int = 0
    scrub_enabled: bool = True
    scrub_interval_ms: int = 3_600_000
    scrub_rate: int = 32 << 20
    output_dir: Path = Path(OUTPUT_DIR)
    allow_any_path: bool = False
    trust: FederationPolicy = field(default_factory=FederationPolicy)
    namespaces: Mapping[str, NamespaceConfig] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The config file."""
        return self.node.path

    @property
    def client_address(self) -> str:
        """host:port clients dial (a wildcard bind is dialled on loopback)."""
        host = self.node.client_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{host}:{self.node.client_port}"

    @property
    def separate_health(self) -> bool:
        """True when health checking gets its own listener: always with mutual TLS (whose
        port demands a client certificate gRPC cannot make optional per method), and
        whenever `[auth] health_port` is set."""
        return self.auth_mode == "mtls" or self.health_port > 0

    @property
    def metrics_address(self) -> str:
        """host:port of /metrics ("" when disabled)."""
        if not self.node.metrics_port:
            return ""
        return f"{self.node.metrics_host}:{self.node.metrics_port}"

    def namespace(self, name: str) -> NamespaceConfig | None:
        """The namespace's settings; None when namespaces are declared and this one is not.

        With no [namespaces] table every namespace is accepted under [trust.default].
        """
        if not self.namespaces:
            return NamespaceConfig(name, self.trust.for_namespace(name))
        return self.namespaces.get(name)

    def latest_only(self, name: str) -> bool:
        """True when namespace `name` keeps one live contribution per author (`rounds`);
        `E4State(latest_only=...)` asks this for every contribution it applies."""
        ns = self.namespaces.get(name)
        return ns is not None and ns.rounds


def _value(spec: Field, value: Any, where: str, key: str, base: Path) -> Any:
    """Coerce one value of the daemon schema (the identity loader handles the common types)."""
    kind = spec.type
    if kind.startswith("choice:"):
        choices = kind[7:].split("|")
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        return value
    if kind == "size":
        return parse_size(value, where)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if kind == "count":
        if type(value) is not int or not 0 <= value <= 1 << 40:
            raise ConfigError(f"{where}: expected an integer >= 0, got {value!r}")
        return value
    if kind == "names":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a column name or a list of names, got {value!r}")
        return tuple(value)
    if kind == "table":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if kind == "port":
        if type(value) is not int or not 0 <= value <= 65535:
            raise ConfigError(f"{where}: expected a port 0..65535, got {echo(value)}")
        return value
    if kind == "int" and type(value) is int and value <= 0:
        raise ConfigError(f"{where}: must be positive, got {value}")
    return coerce_value(value, kind, where, key, base)


def _env_value(raw: str, spec: Field) -> Any:
    if spec.type == "float":
        return float(raw)
    if spec.type == "port":
        return int(raw) if raw.strip().isdigit() else raw
    if spec.type in ("size",) or spec.type.startswith("choice:"):
        return raw
    return parse_env_value(raw, spec.type)


def _flat_section(
    path: Path, raw: Any, section: str, env: Mapping[str, str] | None
) -> dict[str, Any]:
    base = path.parent.resolve()
    return parse_section(
        path,
        section,
        DAEMON_SCHEMA[section],
        raw,
        env,
        coerce=lambda spec, value, where, key: _value(spec, value, where, key, base),
        from_env=_env_value,
    )


def check_strategy(strategy: str, params: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming `where` when the strategy is unknown or a parameter is bad."""
    from crdtd.strategies import registry

    try:
        registry.get(strategy).validate(params, [{}])
    except StrategyError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _trust_policy(path: Path, raw: Any, admin: bytes) -> FederationPolicy:
    """The [trust] table (crdtd.trust's FederationPolicy); the federation admin is an admin."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [trust] must be a table")
    if "namespace" in raw:
        raise ConfigError(
            f"{path}: [trust.namespace] is not used by the daemon; put trust_threshold, "
            f"trust_dimensions, trust_weighted and example_weighted in [namespaces.NAME]"
        )
    try:
        policy = FederationPolicy.from_mapping(raw, f"{path}: [trust]")
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    return replace(policy, admins=policy.admins | {admin})


def _namespaces(
    path: Path, raw: Any, default: NamespacePolicy, check: bool = True
) -> dict[str, NamespaceConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [namespaces] must hold one table per namespace")
    out: dict[str, NamespaceConfig] = {}
    for name in sorted(raw):
        table = raw[name]
        section = f'namespaces."{name}"'
        if not _NS_RE.fullmatch(name) or len(name.encode()) > 256:
            raise ConfigError(f"{path}: [{section}]: bad namespace name (use [A-Za-z0-9._:/-])")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        kind_name = table.get("kind", "model")
        if not isinstance(kind_name, str):
            raise ConfigError(f"{key_location(path, section, 'kind')}: expected a string")
        try:
            schema = namespace_schema(kind_name)
        except ConfigError as exc:
            raise ConfigError(f"{key_location(path, section, 'kind')}: {exc}") from None
        for key in table:
            if key not in schema:
                raise ConfigError(
                    f"{key_location(path, section, key)}: unknown key for a {kind_name} "
                    f"namespace; known: {', '.join(schema)}"
                )
        v: dict[str, Any] = {}
        for key, spec in schema.items():
            if key not in table:
                v[key] = spec.default
                continue
            v[key] = _value(spec, table[key], key_location(path, section, key), key, path.parent)
        if kind_name != "model":
            ns = _kind_namespace(path, section, name, kind_name, v, default)
            out[name] = replace(ns, encrypted=v["encrypted"])
            continue
        threshold = _threshold(path, section, v["trust_threshold"], default.threshold)
        base = None
        if v["base"]:
            try:
                base = bytes.fromhex(v["base"])
            except ValueError:
                base = b""
            if len(base) != 32:
                raise ConfigError(
                    f"{key_location(path, section, 'base')}: expected a 64-hex entry id"
                )
        strategy = v["strategy"] or default.strategy
        if check and v["payload_kind"] == "safetensors":
            check_strategy(strategy, v["params"], key_location(path, section, "strategy"))
        try:
            policy = NamespacePolicy(
                threshold=threshold,
                dimensions=tuple(v["trust_dimensions"]) or default.dimensions,
                strategy=strategy,
                strategy_params=dict(v["params"]),
                trust_weighted=(
                    default.trust_weighted if v["trust_weighted"] is None else v["trust_weighted"]
                ),
                example_weighted=(
                    default.example_weighted
                    if v["example_weighted"] is None
                    else v["example_weighted"]
                ),
            )
        except ConfigError as exc:
            raise ConfigError(f"{path}: [{section}]: {exc}") from None
        if check and v["dtype"]:
            from crdtd.kinds.model import check_dtype

            check_dtype(v["dtype"], key_location(path, section, "dtype"))
        from crdtd import kinds

        def where(key: str, _section: str = section) -> str:
            return key_location(path, _section, key)

        settings = kinds.get("model").parse_settings(v, where)
        out[name] = NamespaceConfig(
            name=name,
            policy=policy,
            payload_kind=v["payload_kind"],
            base=base,
            dtype=v["dtype"] or None,
            encrypted=v["encrypted"],
            settings=settings,
        )
    return out


def _threshold(path: Path, section: str, value: float, default: int) -> int:
    if value < 0:
        return default
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key_location(path, section, 'trust_threshold')}: must be in [0, 1]")
    return int(Fraction(str(value)) * SCALE)


def _kind_namespace(
    path: Path,
    section: str,
    name: str,
    kind_name: str,
    v: Mapping[str, Any],
    default: NamespacePolicy,
) -> NamespaceConfig:
    """A namespace of a kind other than model: common trust gating plus the kind's settings."""
    from crdtd import kinds

    kind = kinds.get(kind_name)
    try:
        policy = NamespacePolicy(
            threshold=_threshold(path, section, v["trust_threshold"], default.threshold),
            dimensions=tuple(v["trust_dimensions"]) or default.dimensions,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: [{section}]: {exc}") from None
    own = {k: v[k] for k in kind.settings}
    settings = kind.parse_settings(own, lambda key: key_location(path, section, key))
    return NamespaceConfig(
        name=name,
        policy=policy,
        payload_kind=kind.takes(NamespaceConfig(name, kind=kind_name))[0],
        kind=kind_name,
        settings=settings,
    )


def load_daemon_config(
    path: Path | str, *, env: Mapping[str, str] | None = None, check_strategies: bool = True
) -> DaemonConfig:
    """Read and validate a node config for the daemon; ConfigError names file, line and key.

    `env` (default os.environ) supplies `CRDTD_<SECTION>_<KEY>` overrides. Clients that only
    need the address and credentials pass `check_strategies=False` (no torch import).
    """
    path = Path(path)
    env = os.environ if env is None else env
    node = load_node_config(path, env=env, extra_sections=DAEMON_SECTIONS)
    extra = node.extra
    values = {s: _flat_section(path, extra.get(s), s, env) for s in DAEMON_SCHEMA}
    log, limits, auth, mat = values["log"], values["limits"], values["auth"], values["materialise"]
    trust = _trust_policy(path, extra.get("trust"), node.federation.admin.key_id)
    base = path.parent.resolve()
    token_file = node.data_dir / TOKEN_FILE if not auth["token_file"] else base / auth["token_file"]
    output_dir = node.data_dir / OUTPUT_DIR if not mat["output_dir"] else base / mat["output_dir"]
    client_tls = auth["tls"] or auth["mode"] == "mtls"
    if not is_loopback_host(node.client_host):
        if auth["mode"] == "none":
            raise ConfigError(
                f"{key_location(path, 'auth', 'mode')}: 'none' needs a loopback [client] host, "
                f"not {node.client_host!r}"
            )
        if not client_tls:
            raise ConfigError(
                f"{key_location(path, 'auth', 'tls')}: a bearer token over a non-loopback "
                f"[client] host ({node.client_host}) needs tls = true"
            )
    return DaemonConfig(
        node=node,
        log_format=log["format"],
        log_level=log["level"],
        max_payload=limits["max_payload"],
        max_message=limits["max_message"],
        max_concurrent_pushes=limits["max_concurrent_pushes"],
        max_concurrent_materialise=limits["max_concurrent_materialise"],
        drain_timeout_ms=limits["drain_timeout_ms"],
        scrub_enabled=values["scrub"]["enabled"],
        scrub_interval_ms=values["scrub"]["interval_ms"],
        scrub_rate=values["scrub"]["rate"],
        auth_mode=auth["mode"],
        token_file=token_file,
        client_tls=client_tls,
        health_port=auth["health_port"],
        output_dir=output_dir,
        allow_any_path=mat["allow_any_path"],
        trust=trust,
        namespaces=_namespaces(path, extra.get("namespaces"), trust.default, check_strategies),
    )


def render_daemon_sections(
    namespaces: Mapping[str, Mapping[str, Any]] | None = None,
    **sections: Mapping[str, Any],
) -> str:
    """TOML text for daemon sections (append to a node config from `federation add-node`).

    `sections` maps a section name (log, limits, auth, materialise) to its values; `trust`
    may be given too (nested tables such as `default` are written inline);
    `namespaces` maps a namespace to its table (strategy, params, ...).
    """
    from crdtd.crypto.toml_io import toml_key, toml_string

    def lit(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return toml_string(v)
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{toml_key(k)} = {lit(v[k])}" for k in sorted(v)) + " }"
        return "[" + ", ".join(lit(x) for x in v) + "]"

    parts = []
    for name in (*DAEMON_SCHEMA, "trust"):
        if name in sections:
            rows = [f"{toml_key(k)} = {lit(v)}" for k, v in sections[name].items()]
            parts.append(f"[{name}]\n" + "\n".join(rows) + "\n")
    for ns, table in (namespaces or {}).items():
        rows = [f"{toml_key(k)} = {lit(v)}" for k, v in table.items()]
        parts.append(f"[namespaces.{toml_string(ns)}]\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def ensure_token(path: Path) -> str:
    """The bearer token in `path`, creating a random one (0600) when the file is missing."""
    import secrets

    from crdtd.crypto.keys import write_private_file

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, (secrets.token_urlsafe(32) + "\n").encode())
    return read_token(path)


def load_identity(node: NodeConfig) -> tuple[NodeKey, Entry]:
    """The node's signing key and its membership entry, checked against each other and
    against the TLS certificate; what `crdtd start` opens first and `crdtd config check`
    checks (ConfigError naming the file otherwise)."""
    from crdtd.state.entry import Entry, Kind

    key = node.load_key()
    try:
        membership = Entry.from_bytes(node.membership_bytes())
    except ConfigError:
        raise
    except CrdtdError as exc:
        raise ConfigError(
            f"{node.path}: [node] membership {node.membership} is not an entry ({exc})"
        ) from None
    if membership.kind is not Kind.MEMBERSHIP or membership.body.member != key.key_id:  # type: ignore[union-attr]
        raise ConfigError(
            f"{node.path}: [node] membership {node.membership} is not the membership "
            f"entry of key {key.key_id.hex()}"
        )
    tls = node.tls_material()
    try:
        named = tls.key_id
    except CrdtdError as exc:
        raise ConfigError(f"{node.path}: [tls] cert {node.tls_cert}: {exc}") from None
    if named != key.key_id:
        raise ConfigError(
            f"{node.path}: [tls] cert {node.tls_cert} names key {named.hex()}, not this "
            f"node's key {key.key_id.hex()} ([node] key {node.key})"
        )
    return key, membership


def read_token(path: Path) -> str:
    """The bearer token stored in `path` (first line, stripped)."""
    try:
        mode = path.stat().st_mode & 0o077
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the client token ({exc.strerror})") from None
    if mode:
        raise ConfigError(f"{path}: client token file is readable by others; chmod 600 {path}")
    if not text:
        raise ConfigError(f"{path}: client token file is empty")
    return text.splitlines()[0].strip()
