"""`make demo`: three hospitals train one model together over several rounds, no coordinator.

1. `crdtd federation init` and `add-node` x3 under a scratch directory (keys, CA, certs).
2. Three `crdtd start` daemons on loopback; peers talk mutual TLS, clients use a token.
   The namespace is a rounds namespace (`rounds = true`, docs/fl.md).
3. Each hospital holds a label-skewed share of scikit-learn's breast-cancer data (bundled,
   no download) and runs `crdtd.fl.loop.run` against its own daemon: every round it takes
   the round's global from its node, trains locally, pushes its update, and waits for the
   other two. The demo prints the global's accuracy on a held-out test set after each round.
4. Wait until the three state roots agree, build the last round on every node and print the
   three sha256s, the final accuracy next to each hospital's model trained alone, and the
   round gauges. Then SIGTERM every daemon (exit 0).

Run: `python -m crdtd.node.demo [--dir DIR] [--keep] [--rounds N]`.
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
ROUNDS = 6
ALPHA = 0.5  # label skew of the sites' shares (Dirichlet α)
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


# -- data and training --------------------------------------------------------------------


def site_functions(task: object, site: int) -> tuple[object, object]:
    """The hospital's `fit` (two local epochs on its rows) and `evaluate` (held-out test)."""
    from crdtd.fl.tasks import TrainConfig, evaluate, fit

    x, y = task.site_data(site)  # type: ignore[attr-defined]

    def fit_fn(params: dict, config: dict) -> tuple:
        seed = SEED * 1000 + 10 * int(config["server_round"]) + site
        return fit(params, x, y, TrainConfig(epochs=2), seed), len(y), {}

    def eval_fn(params: dict, config: dict) -> tuple:
        loss, acc = evaluate(params, task.x_test, task.y_test)  # type: ignore[attr-defined]
        return loss, len(task.y_test), {"accuracy": acc}  # type: ignore[attr-defined]

    return fit_fn, eval_fn


# -- the federation ---------------------------------------------------------------------------


def daemon_sections() -> str:
    from crdtd.node.config import render_daemon_sections

    return render_daemon_sections(
        {NAMESPACE: {"rounds": True, "example_weighted": True, "trust_weighted": True}},
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
    """Run the demo; returns 0 when the three nodes build identical bytes for the last round."""
    parser = argparse.ArgumentParser(prog="python -m crdtd.node.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="training rounds")
    args = parser.parse_args(argv)
    started = time.monotonic()
    import threading

    from crdtd.client import Client
    from crdtd.fl.loop import FLResult, RoundReport, run
    from crdtd.fl.tasks import TrainConfig, evaluate, fit, init_params, make_task

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
        task = make_task("breast_cancer", sites=len(SITES), alpha=ALPHA, seed=SEED)
        sizes = task.site_sizes()
        say(
            f"   dataset: breast cancer (scikit-learn), sites hold {sizes} rows "
            f"(label skew α = {ALPHA}), test {len(task.y_test)}"
        )
        wait_ready(clients, procs, scratch)
        say(f"   daemons up after {time.monotonic() - started:.1f}s")
        initial = init_params(task, SEED)
        results: list[FLResult | None] = [None] * len(SITES)
        errors: list[BaseException] = []
        lock = threading.Lock()

        def show(report: RoundReport) -> None:
            with lock:
                say(
                    f"   round {report.round}: accuracy {report.evaluation['accuracy']:.3f}, "
                    f"{report.participants} hospitals, global {report.global_id[:16]}"
                )

        def site(i: int) -> None:
            fit_fn, eval_fn = site_functions(task, i)
            try:
                results[i] = run(
                    clients[i],
                    NAMESPACE,
                    initial,
                    fit_fn,  # type: ignore[arg-type]
                    eval_fn,  # type: ignore[arg-type]
                    rounds=args.rounds,
                    quorum=len(SITES),
                    timeout=60,
                    progress=False,
                    on_round=show if i == 0 else None,
                )
            except BaseException as exc:
                errors.append(exc)

        say(f"\n== {args.rounds} rounds: each hospital trains on its own rows, pushes, waits")
        t0 = time.monotonic()
        threads = [threading.Thread(target=site, args=(i,)) for i in range(len(SITES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        say(f"   {args.rounds} rounds in {time.monotonic() - t0:.1f}s")

        t0 = time.monotonic()
        while True:
            roots = {c.status().state_root for c in clients}
            if len(roots) == 1:
                break
            if time.monotonic() - t0 > 60:
                raise SystemExit("state roots did not converge within 60 s")
            time.sleep(0.1)
        say(f"\n== converged: state root {roots.pop().hex()[:16]} on all three")

        say(f"\n== round {args.rounds} of {NAMESPACE} built on every node")
        built = [
            c.materialise(
                NAMESPACE, out=scratch / f"global-on-{SITES[i]}.safetensors", round=args.rounds
            )
            for i, c in enumerate(clients)
        ]
        for i, m in enumerate(built):
            say(f"   {SITES[i]}: sha256 {m.output_sha256}")
        same = len({m.output_sha256 for m in built}) == 1
        say(
            f"   identical: {same} (FedAvg of {built[0].summary.get('participants')} updates, "
            f"weighted by rows; round {built[0].summary.get('round')})"
        )

        say("\n== accuracy on the held-out test set")
        epochs = 2 * args.rounds
        for i, name in enumerate(SITES):
            x, y = task.site_data(i)
            alone = fit(initial, x, y, TrainConfig(epochs=epochs), SEED + i)
            acc = evaluate(alone, task.x_test, task.y_test)[1]
            say(f"   {name:<12} {acc:.3f}  (alone: {sizes[i]} rows, {epochs} epochs)")
        final = results[0]
        assert final is not None
        merged = evaluate(final.params, task.x_test, task.y_test)[1]
        say(f"   {'merged':<12} {merged:.3f}  (round {args.rounds} global, no coordinator)")

        say("\n== metrics (Prometheus text at /metrics)")
        for i, c in enumerate(clients):
            st = c.status()
            fp = metric(st.metrics_address, "crdtd_state_root_fingerprint")
            rnd = metric(st.metrics_address, "crdtd_fl_round")
            say(
                f"   {SITES[i]}: http://{st.metrics_address}/metrics  "
                f"crdtd_state_root_fingerprint {fp}  crdtd_fl_round {rnd}"
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
        say(f"   kept {scratch} (configs, logs, global files)")
    return code if all(e == 0 for e in exits) else 1


if __name__ == "__main__":
    sys.exit(main())
