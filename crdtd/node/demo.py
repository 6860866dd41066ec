"""`make demo`: three hospitals train locally, push, converge, and materialise one model.

1. `crdtd federation init` and `add-node` x3 under a scratch directory (keys, CA, certs).
2. Three `crdtd start` daemons on loopback; peers talk mutual TLS, clients use a token.
3. Each site trains the same small MLP (same initial weights) on its own share of scikit-
   learn's breast-cancer data (bundled, no download) and pushes it with `num_examples`.
4. Wait until the three state roots agree, materialise on every node (FedAvg weighted by
   examples), and print the three sha256s, the merged model's accuracy next to each
   site's, and where the metrics are. Then SIGTERM every daemon (exit 0).

Run: `python -m crdtd.node.demo [--dir DIR] [--keep]`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

NAMESPACE = "model/breast-cancer-mlp"
SITES = ("hospital-a", "hospital-b", "hospital-c")
SHARES = (0.5, 0.3, 0.2)  # of the training rows: unequal sites, as in real federations
HIDDEN = 16
EPOCHS = 60
SEED = 7


def say(text: str = "") -> None:
    print(text, flush=True)


def cli(*argv: str) -> str:
    """Run a `crdtd` verb in this process (the same code the console script runs)."""
    from crdtd.crypto.cli import add_commands

    parser = argparse.ArgumentParser(prog="crdtd")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    if code:
        raise SystemExit(f"crdtd {' '.join(argv)} failed ({code})")
    return out.getvalue()


# -- data and models --------------------------------------------------------------------------


def dataset() -> tuple[list, list, tuple]:
    """Site shares and a held-out test set; features scaled with an agreed-on scaler."""
    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=SEED, stratify=y
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x_train))
    cuts = np.cumsum([int(s * len(order)) for s in SHARES[:-1]])
    shares = []
    for idx in np.split(order, cuts):
        shares.append(
            (
                torch.tensor((x_train[idx] - mean) / std, dtype=torch.float32),
                torch.tensor(y_train[idx], dtype=torch.float32),
            )
        )
    test = (
        torch.tensor((x_test - mean) / std, dtype=torch.float32),
        torch.tensor(y_test, dtype=torch.float32),
    )
    return shares, [len(s[1]) for s in shares], test


def make_model() -> object:
    import torch

    g = torch.Generator().manual_seed(SEED)  # one agreed initial model for every site
    model = torch.nn.Sequential(
        torch.nn.Linear(30, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def train(model: object, x: object, y: object, site: int) -> object:
    import torch

    g = torch.Generator().manual_seed(SEED + site)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # type: ignore[attr-defined]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = len(y)  # type: ignore[arg-type]
    for _ in range(EPOCHS):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, 32):
            idx = perm[start : start + 32]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]).squeeze(1), y[idx])  # type: ignore[index, operator]
            loss.backward()
            opt.step()
    return model


def accuracy(model: object, test: tuple) -> float:
    import torch

    x, y = test
    with torch.no_grad():
        pred = (model(x).squeeze(1) > 0).float()  # type: ignore[operator]
    return float((pred == y).float().mean())


# -- the federation ---------------------------------------------------------------------------


def daemon_sections() -> str:
    from crdtd.node.config import render_daemon_sections

    return render_daemon_sections(
        {NAMESPACE: {"strategy": "fedavg", "example_weighted": True, "trust_weighted": True}},
        log={"format": "json"},
        limits={"max_payload": "64MiB", "drain_timeout_ms": 5000},
    )


def fast_gossip(text: str) -> str:
    """Demo tempo: gossip every 100 ms, full sync every second (defaults: 200 ms, 30 s)."""
    repl = {"interval_ms": 100, "push_pull_interval_ms": 1000}
    return "\n".join(
        f"{line.split('=')[0].strip()} = {repl[line.split('=')[0].strip()]}"
        if "=" in line and line.split("=")[0].strip() in repl
        else line
        for line in text.splitlines()
    )


@contextlib.contextmanager
def daemons(configs: list[Path], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cfg in configs:
            log = (logs / f"{cfg.stem}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "crdtd.cli", "start", "--config", str(cfg)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
            )
            log.close()
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_ready(clients: list, procs: list, logs: Path, timeout: float = 90) -> None:
    from crdtd.errors import CrdtdError

    deadline = time.monotonic() + timeout
    for i, c in enumerate(clients):
        while True:
            if procs[i].poll() is not None:
                raise SystemExit(f"{SITES[i]} exited early; see {logs}/{SITES[i]}.log")
            try:
                c.wait_ready(2)
                break
            except CrdtdError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{SITES[i]} did not start; see {logs}") from None


def metric(address: str, name: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return line.rsplit(" ", 1)[1]
    return "?"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when the three materialised hashes agree."""
    parser = argparse.ArgumentParser(prog="python -m crdtd.node.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    started = time.monotonic()
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    from crdtd.client import Client

    scratch = args.dir or Path(tempfile.mkdtemp(prefix="crdtd-demo-"))
    scratch.mkdir(parents=True, exist_ok=True)
    fed = scratch / "federation"
    say(f"== crdtd demo in {scratch}")
    say(f"$ crdtd federation init --dir {fed}")
    say("  " + cli("federation", "init", "--dir", str(fed), "--id", "hospitals").splitlines()[0])
    configs = []
    for name in SITES:
        say(f"$ crdtd federation add-node {name} --dir {fed}")
        out = cli("federation", "add-node", name, "--dir", str(fed))
        say("  " + out.splitlines()[0])
        cfg = fed / f"{name}.toml"
        cfg.write_text(fast_gossip(cfg.read_text()) + "\n" + daemon_sections())
        configs.append(cfg)

    say("\n== starting three daemons (peers: mutual TLS on loopback)")
    code = 1
    with daemons(configs, scratch) as procs:
        clients = [Client.from_config(c, timeout=120) for c in configs]
        shares, sizes, test = dataset()
        say(
            f"   dataset: breast cancer (scikit-learn), sites hold {sizes} rows, test {len(test[1])}"
        )
        site_acc = []
        for i, (x, y) in enumerate(shares):
            model = train(make_model(), x, y, i)
            site_acc.append(accuracy(model, test))
            path = scratch / f"{SITES[i]}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # type: ignore[attr-defined]
            if i == 0:
                wait_ready(clients, procs, scratch)
                say(f"   daemons up after {time.monotonic() - started:.1f}s")
            r = clients[i].push(NAMESPACE, path, metadata={"num_examples": sizes[i]})
            say(
                f"   {SITES[i]} trained ({sizes[i]} rows, accuracy {site_acc[i]:.3f}) and pushed "
                f"entry {r.entry_id.hex()[:16]}"
            )

        t0 = time.monotonic()
        while True:
            roots = {c.status().state_root for c in clients}
            if len(roots) == 1 and all(
                c.status().entry_counts.get("contribution") == 3 for c in clients
            ):
                break
            if time.monotonic() - t0 > 60:
                raise SystemExit("state roots did not converge within 60 s")
            time.sleep(0.1)
        say(
            f"\n== converged in {time.monotonic() - t0:.2f}s: state root {roots.pop().hex()[:16]} on all three"
        )

        say(f"\n== materialise {NAMESPACE} on every node")
        results = []
        for i, c in enumerate(clients):
            merged_path = scratch / f"merged-on-{SITES[i]}.safetensors"
            results.append(c.materialise(NAMESPACE, out=merged_path))
            say(f"   {SITES[i]}: sha256 {results[-1].output_sha256}")
        same = len({m.output_sha256 for m in results}) == 1
        say(
            f"   identical: {same} (strategy {results[0].strategy}, input set "
            f"{results[0].input_set_digest[:16]}, {len(results[0].inputs)} inputs)"
        )

        merged = make_model()
        merged.load_state_dict(load_file(str(scratch / f"merged-on-{SITES[0]}.safetensors")))  # type: ignore[attr-defined]
        say("\n== accuracy on the held-out test set")
        for i, name in enumerate(SITES):
            say(f"   {name:<12} {site_acc[i]:.3f}  (trained on {sizes[i]} rows)")
        say(
            f"   {'merged':<12} {accuracy(merged, test):.3f}  (FedAvg of all three, weighted by rows)"
        )

        say("\n== metrics (Prometheus text at /metrics)")
        for i, c in enumerate(clients):
            st = c.status()
            fp = metric(st.metrics_address, "crdtd_state_root_fingerprint")
            say(
                f"   {SITES[i]}: http://{st.metrics_address}/metrics  crdtd_state_root_fingerprint {fp}"
            )
        for c in clients:
            c.close()
        code = 0 if same else 1
    exits = [p.returncode for p in procs]
    say(f"\n== daemons stopped with SIGTERM: exit codes {exits}")
    say(f"== done in {time.monotonic() - started:.1f}s")
    if not args.keep and args.dir is None:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        say(f"   kept {scratch} (configs, logs, merged files)")
    return code if all(e == 0 for e in exits) else 1


if __name__ == "__main__":
    sys.exit(main())
