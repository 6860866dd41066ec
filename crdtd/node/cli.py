"""CLI verbs for running and using a node: `start`, `push`, `ls`, `status`, `materialise`,
`erase`, `trust`, `watch` and `config check`.

Client verbs reach a node with `--node ADDR` (default `$CRDTD_NODE`, else 127.0.0.1:7401) and
a bearer token (`--token-file`, or `$CRDTD_TOKEN`), or take address and credentials from a
node's config with `--config FILE.toml`. `--json` prints one JSON document. Transfers show a
progress bar when stderr is a terminal. Wired into `crdtd` by `crdtd.cli`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from crdtd.errors import ConfigError


def _print(args: argparse.Namespace, human: str, data: Any) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else human)


def _progress(args: argparse.Namespace) -> bool:
    return not args.json and sys.stderr.isatty()


def client_for(args: argparse.Namespace) -> Any:
    """A `crdtd.client.Client` from the options `client_options` added."""
    from crdtd.client import Client
    from crdtd.crypto.x509 import TlsMaterial
    from crdtd.node.config import read_token

    if args.config:
        return Client.from_config(args.config, timeout=args.timeout)
    token = os.environ.get("CRDTD_TOKEN") or None
    if args.token_file:
        token = read_token(Path(args.token_file))
    tls = None
    if args.cert or args.tls_key or args.ca:
        if not (args.cert and args.tls_key and args.ca):
            raise ConfigError("mutual TLS needs --cert, --tls-key and --ca together")
        tls = TlsMaterial.load(args.cert, args.tls_key, args.ca)
    return Client(args.node, token=token, tls=tls, timeout=args.timeout)


def _kv(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        if key in out:
            raise ConfigError(f"{what} {key!r} is given more than once")
        out[key] = value
    return out


def _meta_value(text: str) -> Any:
    """`--meta` values: integers and true/false are typed, everything else is text."""
    if text.lstrip("-").isdigit() and len(text.lstrip("-")) < 19:
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def _is_full_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _prefix(text: str, what: str) -> str:
    """`text` as a lower-case hex prefix of at least 4 digits, or ConfigError."""
    if len(text) < 4 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ConfigError(
            f"{what} {text!r}: expected an id (64 hex digits, or the first 4 or more of them "
            "as `crdtd ls` prints)"
        )
    return text.lower()


def _unique(text: str, what: str, candidates: dict[str, str]) -> bytes:
    """The one candidate id (hex -> label) that `text` names, or ConfigError."""
    found = sorted(h for h in candidates if h.startswith(text))
    if len(found) == 1:
        return bytes.fromhex(found[0])
    if not found:
        raise ConfigError(f"{what} {text!r}: no id on this node starts with {text}")
    shown = ", ".join(f"{h[:16]} ({candidates[h]})" if candidates[h] else h[:16] for h in found)
    raise ConfigError(f"{what} {text!r} is ambiguous: {shown}; give more digits")


def resolve_entry_ids(client: Any, texts: list[str], what: str = "entry id") -> list[bytes]:
    """Entry ids from full ids or the short prefixes `crdtd ls` prints (asks the node)."""
    if all(_is_full_id(t) for t in texts):
        return [bytes.fromhex(t) for t in texts]
    prefixes = [None if _is_full_id(t) else _prefix(t, what) for t in texts]
    held = {e.id.hex(): e.namespace or e.kind for e in client.list("", include_removed=True)}
    return [
        bytes.fromhex(t) if p is None else _unique(p, what, held)
        for t, p in zip(texts, prefixes, strict=True)
    ]


def resolve_author(client: Any, text: str, what: str = "--author") -> bytes:
    """A member key id from 64 hex digits, a member name, or a key id prefix (asks the node)."""
    if _is_full_id(text):
        return bytes.fromhex(text)
    members = {s.key_id.hex(): s.name for s in client.trust().scores}
    named = [k for k, name in members.items() if name and name == text]
    if len(named) == 1:
        return bytes.fromhex(named[0])
    if len(text) < 4 or any(c not in "0123456789abcdefABCDEF" for c in text):
        known = ", ".join(sorted(n for n in members.values() if n)) or "none"
        raise ConfigError(f"{what} {text!r}: no member has that name (members: {known})")
    return _unique(text.lower(), what, members)


# -- verbs ------------------------------------------------------------------------------------


def _cmd_start(args: argparse.Namespace) -> int:
    from crdtd.node.daemon import run

    return run(args.config_file, log_format=args.log_format, log_level=args.log_level)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from crdtd.node.config import load_daemon_config, load_identity

    try:
        cfg = load_daemon_config(args.file)
        key, _ = load_identity(cfg.node)
    except ConfigError as exc:
        print(f"crdtd config check: {exc}", file=sys.stderr)
        return 2
    data = {
        "config": str(cfg.path),
        "node": cfg.node.name,
        "key_id": key.key_id.hex(),
        "federation": cfg.node.federation.id,
        "client": cfg.client_address,
        "peer": cfg.node.advertise,
        "metrics": cfg.metrics_address,
        "auth": cfg.auth_mode,
        "client_tls": cfg.client_tls,
        "max_payload": cfg.max_payload,
        "namespaces": {name: ns.describe() for name, ns in sorted(cfg.namespaces.items())},
    }
    spaces = ", ".join(f"{n} ({_namespace_label(ns)})" for n, ns in sorted(cfg.namespaces.items()))
    _print(
        args,
        f"{cfg.path}: ok\n  node {cfg.node.name} ({key.key_id.hex()[:16]}) in "
        f"{cfg.node.federation.id}; key, membership and TLS certificate match\n"
        f"  client {cfg.client_address} ({cfg.auth_mode}{', tls' if cfg.client_tls else ''}), "
        f"peer {cfg.node.advertise}, metrics {cfg.metrics_address or 'off'}\n"
        f"  namespaces: {spaces or 'any (none declared)'}",
        data,
    )
    return 0


def _namespace_label(ns: Any) -> str:
    """What `config check` says a namespace is: its kind, and what it merges with."""
    if ns.kind == "model":
        what = "bytes, not merged" if ns.payload_kind == "bytes" else ns.strategy
        return f"model: {what}"
    if ns.kind == "sketch":
        name, size = ns.settings.size
        return f"sketch: {ns.settings.type}, {name} {size}"
    return str(ns.kind)


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _bounded(value: Any, lower: Any, upper: Any) -> str:
    return f"{_num(value)} [{_num(lower)}, {_num(upper)}]"


TOP_SHOWN = 10
"""Frequent items a printed summary lists (`--json` has them all)."""


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A kind's summary for people: its facts on one line, then an estimate with its bounds,
    quantiles and frequent items one per line (`--json` prints the summary as it is)."""
    s = dict(summary)
    estimate = None
    if {"estimate", "lower_bound", "upper_bound"} <= s.keys():
        estimate = "estimate " + _bounded(
            s.pop("estimate"), s.pop("lower_bound"), s.pop("upper_bound")
        )
        s.pop("std_devs", None)
        if "confidence" in s:
            estimate += f" ({s.pop('confidence'):.2%} confidence)"
    quantiles = s.pop("quantiles", None)
    top = s.pop("top", None)
    facts = []
    for key, value in sorted(s.items(), key=lambda kv: (kv[0] != "sketch", kv[0])):
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            facts.append(f"{key} [{', '.join(_num(v) for v in value)}]")
        elif isinstance(value, (dict, list)):
            facts.append(f"{key} {json.dumps(value, sort_keys=True)}")
        else:
            facts.append(f"{key} {_num(value)}")
    lines = [", ".join(facts)] if facts else []
    if estimate:
        lines.append(estimate)
    if isinstance(quantiles, dict):
        lines += [
            f"quantile at rank {r}: {_bounded(q['value'], q['lower'], q['upper'])}"
            for r, q in quantiles.items()
        ]
    if isinstance(top, list):
        lines += [
            f"item {t['item']!r}: {_bounded(t['estimate'], t['lower'], t['upper'])}"
            for t in top[:TOP_SHOWN]
        ]
        if len(top) > TOP_SHOWN:
            lines.append(f"... {len(top) - TOP_SHOWN} more items (--json)")
    return lines


def _cmd_push(args: argparse.Namespace) -> int:
    from crdtd.crypto.keys import NodeKey

    meta = {k: _meta_value(v) for k, v in _kv(args.meta, "--meta").items()}
    key = NodeKey.load(args.member_key) if args.member_key else None
    with client_for(args) as c:
        r = c.push(
            args.namespace,
            args.path,
            metadata=meta,
            base_id=resolve_entry_ids(c, [args.base], "--base")[0] if args.base else None,
            payload_kind=args.kind,
            key=key,
            progress=_progress(args),
        )
    _print(
        args,
        f"{r.entry_id.hex()}  {args.namespace}  seq {r.seq}"
        + ("  (already present)" if r.already_present else "")
        + (
            "\n  erased on arrival: every entry of this author is erased (crdtd erase --author);"
            " no materialisation will use it"
            if r.erased
            else ""
        ),
        {
            "entry_id": r.entry_id.hex(),
            "payload_digest": r.payload_digest.hex(),
            "already_present": r.already_present,
            "erased": r.erased,
            "author": r.author.hex(),
            "seq": r.seq,
        },
    )
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        entries = c.list(
            args.namespace or "",
            include_removed=args.all,
            author=resolve_author(c, args.author) if args.author else b"",
        )
    if args.json:
        _print(args, "", [e.to_json() for e in entries])
        return 0
    for e in entries:
        who = e.author_name or e.author.hex()[:16]
        what = f"{e.namespace}  {e.payload_size} B" if e.kind == "contribution" else e.kind
        meta = " ".join(f"{k}={v}" for k, v in sorted(e.metadata.items()))
        flag = "  [erased]" if e.removed else ""
        print(f"{e.id.hex()[:16]}  {who:<16} seq {e.seq:<4} {what}  {meta}{flag}".rstrip())
    if not entries:
        print("(no entries)", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        s = c.status()
    if args.json:
        _print(args, "", s.to_json())
        return 0
    states = ("live", "visible", "erased", "held", "quarantined")
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(s.entry_counts.items()) if k not in states)
    by_state = ", ".join(f"{k} {s.entry_counts[k]}" for k in states if k in s.entry_counts)
    counts = f"{by_kind}; {by_state}" if by_kind and by_state else by_kind or by_state
    print(f"node {s.node_name} ({s.node_id.hex()[:16]}) in {s.federation_id}, crdtd {s.version}")
    print(f"  state root  {s.state_root.hex()}")
    print(f"  entries     {counts}")
    print(
        f"  client {s.client_address}  peer {s.peer_address}  metrics {s.metrics_address or 'off'}"
        + (f"  health {s.health_address}" if s.health_address else "")
    )
    live = [p for p in s.peers if p.alive]
    behind = [p for p in live if not p.in_sync]
    if not behind:
        print(f"  sync        converged ({len(live)} live peers, all in sync)")
    else:
        print(f"  sync        converging ({len(behind)} of {len(live)} live peers differ)")
    for n in s.namespace_info:
        print(
            f"  namespace   {n.name:<28} {n.kind:<7} {n.contributions} "
            f"contribution{'' if n.contributions == 1 else 's'}, "
            f"{n.payload_bytes} B"
        )
    for p in s.peers:
        ago = "never" if p.seconds_since_sync < 0 else f"{p.seconds_since_sync:.1f}s ago"
        state = "REVOKED" if p.revoked else ("alive" if p.alive else "down")
        state += ", in sync" if p.in_sync else ""
        print(f"  peer {p.name or p.key_id.hex()[:16]:<16} {p.address:<22} {state}; synced {ago}")
    return 0


def _cmd_materialise(args: argparse.Namespace) -> int:
    params = _kv(args.param, "--param")
    with client_for(args) as c:
        m = c.materialise(
            args.namespace,
            out=None if args.on_node else args.out,
            remote_path=args.out if args.on_node else "",
            strategy=args.strategy,
            params=params,
            dtype=args.dtype,
            format=args.format or _format_of(args.out),
            provenance=args.provenance,
            progress=_progress(args),
            round=args.round,
        )
    where = m.out_path or m.local_path
    if m.kind == "model":
        what = f"strategy {m.strategy} {m.params_json}"
    else:
        what = m.kind if m.format in ("", m.kind) else f"{m.kind} {m.format}"
    lines = [
        f"{m.output_sha256}  {where}",
        f"  {what}, {len(m.inputs)} input{'' if len(m.inputs) == 1 else 's'}, "
        f"input set {m.input_set_digest[:16]}, {m.size} B in {m.seconds:.2f}s",
    ]
    lines += [f"  {line}" for line in summary_lines(m.summary or {})]
    if m.provenance_path:
        lines.append(f"  provenance {m.provenance_sha256[:16]}  {m.provenance_path}")
    lines += [f"  excluded {a.hex()[:16]}: {why}" for a, why in m.excluded]
    _print(args, "\n".join(lines), m.to_json())
    return 0


_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".csv": "csv"}


def _format_of(path: str) -> str:
    """The output format an --out path's suffix names (tables); '' leaves it to the node."""
    return _FORMATS.get(Path(path).suffix.lower(), "")


def send_admin_chain(client: Any, fed: Any, new: Any) -> None:
    """Submit the admin's chain (a `crdtd.crypto.federation.Federation`) up to, not including,
    the `new` entry about to be sent (duplicates are cheap): an admin entry is applied only
    after its predecessors, and the node may not hold them all yet (memberships of nodes it
    never met)."""
    from crdtd.state.entry import Kind

    for e in fed.admin_entries():
        if e.seq >= new.seq:
            break
        if e.kind is Kind.CONTRIBUTION:
            payload = fed.admin_payload(e)
            if payload is not None:
                client.push(
                    e.namespace, payload, payload_kind=e.payload_kind, signed_entry=e.to_bytes()
                )
        else:
            client.submit(e)


def _cmd_erase(args: argparse.Namespace) -> int:
    from crdtd.crypto.keys import NodeKey

    if not args.ids and not args.author:
        raise ConfigError("erase needs entry ids or --author KEYID")
    key = NodeKey.load(args.member_key) if args.member_key else None
    signed = None
    with client_for(args) as c:
        ids = resolve_entry_ids(c, args.ids) if args.ids else []
        author = resolve_author(c, args.author) if args.author else None
        if args.admin_dir:
            from crdtd.crypto.federation import Federation
            from crdtd.state.entry import make_removal

            federation = Federation.load(args.admin_dir)
            signed = federation.sign_admin_entry(
                lambda admin, seq, prev: make_removal(
                    admin,
                    seq,
                    prev,
                    ids,
                    target_author=author,
                    reason=args.reason,
                    policy=federation.policy,
                )
            )
            send_admin_chain(c, federation, signed)
        removal, erased = c.erase(ids, author=author, reason=args.reason, key=key, removal=signed)
    noun = "entry" if erased == 1 else "entries"
    _print(
        args,
        f"removal {removal.hex()}: {erased} {noun} erased here; peers erase "
        f"{'it' if erased == 1 else 'them'} as the removal spreads",
        {"removal_id": removal.hex(), "erased": erased},
    )
    return 0


def _cmd_trust(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        t = c.trust()
    rows = [
        {
            "key_id": s.key_id.hex(),
            "name": s.name,
            "trust": s.trust,
            "dimensions": dict(sorted(s.dimensions.items())),
            "gated": s.gated,
            "revoked": s.revoked,
            "faults": list(s.faults),
        }
        for s in t.scores
    ]
    if args.json:
        _print(args, "", {"threshold": t.threshold, "digest": t.digest, "scores": rows})
        return 0
    dims = ("integrity", "causality", "consistency", "gossip", "model")
    print(f"threshold {t.threshold:.3f}, trust digest {t.digest[:16]}")
    print(f"  {'member':<18} {'trust':>6}  " + " ".join(f"{d[:5]:>5}" for d in dims))
    for r in rows:
        name = r["name"] or r["key_id"][:16]
        cells = " ".join(f"{r['dimensions'].get(d, 0):5.2f}" for d in dims)
        flag = "  REVOKED" if r["revoked"] else ("  gated" if r["gated"] else "")
        print(f"  {name:<18} {r['trust']:6.3f}  {cells}{flag}")
        for f in r["faults"]:
            print(f"      {f}")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        for ev in c.watch(args.namespace or ""):
            data = {
                "kind": ev.kind,
                "entry_id": ev.entry_id.hex(),
                "namespace": ev.namespace,
                "author": ev.author.hex(),
                "entry_kind": ev.entry_kind,
                "detail": ev.detail,
            }
            human = f"{ev.kind:<16} {ev.entry_kind:<12} {ev.entry_id.hex()[:16]} {ev.namespace} {ev.detail}"
            _print(args, human.rstrip(), data)
            sys.stdout.flush()
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from crdtd.sql.engine import run
    from crdtd.sql.plan import parse

    con = duckdb.connect()
    try:
        local = bool(parse(con, args.query).merges)
    finally:
        con.close()
    digests: dict[str, str] = {}
    if not local:
        with client_for(args) as c:
            result = c.sql(args.query)
        table, digests = result.table, dict(result.input_set_digests)
    elif args.config or args.node or os.environ.get("CRDTD_NODE"):
        with client_for(args) as c:
            names = [n.name for n in c.status().namespace_info if n.kind == "table"]
            table = run(args.query, lambda ns: c.table(ns), names, files=True).table
    else:
        table = run(args.query, {}, files=True).table
    if args.json:  # one JSON document: the rows, and each namespace's input set
        doc = {"rows": table.to_pylist(), "input_set_digests": dict(sorted(digests.items()))}
        print(json.dumps(doc, sort_keys=True, default=str))
        return 0
    _write_rows(table, args.format, args.out)
    return 0


def _cmd_recall(args: argparse.Namespace) -> int:
    embedding = None
    if args.embedding:
        text = args.embedding
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        try:
            embedding = [float(x) for x in json.loads(text)]
        except (ValueError, TypeError):
            raise ConfigError("--embedding: expected a JSON list of numbers (or @FILE)") from None
    with client_for(args) as c:
        hits = c.recall(args.namespace, args.query, k=args.k, embedding=embedding)
    if args.json:
        _print(args, "", [{"score": s, "memory": m} for s, m in hits])
        return 0
    for score, m in hits:
        tags = f"  [{', '.join(m.get('tags') or [])}]" if m.get("tags") else ""
        print(f"{score:8.4f}  {m['id']:<16} {m['author']:<16} {m['text']}{tags}")
    if not hits:
        print("(no memories match)", file=sys.stderr)
    return 0


def _write_rows(table: Any, fmt: str, out: str | None) -> None:
    """Query rows as a printed table, JSON lines, or a Parquet file."""
    import polars as pl

    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    if fmt == "parquet":
        if not out:
            raise ConfigError("--format parquet needs --out FILE.parquet")
        df.write_parquet(out)
        print(f"{df.height} rows -> {out}", file=sys.stderr)
    elif fmt == "jsonl":
        text = df.write_ndjson()
        if out:
            Path(out).write_text(text)
        else:
            sys.stdout.write(text)
    else:
        with pl.Config(tbl_rows=50, tbl_cols=-1, tbl_width_chars=200):
            text = str(df)
        if out:
            Path(out).write_text(text + "\n")
        else:
            print(text)


# -- wiring -----------------------------------------------------------------------------------


def client_options(p: argparse.ArgumentParser) -> None:
    """The options every client verb takes to reach a node (also `federation revoke`)."""
    g = p.add_argument_group("reaching the node")
    g.add_argument(
        "--node",
        default=None,
        metavar="ADDR",
        help="host:port of the node's client API (default $CRDTD_NODE or 127.0.0.1:7401)",
    )
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE.toml",
        help="take the address and credentials from this node config",
    )
    g.add_argument("--token-file", default=None, help="bearer token file (default $CRDTD_TOKEN)")
    g.add_argument("--cert", default=None, help="client TLS certificate (mutual TLS)")
    g.add_argument("--tls-key", default=None, help="client TLS key (mutual TLS)")
    g.add_argument("--ca", default=None, help="federation CA certificate (mutual TLS)")
    g.add_argument("--timeout", type=float, default=None, help="seconds per call")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the node verbs to the `crdtd` parser."""
    p = subparsers.add_parser("start", help="run a node in the foreground until SIGTERM")
    p.add_argument("--config", dest="config_file", required=True, metavar="FILE.toml")
    p.add_argument("--log-format", choices=("text", "json"), default=None)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    p.set_defaults(func=_cmd_start)

    p = subparsers.add_parser("config", help="check a node config file")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="load FILE exactly as `crdtd start` would")
    c.add_argument("file", metavar="FILE.toml")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_config_check)

    p = subparsers.add_parser("push", help="push a contribution (file) into a namespace")
    p.add_argument("namespace", help="a namespace the node's config declares")
    p.add_argument("path", help="the file to push (one contribution)")
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata (repeatable); integers and true/false are typed, e.g. num_examples=1200",
    )
    p.add_argument(
        "--base", default="", metavar="ENTRY_ID", help="the contribution this tunes (id or prefix)"
    )
    p.add_argument("--kind", default="", help="payload kind (default: the namespace's)")
    p.add_argument("--key", dest="member_key", default=None, help="sign with this member key")
    client_options(p)
    p.set_defaults(func=_cmd_push)

    p = subparsers.add_parser("ls", help="list entries (a namespace's contributions, or all)")
    p.add_argument("namespace", nargs="?", help="only this namespace's contributions")
    p.add_argument("--all", action="store_true", help="include erased entries")
    p.add_argument(
        "--author", default="", metavar="MEMBER", help="only this member's (name or key id)"
    )
    client_options(p)
    p.set_defaults(func=_cmd_ls)

    p = subparsers.add_parser("status", help="a node's state root, entry counts and peers")
    client_options(p)
    p.set_defaults(func=_cmd_status)

    p = subparsers.add_parser("materialise", help="merge a namespace into one file")
    p.add_argument("namespace")
    p.add_argument(
        "--out", required=True, metavar="PATH", help="where the merged file goes (streamed back)"
    )
    p.add_argument("--on-node", action="store_true", help="write PATH on the node's disk")
    p.add_argument(
        "--format",
        default="",
        help="output format where the kind has several (default: --out's suffix)",
    )
    p.add_argument(
        "--provenance",
        action="store_true",
        help="also write PATH.provenance.FORMAT: the entries every output value came from",
    )
    p.add_argument(
        "--strategy", default="", help="model namespaces: merge with this strategy this once"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy parameter (repeatable; the value is read as JSON, else text)",
    )
    p.add_argument("--dtype", default="", help="model namespaces: output dtype, e.g. bfloat16")
    p.add_argument(
        "--round",
        type=int,
        default=None,
        help="rounds namespaces: the round whose global to build (default: the latest)",
    )
    client_options(p)
    p.set_defaults(func=_cmd_materialise)

    p = subparsers.add_parser(
        "sql", help="one SELECT over merged table namespaces (or files: FROM merge(...))"
    )
    p.add_argument("query", help='e.g. SELECT count(*) FROM "records/admissions"')
    p.add_argument("--format", choices=("table", "jsonl", "parquet"), default="table")
    p.add_argument("--out", default=None, metavar="PATH", help="write the rows here")
    client_options(p)
    p.set_defaults(func=_cmd_sql)

    p = subparsers.add_parser("recall", help="the memories of a memory namespace nearest a query")
    p.add_argument("namespace", help="a memory namespace")
    p.add_argument("query", nargs="?", default="", help="words to rank memories by (BM25)")
    p.add_argument("-k", type=int, default=5, help="memories to return (default 5)")
    p.add_argument(
        "--embedding", default="", help="the query's embedding: a JSON list, or @FILE holding one"
    )
    client_options(p)
    p.set_defaults(func=_cmd_recall)

    p = subparsers.add_parser("erase", help="erase entries everywhere (right to be forgotten)")
    p.add_argument("ids", nargs="*", metavar="ID", help="entry ids (or the prefixes ls prints)")
    p.add_argument(
        "--author",
        default="",
        metavar="MEMBER",
        help="every entry of this member (name or key id); needs --admin-dir",
    )
    p.add_argument("--reason", default="")
    p.add_argument(
        "--admin-dir",
        default=None,
        metavar="FED_DIR",
        help="sign as the federation admin (continues the admin chain kept in FED_DIR)",
    )
    p.add_argument(
        "--key", dest="member_key", default=None, help="sign with this member key instead"
    )
    client_options(p)
    p.set_defaults(func=_cmd_erase)

    p = subparsers.add_parser("trust", help="trust scores of every member")
    client_options(p)
    p.set_defaults(func=_cmd_trust)

    p = subparsers.add_parser("watch", help="print a node's events as they happen")
    p.add_argument("namespace", nargs="?", help="only this namespace's entry events")
    client_options(p)
    p.set_defaults(func=_cmd_watch)
