"""`crdtd start --config FILE.toml`: one node in the foreground until SIGTERM or SIGINT.

One asyncio event loop (uvloop when installed) runs the client gRPC server (`crdtd.v1.Node`
plus health checking and reflection), the peer server and gossip (`crdtd.sync`), and the
`/metrics` endpoint; store writes, hashing and merges run in worker threads. On SIGTERM or
SIGINT the node stops accepting calls, lets in-flight RPCs finish for up to
`[limits] drain_timeout_ms`, stops gossip and the peer server, then closes the store and
the signature worker processes (`crdtd.crypto.verifier`) and exits 0. An invalid config
exits 2 with an error naming the file, line and key.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from crdtd import __version__
from crdtd.crypto import verifier
from crdtd.errors import ConfigError, CrdtdError
from crdtd.node.client_service import SERVICE_NAME, NodeService, TokenAuth
from crdtd.node.config import DaemonConfig, ensure_token, load_daemon_config
from crdtd.node.core import NodeCore
from crdtd.node.events import EventBus, NodeEvent
from crdtd.node.logs import event, get_logger, setup_logging
from crdtd.node.metrics import NodeMetrics, serve_metrics
from crdtd.node.scrub import ScrubTask
from crdtd.proto_gen.crdtd.v1 import node_pb2_grpc
from crdtd.sync.guard import RequestGuard

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
LOCK_NAME = "daemon.lock"

log = get_logger("crdtd.node.daemon")


class Daemon:
    """One running node: servers, sync and metrics around a NodeCore."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.events = EventBus()
        self.metrics = NodeMetrics(self._snapshot, node=config.node.name)
        self.core: NodeCore | None = None
        self.client_server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self.sync: Any = None
        self.client_port = 0
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self.metrics_port = 0
        self._lock_fd: int | None = None
        self._stopping = False
        self.scrub: ScrubTask | None = None
        self._peers_now: list[Any] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start every server; raises (and cleans up) on failure."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.events.bind(loop)
        self._lock_fd = _lock_data_dir(cfg.node.data_dir)
        try:
            self.core = await asyncio.to_thread(NodeCore.open, cfg, self.metrics, self.events)
            await self._start_client()
            self.sync = await _start_sync(self.core, self.events, self.metrics)
            self._start_scrub()
            await self._start_metrics()
        except BaseException:
            await self.stop()
            raise
        if not self.core.is_member():
            event(log, "daemon.membership_waiting", level=30, detail=self.core.membership_wait())
        event(
            log,
            "daemon.started",
            node=cfg.node.name,
            key_id=self.core.key_id.hex(),
            federation=cfg.node.federation.id,
            client=f"{cfg.node.client_host}:{self.client_port}",
            health=self.health_address or "client port",
            peer=cfg.node.advertise,
            metrics=f"{cfg.node.metrics_host}:{self.metrics_port}" if self.metrics_port else "off",
            auth=cfg.auth_mode,
            tls=cfg.client_tls,
            sync="on" if self.sync is not None else "off",
            loop=type(loop).__module__.split(".")[0],
            version=__version__,
        )

    async def _start_client(self) -> None:
        cfg, core = self.config, self.core
        assert core is not None
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if cfg.auth_mode == "token":
            interceptors.append(TokenAuth(await asyncio.to_thread(ensure_token, cfg.token_file)))
        interceptors.append(RequestGuard())  # after auth: strangers learn no message types
        options = [
            ("grpc.max_receive_message_length", cfg.max_message),
            ("grpc.max_send_message_length", cfg.max_message),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        service = NodeService(core, nudge=self._nudge)
        node_pb2_grpc.add_NodeServicer_to_server(service, server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{cfg.node.client_host}:{cfg.node.client_port}"
        if cfg.client_tls:
            tls = cfg.node.tls_material()
            creds = tls.server_credentials(require_client_auth=cfg.auth_mode == "mtls")
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise CrdtdError(f"cannot listen on the client address {address}")
        await server.start()
        self.client_server, self.client_port = server, port
        if cfg.separate_health:
            await self._start_health()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _start_health(self) -> None:
        """Serve only grpc.health.v1.Health on `[auth] health_port` (a free port when unset)
        over TLS with this node's certificate and no client certificate, so probes work
        without credentials when the client port demands mutual TLS. Nothing else is
        registered there: every other method answers UNIMPLEMENTED."""
        cfg = self.config
        assert self.health is not None
        server = grpc.aio.server(interceptors=[RequestGuard()], options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{cfg.node.client_host}:{cfg.health_port}"
        creds = cfg.node.tls_material().server_credentials(require_client_auth=False)
        port = server.add_secure_port(address, creds)
        if not port:
            raise CrdtdError(f"cannot listen on the health address {address}")
        await server.start()
        self.health_server, self.health_port = server, port
        if self.core is not None:
            self.core.health_address = self.health_address

    @property
    def health_address(self) -> str:
        """host:port of the health-only listener ("" when health shares the client port)."""
        if not self.health_port:
            return ""
        return f"{self.config.client_address.rpartition(':')[0]}:{self.health_port}"

    def _start_scrub(self) -> None:
        """The background scrub ([scrub]); it repairs from peers when sync runs."""
        if not self.config.scrub_enabled or self.core is None:
            return
        sync = self.sync
        self.scrub = ScrubTask(
            self.core,
            peers=sync.repair_peers if sync is not None else list,
            fetch=sync.fetch_chunks if sync is not None else None,
        )
        self.scrub.start()

    async def _start_metrics(self) -> None:
        cfg = self.config
        if not cfg.node.metrics_port:
            return
        self.metrics_server = await serve_metrics(
            cfg.node.metrics_host, cfg.node.metrics_port, self._render_metrics
        )
        sock = self.metrics_server.sockets[0]
        self.metrics_port = int(sock.getsockname()[1])

    async def _render_metrics(self) -> bytes:
        self._peers_now = self.core.peers() if self.core is not None else []
        return await asyncio.to_thread(self.metrics.render)

    def _snapshot(self) -> Any:
        if self.core is None or self._stopping:
            return None
        return self.core.snapshot(self._peers_now)

    def _nudge(self) -> None:
        """A client added entries: tell the sync layer so peers hear of them now."""
        if self.sync is not None:
            self.sync.nudge()

    async def stop(self) -> None:
        """Drain client RPCs, stop sync and metrics, close the store (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        drain = self.config.drain_timeout_ms / 1000
        started = time.monotonic()
        if self.health is not None:
            with suppress(Exception):
                await self.health.enter_graceful_shutdown()
        self.events.publish(NodeEvent("node_stopping"))
        self.events.close()
        if self.client_server is not None:
            await self.client_server.stop(grace=drain)
        if self.health_server is not None:
            await self.health_server.stop(grace=0.5)
        if self.scrub is not None:
            await self.scrub.stop()
        if self.sync is not None:
            with suppress(Exception):
                await self.sync.stop(grace=max(0.5, drain - (time.monotonic() - started)))
        if self.metrics_server is not None:
            self.metrics_server.close()
            with suppress(Exception):
                await asyncio.wait_for(self.metrics_server.wait_closed(), 2)
        if self.core is not None:
            await asyncio.to_thread(self.core.close)
        await asyncio.to_thread(verifier.close_shared)  # signature worker processes
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        event(log, "daemon.stopped", seconds=round(time.monotonic() - started, 3))

    async def run_until_signal(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal(stop, sig))
        await self.start()
        await stop.wait()
        await self.stop()


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        event(log, "daemon.signal", signal=sig.name)
        stop.set()

    return handler


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on DATA_DIR/daemon.lock so two daemons never share a store."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"{data_dir}: another crdtd daemon is running on this data directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def _start_sync(core: NodeCore, events: EventBus, metrics: NodeMetrics) -> Any:
    """Start the peer server and gossip (crdtd.sync); None when the sync layer is absent."""
    try:
        from crdtd.node.sync_glue import start_sync
    except ImportError as exc:
        event(log, "sync.unavailable", reason=str(exc))
        return None
    return await start_sync(core, events, metrics)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(
    config_path: Path | str, log_format: str | None = None, log_level: str | None = None
) -> int:
    """Load the config and serve until a signal; returns the process exit status."""
    try:
        cfg = load_daemon_config(config_path)
    except ConfigError as exc:
        print(f"crdtd start: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(log_format or cfg.log_format, log_level or cfg.log_level)
    daemon = Daemon(cfg)
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(daemon.run_until_signal())
    except ConfigError as exc:
        event(log, "daemon.config_error", level=40, error=str(exc))
        return EXIT_CONFIG
    except CrdtdError as exc:
        event(log, "daemon.failed", level=40, error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK
