"""CLI verbs for identity: `federation init|add-node`, `keygen`, `tls`.

Wired into `crdtd` by `crdtd.cli` through `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crdtd.crypto import federation, pq
from crdtd.crypto.keys import NodeKey


def _print(args: argparse.Namespace, human: str, data: dict[str, object]) -> None:
    print(json.dumps(data, sort_keys=True) if getattr(args, "json", False) else human)


def _cmd_init(args: argparse.Namespace) -> int:
    fed = federation.init(args.dir, federation_id=args.id, pq=args.pq)
    _print(
        args,
        f"federation {fed.id} created in {fed.directory}\n"
        f"  admin key id: {fed.admin.key_id.hex()}\n"
        f"  signatures:   {fed.policy}\n"
        f"  next: crdtd federation add-node NAME --dir {fed.directory}",
        {
            "federation_id": fed.id,
            "directory": str(fed.directory),
            "admin_key_id": fed.admin.key_id.hex(),
            "signatures": str(fed.policy),
        },
    )
    return 0


def _cmd_add_node(args: argparse.Namespace) -> int:
    cfg = federation.add_node(
        args.dir,
        args.name,
        host=args.host,
        peer_port=args.peer_port,
        client_port=args.client_port,
        metrics_port=args.metrics_port,
    )
    key_id = cfg.load_key().key_id.hex()
    _print(
        args,
        f"node {cfg.name} added: key id {key_id}\n"
        f"  config:  {cfg.path}\n"
        f"  peer {cfg.advertise}, client {cfg.client_host}:{cfg.client_port}, "
        f"metrics {cfg.metrics_host}:{cfg.metrics_port}\n"
        f"  start:   crdtd start --config {cfg.path}",
        {
            "name": cfg.name,
            "key_id": key_id,
            "config": str(cfg.path),
            "peer": cfg.advertise,
            "client_port": cfg.client_port,
            "metrics_port": cfg.metrics_port,
            "bootstrap": list(cfg.bootstrap),
        },
    )
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from crdtd.node.cli import client_for, send_admin_chain

    fed = federation.Federation.load(args.dir)
    entry = fed.revoke(args.node, reason=args.reason, successor=args.successor)
    with client_for(args) as c:
        send_admin_chain(c, fed, entry)
        entry_id, status = c.submit(entry)
    body = entry.as_revocation()
    _print(
        args,
        f"revocation {entry_id.hex()} of {body.revoked.hex()} {status} on "
        f"{c.address}; it spreads to every node, which refuses the key from then on",
        {
            "revocation_id": entry_id.hex(),
            "revoked": body.revoked.hex(),
            "successor": body.successor.hex() if body.successor else None,
            "reason": body.reason,
            "status": status,
        },
    )
    return 0


def _cmd_namespace_key(args: argparse.Namespace) -> int:
    from crdtd.crypto.sealing import KEYS_PAYLOAD_KIND, KeyEnvelope
    from crdtd.node.cli import client_for, send_admin_chain

    fed = federation.Federation.load(args.dir)
    members = [m for m in args.members.split(",") if m]
    entry, envelope = fed.namespace_key(args.namespace, members)
    with client_for(args) as c:
        send_admin_chain(c, fed, entry)
        r = c.push(
            args.namespace, envelope, payload_kind=KEYS_PAYLOAD_KIND, signed_entry=entry.to_bytes()
        )
    epoch = KeyEnvelope.epoch_of(entry)
    _print(
        args,
        f"namespace {args.namespace}: key epoch {epoch} for {', '.join(members)} "
        f"(envelope {r.entry_id.hex()[:16]}); later contributions are sealed with it",
        {
            "namespace": args.namespace,
            "epoch": epoch,
            "members": members,
            "entry_id": r.entry_id.hex(),
        },
    )
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    key = NodeKey.generate(pq_enabled=args.pq)
    key.save(args.out, overwrite=args.force)
    _print(
        args,
        f"{key.key_id.hex()}  ({'ed25519+ml-dsa-65' if key.has_pq else 'ed25519'}) -> {args.out}",
        {"key_id": key.key_id.hex(), "path": str(args.out), "pq": key.has_pq},
    )
    return 0


def _cmd_tls(args: argparse.Namespace) -> int:
    hosts = tuple(dict.fromkeys([*args.host, "127.0.0.1", "localhost"]))
    cert, key = federation.issue_tls(
        args.dir, args.name, args.key, hosts=hosts, out_dir=args.out_dir, overwrite=args.force
    )
    _print(args, f"certificate {cert}\nprivate key {key}", {"cert": str(cert), "key": str(key)})
    return 0


def _cmd_pq_info(args: argparse.Namespace) -> int:
    name = pq.backend_name() if pq.available() else None
    _print(args, f"ML-DSA-65 backend: {name or 'none'}", {"ml_dsa_65_backend": name})
    return 0 if name else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `federation`, `keygen` and `tls` to the `crdtd` parser."""
    fed = subparsers.add_parser("federation", help="create a federation and add nodes")
    fed_sub = fed.add_subparsers(dest="federation_command", metavar="SUBCOMMAND", required=True)

    p = fed_sub.add_parser("init", help="create the admin key, CA and federation.toml")
    p.add_argument("--dir", type=Path, required=True, help="federation directory to create")
    p.add_argument("--id", default=None, help="federation id (default: from the admin key)")
    p.add_argument("--pq", action="store_true", help="require ML-DSA-65 signatures too (hybrid)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_init)

    p = fed_sub.add_parser("add-node", help="create a node's keys, cert, membership and config")
    p.add_argument("name", help="node name ([a-z0-9][a-z0-9_-]*)")
    p.add_argument("--dir", type=Path, required=True, help="federation directory")
    p.add_argument("--host", default="127.0.0.1", help="address the node listens on for peers")
    p.add_argument("--peer-port", type=int, default=None, help="default: a free port")
    p.add_argument("--client-port", type=int, default=None, help="default: a free port")
    p.add_argument("--metrics-port", type=int, default=None, help="default: a free port")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_add_node)

    from crdtd.node.cli import client_options  # the client verbs' options, shared

    p = fed_sub.add_parser(
        "revoke", help="revoke a member's key everywhere (signed by the admin, sent to a node)"
    )
    p.add_argument("node", metavar="NODE", help="node name (from nodes.toml) or key id (hex)")
    p.add_argument("--dir", type=Path, required=True, help="federation directory (admin key)")
    p.add_argument("--reason", default="", help="why (kept in the signed entry)")
    p.add_argument(
        "--successor",
        default=None,
        metavar="KEY",
        help="the key replacing it: node name, key id (hex) or key file",
    )
    client_options(p)
    p.set_defaults(func=_cmd_revoke)

    p = fed_sub.add_parser(
        "namespace-key",
        help="give an encrypted namespace a new key, wrapped for the named members only",
    )
    p.add_argument("namespace")
    p.add_argument(
        "--members", required=True, help="comma-separated node names or key ids that may read"
    )
    p.add_argument("--dir", type=Path, required=True, help="federation directory (admin key)")
    client_options(p)
    p.set_defaults(func=_cmd_namespace_key)

    p = fed_sub.add_parser("pq-info", help="show which ML-DSA-65 backend is active")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_pq_info)

    p = subparsers.add_parser("keygen", help="write a new node key file (mode 0600)")
    p.add_argument("--out", type=Path, required=True, help="key file to write")
    p.add_argument("--pq", action="store_true", help="add an ML-DSA-65 key pair")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_keygen)

    p = subparsers.add_parser("tls", help="issue a node TLS certificate from the federation CA")
    p.add_argument("--dir", type=Path, required=True, help="federation directory (holds the CA)")
    p.add_argument("--name", required=True, help="node name (certificate subject)")
    p.add_argument("--key", type=Path, required=True, help="the node's key file (from keygen)")
    p.add_argument(
        "--host", action="append", default=[], help="extra DNS name or IP for the cert (repeat)"
    )
    p.add_argument("--out-dir", type=Path, default=None, help="default: the federation dir")
    p.add_argument("--force", action="store_true", help="overwrite an existing TLS key")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_tls)
