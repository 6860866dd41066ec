"""A small asyncio TCP proxy that can cut and heal the links between real daemons.

Each daemon gets its own egress proxy: started with `grpc_proxy=http://127.0.0.1:PORT` in
its environment, gRPC opens every peer connection as an HTTP CONNECT tunnel through it, so
the proxy knows both ends of every link (this daemon -> the address it dials). `Links`
holds one proxy per daemon and cuts or heals links between groups:

- a cut link behaves like a partition, not a refusal: bytes already in flight and new
  tunnels are held (no RST, no error), so calls across it time out as they would on a
  real network split;
- healing releases them: held tunnels resume (TCP would retransmit) and waiting CONNECTs
  are forwarded.

The proxies run on their own event loop thread, so synchronous tests drive them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable


class EgressProxy:
    """HTTP CONNECT proxy for one daemon's outbound peer connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.tunnels = 0
        self._open: dict[str, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def link(self, target: str) -> asyncio.Event:
        """The gate of the link to `target` (host:port, named by its port): set = open."""
        port = target.rpartition(":")[2]
        gate = self._open.get(port)
        if gate is None:
            gate = self._open[port] = asyncio.Event()
            gate.set()
        return gate

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for gate in self._open.values():
            gate.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] != b"CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            target = parts[1].decode()
            gate = self.link(target)
            await gate.wait()  # a cut link holds new tunnels until it heals
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            self.tunnels += 1
            await asyncio.gather(
                self._pump(reader, up_writer, gate),
                self._pump(up_reader, writer, gate),
                return_exceptions=True,
            )
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                await gate.wait()  # cut: hold the bytes, as a partitioned network does
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()


class Links:
    """One egress proxy per named daemon, and cut/heal between groups of them."""

    def __init__(self, names: Iterable[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxies = {name: EgressProxy(name) for name in names}
        for proxy in self.proxies.values():
            self._run(proxy.start())
        self.addresses: dict[str, str] = {}

    def _run(self, coro) -> object:  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def env(self, name: str) -> dict[str, str]:
        """Environment that sends daemon `name`'s gRPC peer connections through its proxy."""
        return {"grpc_proxy": f"http://127.0.0.1:{self.proxies[name].port}"}

    def serve_at(self, name: str, address: str) -> None:
        """Daemon `name` serves crdtd.v1.Peer at `address` (how links are named)."""
        self.addresses[name] = address

    def _set(self, a: str, b: str, open_: bool) -> None:
        def apply() -> None:
            for src, dst in ((a, b), (b, a)):
                gate = self.proxies[src].link(self.addresses[dst])
                gate.set() if open_ else gate.clear()

        self.loop.call_soon_threadsafe(apply)

    def split(self, *groups: Iterable[str]) -> None:
        """Cut every link between different groups (links inside a group stay up)."""
        sets = [set(g) for g in groups]
        for i, left in enumerate(sets):
            for right in sets[i + 1 :]:
                for a in sorted(left):
                    for b in sorted(right):
                        self._set(a, b, False)

    def heal(self) -> None:
        """Open every link again."""
        names = sorted(self.addresses)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                self._set(a, b, True)

    def tunnels(self) -> int:
        """Tunnels opened so far through all proxies."""
        return sum(p.tunnels for p in self.proxies.values())

    def close(self) -> None:
        for proxy in self.proxies.values():
            self._run(proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
