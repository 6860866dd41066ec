"""A minimal runnable sync node: `python -m crdtd.sync.node_runner --config NODE.toml`.

Opens the node's store and state, serves crdtd.v1.Peer (mutual TLS, or plain text on
loopback when the config allows it) and gossips until SIGTERM/SIGINT, then stops cleanly
(exit 0). Prints `READY <address> <key id>` on stdout once serving. A bad config exits 2
with the error on stderr. The daemon (`crdtd start`) replaces this; until then it is what
the multi-process tests and simulations run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from crdtd.crypto.node_config import load_node_config
from crdtd.errors import CrdtdError, ValidationError
from crdtd.state.e4 import E4State
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import Identity
from crdtd.sync.node import SyncNode
from crdtd.sync.tls import security_for_node
from crdtd.sync.transport import GrpcTransport

log = logging.getLogger("crdtd.sync.node_runner")


def seed_entries(state: E4State, paths: list[Path]) -> int:
    """Apply entry files (e.g. the federation's admin-entries/*.entry) in name order;
    returns how many were new. Entries already held or refused are skipped."""
    added = 0
    for path in sorted(paths):
        try:
            result = state.apply(path.read_bytes())
        except ValidationError as exc:
            log.warning("seed entry %s refused: %s", path, exc)
            continue
        added += result.status.value != "duplicate"
    return added


async def run(config_path: Path, seed_dirs: list[Path]) -> int:
    """Serve and gossip until a termination signal; returns the exit status."""
    cfg = load_node_config(config_path, env=os.environ)
    tls = security_for_node(cfg)
    sync_config = SyncConfig.from_gossip_settings(cfg.gossip)
    state = E4State.open(cfg.data_dir, admin=cfg.federation.admin, policy=cfg.federation.policy)
    try:
        files = [p for d in seed_dirs for p in Path(d).glob("*.entry")]
        seed_entries(state, files)
        try:
            state.apply(cfg.membership_bytes())
        except ValidationError as exc:
            log.warning("own membership entry not applied yet: %s", exc)
        identity = Identity(
            cfg.load_key(),
            cfg.membership_bytes(),
            cfg.federation.id,
            cfg.federation.admin,
            cfg.federation.policy,
            cfg.advertise,
        )
        node = SyncNode(
            state,
            identity,
            GrpcTransport(tls, sync_config),
            sync_config,
            bootstrap=cfg.bootstrap,
            loopback_only=tls is None,
        )
        await node.start(f"{cfg.peer_host}:{cfg.peer_port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"READY {node.address} {identity.key_id.hex()}", flush=True)
        await stop.wait()
        await node.stop(grace=2.0)
    finally:
        state.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m crdtd.sync.node_runner", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="node TOML config")
    parser.add_argument(
        "--seed",
        action="append",
        default=[],
        type=Path,
        help="directory of *.entry files to apply first (e.g. the federation's admin-entries)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(run(args.config, args.seed))
    except CrdtdError as exc:
        print(f"crdtd node_runner: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
