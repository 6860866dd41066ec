"""Federated learning on non-IID data through crdtd's own state, trust and materialisation.

For each dataset (scikit-learn's `load_digits`, `load_breast_cancer`), Dirichlet label skew
α ∈ {0.5, 0.1} and seeds 0–2, 10 sites train an MLP for R rounds on in-process crdtd nodes
(simulations/federated.py: real NodeCores, stores, signatures, evidence and trust; a held-out
25 % test split). Rows: centralised (one model on all rows; the figure to approach), local-only
(mean of the sites' own models), then one federated run per rule: FedAvg (no trust gating),
the namespace default, FedAdam and Multi-Krum (no gating). Columns: clean, and 3 of 10 sites
attacking by sign flip (−5×), Gaussian noise, label flipping. Each cell: accuracy mean ± sd
over seeds, honest authors ever gated by any honest node (sum over seeds), attackers gated
everywhere (worst seed), rounds until every attacker was gated (worst seed) and whether the
honest nodes' state roots agree at the end (every seed). Centralised is the same-run baseline:
the last line prints the default's clean gap to it.

    python benchmarks/bench_fl.py                     # the full table (slow on 2 cores)
    python benchmarks/bench_fl.py --quick             # digits, α = 0.5, seed 0, 10 rounds
    python benchmarks/bench_fl.py --datasets digits --alphas 0.5 --seeds 0 --rules default
    python benchmarks/bench_fl.py --daemon            # one clean setting on 10 real daemons
    python benchmarks/bench_fl.py --daemon --flower   # the same through the Flower bridge

`--daemon` trains the first dataset/α/seed given (clean, the namespace default) on 10 real
`crdtd start` daemons through `crdtd.fl` (each site a thread of this process talking to its
own daemon) and checks that every node's final sha256 equals the in-process run's; with
`--flower` each site is an unmodified flwr NumPyClient run through `crdtd.fl.flower`, and the
figure is its accuracy next to the in-process one (the tensors are named by their Flower
index there, so the bytes differ by name only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crdtd.fl.tasks import DATASETS, TrainConfig, make_task
from simulations.federated import (
    ATTACKS,
    RULES,
    RunResult,
    SimConfig,
    centralised,
    local_only,
    run,
)

ROW_NAMES = {
    "centralised": "centralised",
    "local": "local-only",
    "fedavg": "FedAvg",
    "default": "namespace default",
    "fedadam": "FedAdam",
    "multi_krum": "Multi-Krum",
}


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {sd:.1f}"


def cell(results: Sequence[RunResult]) -> str:
    """`acc ± sd · hg · ag/total · rtg · roots` for one rule and attack over seeds."""
    acc = _mean_sd([r.accuracy for r in results])
    hg = sum(len(r.honest_gated) for r in results)
    ag = min(r.attackers_gated for r in results)
    total = len(results[0].attackers)
    rtg_values = [r.rounds_to_gate for r in results]
    if not total:
        rtg = "-"
    elif any(v is None for v in rtg_values):
        rtg = "never"
    else:
        rtg = str(max(v for v in rtg_values if v is not None))
    roots = "yes" if all(r.roots_agree for r in results) else "NO"
    return f"{acc} · hg {hg} · ag {ag}/{total} · rtg {rtg} · roots {roots}"


def gating_lines(setting: str, runs: dict[tuple[str, str], list[RunResult]]) -> list[str]:
    """Per rule: sign-flip and noise attackers gated within 3 rounds, and honest sites gated
    in any run (every attack, every seed)."""
    out = []
    for rule in sorted({rule for rule, _ in runs}):
        at = [
            v
            for (r, attack), results in runs.items()
            if r == rule and attack in ("sign_flip", "noise")
            for res in results
            for v in res.gated_at.values()
        ]
        honest = sum(
            len(res.honest_gated) for (r, _), rs in runs.items() if r == rule for res in rs
        )
        line = f"{setting} {rule}: honest_gated {honest}"
        if at:
            fast = sum(1 for v in at if v is not None and v <= 3)
            never = sum(1 for v in at if v is None)
            line += f", sign-flip/noise attackers gated within 3 rounds {fast}/{len(at)}"
            line += f" (never: {never})"
        out.append(line)
    return out


def table(
    title: str,
    base: dict[str, list[float]],
    runs: dict[tuple[str, str], list[RunResult]],
    rules: Iterable[str],
    attacks: Sequence[str],
) -> str:
    head = "| rule | " + " | ".join(attacks) + " |"
    out = [f"### {title}", "", head, "|" + "---|" * (len(attacks) + 1)]
    for key in ("centralised", "local"):
        if base.get(key):
            first = _mean_sd(base[key])
            out.append(f"| {ROW_NAMES[key]} | {first} |" + " - |" * (len(attacks) - 1))
    for rule in rules:
        cells = [cell(runs[(rule, a)]) if runs.get((rule, a)) else "-" for a in attacks]
        out.append(f"| {ROW_NAMES[rule]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--alphas", default="0.5,0.1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    p.add_argument("--quick", action="store_true", help="digits, α = 0.5, seed 0, 10 rounds")
    p.add_argument("--verbose", action="store_true", help="one line per round")
    p.add_argument("--daemon", action="store_true", help="one setting on 10 real daemons")
    p.add_argument("--flower", action="store_true", help="with --daemon: Flower clients")
    a = p.parse_args(argv)
    if a.daemon:
        return daemon_main(a)
    if a.quick:
        a.datasets, a.alphas, a.seeds, a.rounds = "digits", "0.5", "0", 10
    datasets = [x for x in a.datasets.split(",") if x]
    alphas = [float(x) for x in a.alphas.split(",") if x]
    seeds = [int(x) for x in a.seeds.split(",") if x]
    rules = [x for x in a.rules.split(",") if x]
    attacks = [x for x in a.attacks.split(",") if x]
    train = TrainConfig(epochs=a.epochs)
    log = sys.stderr if a.verbose else None
    started = time.perf_counter()
    summary = []
    for ds in datasets:
        for alpha in alphas:
            base: dict[str, list[float]] = {"centralised": [], "local": []}
            runs: dict[tuple[str, str], list[RunResult]] = {}
            for seed in seeds:
                task = make_task(ds, 10, alpha, seed)
                base["centralised"].append(centralised(task, train, a.rounds * a.epochs, seed))
                base["local"].append(local_only(task, train, a.rounds * a.epochs, seed))
                for rule in rules:
                    for attack in attacks:
                        cfg = SimConfig(
                            dataset=ds,
                            alpha=alpha,
                            seed=seed,
                            rule=rule,
                            attack=attack,
                            rounds=a.rounds,
                            train=train,
                        )
                        r = run(cfg, task, log)
                        runs.setdefault((rule, attack), []).append(r)
                        print(
                            f"{ds} α={alpha} seed {seed} {rule:10s} {attack:10s} "
                            f"acc {r.accuracy:.4f} honest_gated {r.honest_gated} "
                            f"gated_at {r.gated_at} roots_agree {r.roots_agree} "
                            f"({r.seconds:.1f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
            print(
                table(
                    f"{ds}, α = {alpha}, {a.rounds} rounds × {a.epochs} local epochs, "
                    f"seeds {','.join(map(str, seeds))}",
                    base,
                    runs,
                    rules,
                    attacks,
                )
            )
            print(flush=True)
            clean = runs.get(("default", "clean"))
            if clean:
                gap = 100 * (
                    statistics.fmean(base["centralised"])
                    - statistics.fmean([r.accuracy for r in clean])
                )
                summary.append(f"{ds} α={alpha}: default clean gap to centralised {gap:.2f} pp")
            summary.extend(gating_lines(f"{ds} α={alpha}", runs))
    for line in summary:
        print(line)
    print(f"bench_fl: {time.perf_counter() - started:.0f} s")
    return 0


def daemon_main(a: argparse.Namespace) -> int:
    """--daemon: in-process run, then the same setting on real daemons; compare."""
    from simulations.federated_daemons import run_daemons

    cfg = SimConfig(
        dataset=a.datasets.split(",")[0],
        alpha=float(a.alphas.split(",")[0]),
        seed=int(a.seeds.split(",")[0]),
        rule="default",
        attack="clean",
        rounds=a.rounds,
        train=TrainConfig(epochs=a.epochs),
    )
    task = make_task(cfg.dataset, cfg.sites, cfg.alpha, cfg.seed)
    log = sys.stderr if a.verbose else None
    ref = run(cfg, task, log)
    print(
        f"in-process: {cfg.dataset} α={cfg.alpha} seed {cfg.seed}, {cfg.rounds} rounds: "
        f"accuracy {ref.accuracy:.4f}, final sha256 {ref.final_sha256} ({ref.seconds:.0f} s)"
    )
    d = run_daemons(cfg, task, flower=a.flower, log=log)
    how = "Flower NumPyClients via crdtd.fl.flower" if a.flower else "crdtd.fl"
    print(f"daemons ({how}): {len(d.shas)} nodes, accuracy {d.accuracy:.4f} ({d.seconds:.0f} s)")
    for name, sha in sorted(d.shas.items()):
        print(f"  {name}: {sha}")
    same = d.identical
    gap = 100 * abs(d.accuracy - ref.accuracy)
    print(f"every node identical: {str(same).lower()}")
    if a.flower:
        print(f"flower_vs_in_process_accuracy_pp: {gap:.2f}")
        return 0 if same and gap <= 1.0 else 1
    matches = same and next(iter(d.shas.values())) == ref.final_sha256
    print(f"daemons_equal_in_process: {str(matches).lower()}")
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
