"""Helpers for the daemon tests: generated federations, real `crdtd start` subprocesses.

`federation(tmp_path, n)` creates a federation with n nodes (real keys, CA, certs, configs
from `crdtd federation add-node`) and appends the daemon sections; `Daemon` runs one node as
a subprocess of `python -m crdtd.cli start` and talks to it with `crdtd.client.Client`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from crdtd.client import Client
from crdtd.crypto import federation as fed
from crdtd.node.config import render_daemon_sections

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "model/test-mlp"
DEFAULT_NAMESPACES: dict[str, dict[str, Any]] = {
    NAMESPACE: {"strategy": "fedavg", "example_weighted": True},
    "model/ties": {"strategy": "ties", "params": {"density": 0.5}},
    "blobs/raw": {"payload_kind": "bytes"},
}
FAST_GOSSIP = {
    "interval_ms": 100,
    "probe_interval_ms": 300,
    "probe_timeout_ms": 1000,
    "push_pull_interval_ms": 1000,
}


def crdtd_command() -> list[str]:
    """How to run the node verbs: the `crdtd` CLI of this interpreter."""
    return [sys.executable, "-m", "crdtd.cli"]


def _gossip(text: str, values: dict[str, int]) -> str:
    for key, value in values.items():
        lines = text.splitlines()
        text = "\n".join(
            f"{key} = {value}" if line.startswith(f"{key} =") else line for line in lines
        )
    return text + "\n"


def federation(
    root: Path,
    n: int,
    namespaces: dict[str, dict[str, Any]] | None = None,
    fast_gossip: bool = True,
    gossip: dict[str, int] | None = None,
    **sections: dict[str, Any] | None,
) -> list[Path]:
    """A federation of `n` nodes under root/fed; returns their config paths. `gossip`
    overrides `[gossip]` keys (after FAST_GOSSIP when `fast_gossip`)."""
    d = root / "fed"
    fed.init(d, federation_id="test-fed")
    paths = []
    for i in range(n):
        cfg = fed.add_node(d, f"site-{chr(ord('a') + i)}")
        text = cfg.path.read_text()
        if fast_gossip:
            text = _gossip(text, FAST_GOSSIP)
        if gossip:
            text = _gossip(text, gossip)
        sections.setdefault("limits", {"max_payload": "8MiB", "drain_timeout_ms": 3000})
        given = {k: v for k, v in sections.items() if v is not None}
        text += "\n" + render_daemon_sections(
            DEFAULT_NAMESPACES if namespaces is None else namespaces, **given
        )
        cfg.path.write_text(text)
        paths.append(cfg.path)
    return paths


def checkpoint(path: Path, value: float, seed: int = 0, shape: tuple[int, int] = (8, 8)) -> Path:
    """A small real safetensors checkpoint (two tensors) whose values depend on `value`."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "layer.weight": torch.full(shape, value) + 0.01 * torch.randn(shape, generator=g),
        "layer.bias": torch.full((shape[0],), -value),
    }
    save_file(tensors, str(path))
    return path


class Daemon:
    """A `crdtd start` subprocess for one node config."""

    def __init__(
        self, config: Path, log_format: str = "json", env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.env = env or {}
        self.log_path = config.with_suffix(".log")
        self.log_format = log_format
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0  # where this run's lines start in the (appended) log file

    def start(self, wait: bool = True, timeout: float = 60.0) -> Daemon:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *crdtd_command(),
                "start",
                "--config",
                str(self.config),
                "--log-format",
                self.log_format,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def client(self, timeout: float | None = 60.0) -> Client:
        return Client.from_config(self.config, timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if "daemon.started" in self.log_of_this_run():
                with self.client(timeout=10) as c:
                    c.wait_ready(10)
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_of_this_run(self) -> str:
        """The log lines written since the last `start` (a restart appends to the file)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            return f.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@contextmanager
def running(configs: list[Path], timeout: float = 60.0) -> Iterator[list[Daemon]]:
    """Start a daemon per config (in order), stop them all at the end; `timeout` bounds
    each node's wait for readiness (they start in parallel)."""
    daemons = [Daemon(c) for c in configs]
    try:
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready(timeout)
        yield daemons
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def roots(daemons: list[Daemon]) -> list[bytes]:
    out = []
    for d in daemons:
        with d.client(timeout=10) as c:
            out.append(c.status().state_root)
    return out


def converged(daemons: list[Daemon]) -> bool:
    rs = roots(daemons)
    return len(set(rs)) == 1


class InProcessNode:
    """A Daemon running on its own event loop thread inside the test process (fast: no
    subprocess start-up), with the real gRPC servers, sync and metrics endpoint."""

    def __init__(self, config: Path) -> None:
        import asyncio
        import threading

        from crdtd.node.config import load_daemon_config
        from crdtd.node.daemon import Daemon as _Daemon

        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = _Daemon(load_daemon_config(config))
        asyncio.run_coroutine_threadsafe(self.daemon.start(), self.loop).result(60)

    @property
    def core(self) -> Any:
        return self.daemon.core

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.daemon.client_port}"

    def client(self, timeout: float | None = 60.0) -> Client:
        return Client.from_config(self.config, timeout=timeout)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.daemon.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
