"""Streaming model merge vs the naive load-everything path and memory bandwidth, same run.

Builds a base and three fine-tuned checkpoints of `--gb` GB each (bf16, Llama-like shapes,
sharded safetensors with an index, written with the `safetensors` library), then runs, each
in its own subprocess (imports done before the clock starts, numba's compiled kernels
included for the strategies that run them) so peak RSS is its own, `--repeat` (3) times in
rounds over all of them, keeping each one's best wall (as the bandwidth baseline keeps its
best pass; on a shared machine one run of linear varied 0.9-1.5 s within minutes) and its
largest peak RSS:

  * streaming: `crdtd.model.ModelMerge(...).merge_to_dir` (hashes every input, streams the
    tensors from the safetensors files, writes sharded safetensors);
  * naive: load every state dict fully (`safetensors.torch.load_file`), merge each tensor with
    the same strategy function, save with `save_file` in shards;
  * bandwidth: the three fine-tunes already in memory as float32 numpy arrays (numpy has no
    bfloat16), `np.mean(stack, axis=0)` per tensor; best of three passes.

`linear`, `ties` and `dare_ties` (density 0.5) merge the three fine-tunes against the base;
`slerp` goes from the base to the first fine-tune (t = 0.5). Prints wall time, input GB/s and peak RSS
(`VmHWM`) per run, then:

  * `linear_vs_bandwidth`: numpy's mean time / linear's streaming time over the same three
    fine-tunes (linear's wall includes reading and hashing the three fine-tunes, which is
    all linear reads: the base is checked but not hashed, and writing the result; target
    >= 0.5); the line before it gives the time of linear's plan alone (opening, checking and
    hashing, no merging), measured in its own subprocess, and the merge pass's own ratio
    (the same numpy time over linear's wall less its plan);
  * `ties_vs_linear`, `dare_ties_vs_linear`, `slerp_vs_linear`: streaming wall over
    linear's (targets <= 2.0);
  * `speedup_vs_naive` (naive wall / streaming wall, the smallest over strategies);
  * `slerp_rss_vs_naive` and last `rss_vs_naive` (streaming peak RSS / naive, slerp's and the
    largest over strategies; target <= 0.25).

    python benchmarks/bench_model_merge.py --gb 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = 32000


def layout(gb: float) -> tuple[int, int, int, int]:
    """(hidden, intermediate, kv_dim, layers) of a Llama-like model of about `gb` GB in bf16."""
    hidden = 2048 if gb >= 0.5 else (1024 if gb >= 0.12 else 256)
    inter = hidden * 11 // 4
    kv = hidden // 8 if hidden >= 1024 else hidden
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    embed = 2 * VOCAB * hidden + hidden
    layers = max(1, round((gb * 1e9 / 2 - embed) / per_layer))
    return hidden, inter, kv, layers


def shapes(gb: float) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in Hugging Face Llama naming."""
    hidden, inter, kv, layers = layout(gb)
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (VOCAB, hidden))]
    return out


def build(root: Path, gb: float) -> list[Path]:
    """Write base + 3 fine-tunes (2 shards each, with an index); returns [base, m0, m1, m2]."""
    import torch
    from safetensors.torch import save_file

    spec = shapes(gb)
    total = sum(2 * _numel(s) for _, s in spec)
    half = total // 2
    dirs = [root / n for n in ("base", "m0", "m1", "m2")]
    for d in dirs:
        d.mkdir(parents=True)
    g = torch.Generator().manual_seed(1234)
    shard: list[dict[str, torch.Tensor]] = [{} for _ in dirs]
    weight_map: list[dict[str, str]] = [{} for _ in dirs]
    written, part = 0, 1
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]

    def flush() -> None:
        for j, d in enumerate(dirs):
            save_file(shard[j], str(d / names[part - 1]), metadata={"format": "pt"})
            shard[j] = {}

    for name, shape in spec:
        base = torch.randn(shape, generator=g) * 0.02
        for j in range(len(dirs)):
            t = base if j == 0 else base + torch.randn(shape, generator=g) * 0.002
            shard[j][name] = t.to(torch.bfloat16)
            weight_map[j][name] = names[part - 1]
        del base, t
        written += 2 * _numel(shape)
        if part == 1 and written >= half:
            flush()
            part = 2
    flush()
    for j, d in enumerate(dirs):
        index = {"metadata": {"total_size": total}, "weight_map": weight_map[j]}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return dirs


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _strategy_params(strategy: str) -> dict[str, object]:
    return {"density": 0.5} if strategy in ("ties", "dare_ties", "dare_linear") else {}


def _models(strategy: str, dirs: list[Path]) -> list[Path]:
    """The fine-tunes a strategy merges against the base (slerp: the first one)."""
    return dirs[1:2] if strategy == "slerp" else dirs[1:]


def run_streaming(dirs: list[Path], out: Path, strategy: str) -> float:
    from crdtd.model import ModelMerge, ModelMergeSchema

    schema = ModelMergeSchema.single(strategy, _strategy_params(strategy))
    t0 = time.perf_counter()
    ModelMerge(schema).merge_to_dir([str(d) for d in _models(strategy, dirs)], out, str(dirs[0]))
    return time.perf_counter() - t0


def run_plan(dirs: list[Path]) -> float:
    """Time of `ModelMerge(...).plan` for linear's inputs: open, check and hash all four
    checkpoints (what linear's streaming wall spends before merging)."""
    from crdtd.model import ModelMerge, ModelMergeSchema

    t0 = time.perf_counter()
    ModelMerge(ModelMergeSchema.single("linear")).plan(
        [str(d) for d in _models("linear", dirs)], str(dirs[0])
    ).close()
    return time.perf_counter() - t0


def run_naive(dirs: list[Path], out: Path, strategy: str) -> float:
    import torch
    from safetensors.torch import load_file, save_file

    from crdtd.strategies import registry
    from crdtd.strategies.base import TensorMerge

    def load(d: Path) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            sd.update(load_file(str(f)))
        return sd

    t0 = time.perf_counter()
    base = load(dirs[0])
    models = [load(d) for d in _models(strategy, dirs)]
    strat = registry.get(strategy)
    params, model_params = strat.validate(_strategy_params(strategy), [{}] * len(models))
    merged: dict[str, torch.Tensor] = {}
    for name in base:
        tm = TensorMerge(
            name,
            torch.stack([m[name].float() for m in models]),
            base[name].float(),
            params,
            model_params,
            torch.Generator().manual_seed(0),
        )
        merged[name] = strat.fn(tm).to(torch.bfloat16)
    out.mkdir(parents=True)
    names = list(merged)
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:]), start=1):
        save_file({n: merged[n] for n in part}, str(out / f"model-{i:05d}-of-00002.safetensors"))
    return time.perf_counter() - t0


def run_bandwidth(dirs: list[Path]) -> tuple[float, int]:
    """Best time of `np.mean(stack, axis=0)` over every tensor of the three fine-tunes held
    in memory as float32, and the bytes those arrays hold."""
    import numpy as np
    from safetensors.torch import load_file

    stacks = []
    for f in sorted(p.name for p in dirs[1].glob("*.safetensors")):
        parts = [load_file(str(d / f)) for d in dirs[1:]]
        for name in sorted(parts[0]):
            stacks.append(np.stack([p[name].float().numpy() for p in parts]))
        del parts
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for st in stacks:
            np.mean(st, axis=0)
        best = min(best, time.perf_counter() - t0)
    return best, sum(st.nbytes for st in stacks)


def worker(path: str, dirs: list[Path], out: Path, strategy: str) -> None:
    """Run one path and print its wall time and peak RSS as JSON (imports before the clock)."""
    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    import crdtd.model.merge
    import crdtd.strategies  # noqa: F401
    from crdtd.strategies import _kernels, registry

    fused = {s.name for s in registry.all_strategies() if s.raw_inputs} | {"task_arithmetic"}
    if path in ("streaming", "naive") and strategy in fused:
        _kernels.preload()  # numba's import and JIT cache: once per process, like torch's import

    extra: dict[str, float] = {}
    if path == "bandwidth":
        wall, nbytes = run_bandwidth(dirs)
        extra["bytes"] = nbytes
    elif path == "plan":
        wall = run_plan(dirs)
    else:
        wall = (run_streaming if path == "streaming" else run_naive)(dirs, out, strategy)
    print(json.dumps({"wall": wall, "rss": peak_rss(), **extra}))


def peak_rss() -> int:
    """This process's peak resident set in bytes.

    VmHWM starts afresh at exec; `ru_maxrss` would carry over the parent's peak from before
    the fork, so it is only the fallback where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(path: str, dirs: list[Path], scratch: Path, strategy: str) -> dict[str, float]:
    out = scratch / f"out-{path}-{strategy}"
    cmd = [sys.executable, __file__, "--worker", path, "--strategy", strategy, "--out", str(out)]
    cmd += ["--dirs", *map(str, dirs)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # run from a checkout, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{path} {strategy} failed:\n{res.stderr}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=0.25, help="size of each checkpoint in GB")
    ap.add_argument(
        "--strategies",
        default="linear,ties,dare_ties,slerp",
        help="comma-separated; ratios need linear",
    )
    ap.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    ap.add_argument(
        "--worker", choices=("streaming", "naive", "bandwidth", "plan"), help=argparse.SUPPRESS
    )
    ap.add_argument("--strategy", default="linear", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--dirs", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument(
        "--checkpoints", help="use the checkpoints built earlier in this directory (else build)"
    )
    ap.add_argument(
        "--paths", default="naive,streaming", help="which paths to run (naive,streaming)"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each strategy and path; the best counts"
    )
    args = ap.parse_args()
    if args.build:
        build(Path(args.build), args.gb)
        return
    if args.worker:
        worker(args.worker, [Path(d) for d in args.dirs], Path(args.out), args.strategy)
        return
    scratch = Path(tempfile.mkdtemp(prefix="crdtd-bench-", dir=args.tmp))
    try:
        free = shutil.disk_usage(scratch).free
        if free < 7 * args.gb * 1e9:
            sys.exit(f"need about {7 * args.gb:.1f} GB free in {scratch}, have {free / 1e9:.1f}")
        hidden, inter, kv, layers = layout(args.gb)
        t0 = time.perf_counter()
        root = Path(args.checkpoints) if args.checkpoints else scratch
        dirs = [root / n for n in ("base", "m0", "m1", "m2")]
        if not all(d.is_dir() for d in dirs):
            # build in a child so this process stays small (its children fork from it)
            cmd = [sys.executable, __file__, "--build", str(root), "--gb", str(args.gb)]
            subprocess.run(cmd, check=True)
        in_bytes = sum(f.stat().st_size for d in dirs for f in d.glob("*.safetensors"))
        print(
            f"checkpoints: base + 3, {in_bytes / 4 / 1e9:.2f} GB each (bf16, hidden {hidden}, "
            f"intermediate {inter}, kv {kv}, {layers} layers, vocab {VOCAB}); "
            f"built in {time.perf_counter() - t0:.1f} s"
        )
        strategies, paths = args.strategies.split(","), args.paths.split(",")
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.repeat):  # rounds over every run, so drift reaches all alike
            for strategy in strategies:
                for path in paths:
                    runs.setdefault((strategy, path), []).append(
                        measure(path, dirs, scratch, strategy)
                    )
        results: dict[str, dict[str, dict[str, float]]] = {}
        for strategy in strategies:
            results[strategy] = {}
            for path in paths:
                walls = [r["wall"] for r in runs[(strategy, path)]]
                r = {"wall": min(walls), "rss": max(r["rss"] for r in runs[(strategy, path)])}
                results[strategy][path] = r
                each = ", ".join(f"{w:.2f}" for w in walls)
                print(
                    f"{strategy:7s} {path:9s} wall {r['wall']:7.2f} s  "
                    f"input {in_bytes / r['wall'] / 1e9:5.2f} GB/s  peak RSS {r['rss'] / 1e9:6.2f} GB"
                    + (f"  (best of {each})" if len(walls) > 1 else "")
                )
        bw = measure("bandwidth", dirs, scratch, "linear")
        print(
            f"numpy mean of the three fine-tunes in memory (float32): {bw['wall']:.2f} s, "
            f"{bw['bytes'] / bw['wall'] / 1e9:.2f} GB/s"
        )
        naive = "naive" in args.paths.split(",")
        if naive:
            for strategy, r in results.items():
                print(
                    f"{strategy}: speedup {r['naive']['wall'] / r['streaming']['wall']:.2f}, "
                    f"rss ratio {r['streaming']['rss'] / r['naive']['rss']:.2f}"
                )
            speedup = min(r["naive"]["wall"] / r["streaming"]["wall"] for r in results.values())
            print(f"speedup_vs_naive: {speedup:.2f}")
        if "linear" in results:
            linear = results["linear"]["streaming"]["wall"]
            plan = measure("plan", dirs, scratch, "linear")
            print(
                f"linear's plan alone (open and check all four checkpoints, BLAKE3 of the "
                f"three it reads): {plan['wall']:.2f} s, {plan['wall'] / linear:.0%} of "
                f"linear's streaming wall; its merge pass alone: "
                f"{bw['wall'] / max(linear - plan['wall'], 1e-9):.2f} of the numpy mean"
            )
            print(f"linear_vs_bandwidth: {bw['wall'] / linear:.2f}")
            for other in results:
                if other != "linear":
                    ratio = results[other]["streaming"]["wall"] / linear
                    print(f"{other}_vs_linear: {ratio:.2f}")
        if naive and "slerp" in results:
            r = results["slerp"]
            print(f"slerp_rss_vs_naive: {r['streaming']['rss'] / r['naive']['rss']:.2f}")
        if naive:
            rss = max(r["streaming"]["rss"] / r["naive"]["rss"] for r in results.values())
            print(f"rss_vs_naive: {rss:.2f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
