"""mergekit parity: mergekit's own YAML forms give what mergekit's formulas give.

Each reference below is written from mergekit 0.1.5's definitions (merge_methods/*.py and
sparsify.py) in plain torch, independently of `crdtd.strategies.mergekit`: the compute dtype
is the config's `dtype`, else the inputs' (bf16 checkpoints are merged in bf16); a base
listed among `models` is the base; gradients put layer i of L at i/(L−1) and every other
tensor at 0. Every merged tensor must be within 1e-5 of the reference.

DARE: mergekit draws its masks from torch's global generator in its own task order, seeded
once per run, so no run of mergekit can be replayed tensor by tensor outside it. crdtd draws
the same masks the same way (one `torch.bernoulli` over a full tensor of `density` in the
compute dtype, model after model) from a generator seeded by content; the reference replays
that generator (seeded as the plan seeds it) with mergekit's formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crdtd.model import ModelMerge
from crdtd.model.cli import main
from crdtd.model.yaml_config import load_config
from crdtd.strategies.base import generator_for
from tests.model_generators import save_checkpoint

SHAPES = (
    ("model.embed_tokens.weight", (16, 24)),
    ("model.layers.0.mlp.weight", (24, 24)),
    ("model.layers.0.norm.weight", (24,)),
    ("model.layers.1.mlp.weight", (24, 24)),
    ("model.layers.2.mlp.weight", (24, 24)),
    ("model.norm.weight", (24,)),
    ("lm_head.weight", (16, 24)),
)
LAYERS = 3

Tensors = dict[str, torch.Tensor]


def _checkpoints(root: Path, dtype: torch.dtype) -> dict[str, Tensors]:
    """A base and three fine-tunes; m2's task vector is coarse, so magnitudes tie often."""
    g = torch.Generator().manual_seed(11)
    base = {n: torch.randn(s, generator=g) * 0.02 for n, s in SHAPES}
    out = {"base": {n: t.to(dtype) for n, t in base.items()}}
    for j in range(3):
        ft = {}
        for n, t in base.items():
            tv = torch.randn(t.shape, generator=g) * 0.004
            if j == 2:
                tv = (tv * 800).round() / 800
            ft[n] = (t + tv).to(dtype)
        out[f"m{j}"] = ft
    for name, tensors in out.items():
        save_checkpoint(root / name, tensors)
    return out


def _merge(root: Path, yaml_text: str) -> Tensors:
    cfg = root / "merge.yml"
    cfg.write_text(yaml_text)
    out = root / "out"
    assert main(["merge", "-c", str(cfg), "-o", str(out), "--no-progress"]) == 0
    return load_file(str(out / "model.safetensors"))


def _assert_close(got: Tensors, want: Tensors) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        diff = float((got[name].double() - want[name].double()).abs().max())
        assert diff <= 1e-5, (name, diff)


def _position(name: str) -> float:
    """mergekit's gradient position: layer i of L at i/(L−1), everything else at 0."""
    parts = name.split(".")
    if "layers" in parts:
        return int(parts[parts.index("layers") + 1]) / (LAYERS - 1)
    return 0.0


def _gradient(values: Sequence[float], t: float) -> float:
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


# -- references: mergekit 0.1.5's formulas ----------------------------------------------------


def ref_linear(xs: Sequence[torch.Tensor], w: Sequence[float]) -> torch.Tensor:
    acc = torch.zeros(xs[0].shape, dtype=torch.float32)
    for x, wi in zip(xs, w):
        acc = acc + x.float() * torch.tensor(wi, dtype=torch.float32)
    return (acc / torch.tensor(w, dtype=torch.float32).sum()).to(xs[0].dtype)


def ref_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    a, b = v0.float().reshape(-1), v1.float().reshape(-1)
    na, nb = a.norm(), b.norm()
    na = na if na > 1e-8 else torch.tensor(1.0)
    nb = nb if nb > 1e-8 else torch.tensor(1.0)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > 0.9995:
        out = (1 - t) * a + t * b
    else:
        theta = torch.acos(dot)
        out = torch.sin((1 - t) * theta) / torch.sin(theta) * a
        out = out + torch.sin(t * theta) / torch.sin(theta) * b
    return out.reshape(v0.shape).to(v0.dtype)


def ref_model_stock(w0: torch.Tensor, ws: Sequence[torch.Tensor]) -> torch.Tensor:
    flat0 = w0.reshape(-1)
    offsets = [w.reshape(-1) - flat0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            den = (offsets[i].norm() * offsets[j].norm()).clamp(min=1e-6)
            cos.append(((offsets[i] * offsets[j]).sum() / den).clamp(-1, 1))
    c = torch.stack(cos).mean()
    n = len(ws)
    t = torch.zeros_like(c) if (1 + (n - 1) * c).abs() < 1e-6 else n * c / (1 + (n - 1) * c)
    avg = sum(w.reshape(-1) for w in ws) / n
    return (t * avg + (1 - t) * flat0).reshape(w0.shape)


def top_k(delta: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit `magnitude`: keep the argsort-top max(1, ⌊density·n⌋) of |delta|."""
    if density >= 1:
        return delta
    keep = torch.zeros(delta.numel(), dtype=delta.dtype)
    order = torch.argsort(delta.abs().reshape(-1).float(), descending=True)
    keep[order[: max(1, int(density * delta.numel()))]] = 1
    return delta * keep.reshape(delta.shape)


def outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """mergekit `magnitude_outliers` (breadcrumbs)."""
    n = delta.numel()
    target = int(density * n)
    n_bot = max(0, n - target - int(gamma * n))
    keep = torch.zeros(n, dtype=delta.dtype)
    order = torch.sort(delta.abs().reshape(-1).float()).indices
    keep[order[n_bot : n_bot + target]] = 1
    return delta * keep.reshape(delta.shape)


def ref_gta(
    base: torch.Tensor,
    xs: Sequence[torch.Tensor],
    w: Sequence[float],
    sparsify: Callable[[int, torch.Tensor], torch.Tensor],
    *,
    consensus: bool,
    normalize: bool,
    lam: float = 1.0,
) -> torch.Tensor:
    """mergekit `GeneralizedTaskArithmeticMerge.merge_group`, in base's dtype."""
    deltas = torch.stack([sparsify(i, x - base) for i, x in enumerate(xs)])
    weights = torch.tensor(w, dtype=base.dtype).reshape(-1, *([1] * base.dim()))
    deltas = deltas * weights
    if consensus:
        majority = (deltas.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
        mask = deltas.sign() == majority
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return (base + mixed).to(base.dtype)


# -- the YAML forms ---------------------------------------------------------------------------


def test_linear(tmp_path: Path) -> None:
    """float32 checkpoints: the float32 sum is over inputs in content-id order (crdtd keeps
    the result a function of the set), mergekit's in YAML order; in bf16 that may move the
    last bit, in float32 it stays far below 1e-5."""
    ck = _checkpoints(tmp_path, torch.float32)
    got = _merge(
        tmp_path,
        """
merge_method: linear
models:
  - model: m0
    parameters: {weight: 0.6}
  - model: m1
    parameters: {weight: 0.3}
dtype: float32
""",
    )
    want = {n: ref_linear([ck["m0"][n], ck["m1"][n]], [0.6, 0.3]) for n, _ in SHAPES}
    _assert_close(got, want)


def test_slerp_with_the_base_among_models_interpolates_from_the_base(tmp_path: Path) -> None:
    """t = 0 is the base (the regression: t = 0.3 used to give mergekit's t = 0.7); t follows
    the layer gradient, and tensors outside the layers take the gradient's first value."""
    ck = _checkpoints(tmp_path, torch.float32)
    got = _merge(
        tmp_path,
        """
merge_method: slerp
base_model: m2
models:
  - model: m2
  - model: m0
parameters:
  t:
    - filter: self_attn
      value: 0.9
    - value: [0.3, 0.8]
""",
    )
    want = {}
    for n, _ in SHAPES:
        t = _gradient([0.3, 0.8], _position(n))
        want[n] = ref_slerp(t, ck["m2"][n], ck["m0"][n])
    _assert_close(got, want)
    layer0 = "model.layers.0.mlp.weight"
    wrong_end = ref_slerp(0.7, ck["m2"][layer0], ck["m0"][layer0])  # from m0 at t = 0.3
    assert not torch.allclose(got[layer0], wrong_end, atol=1e-4)
    head_at_1 = ref_slerp(0.8, ck["m2"]["lm_head.weight"], ck["m0"]["lm_head.weight"])
    assert not torch.allclose(got["lm_head.weight"], head_at_1, atol=1e-4)  # LM head at t(0)


def test_task_arithmetic(tmp_path: Path) -> None:
    ck = _checkpoints(tmp_path, torch.bfloat16)
    got = _merge(
        tmp_path,
        """
merge_method: task_arithmetic
base_model: base
models:
  - model: m0
    parameters: {weight: 0.7}
  - model: m1
    parameters: {weight: 0.5}
parameters: {lambda: 0.8}
""",
    )
    want = {
        n: ref_gta(
            ck["base"][n],
            [ck["m0"][n], ck["m1"][n]],
            [0.7, 0.5],
            lambda i, d: d,
            consensus=False,
            normalize=False,
            lam=0.8,
        )
        for n, _ in SHAPES
    }
    _assert_close(got, want)


@pytest.mark.parametrize("dtype_key", [None, "float32"])
def test_ties_on_bf16_inputs_in_mergekit_compute_dtype(
    tmp_path: Path, dtype_key: str | None
) -> None:
    ck = _checkpoints(tmp_path, torch.bfloat16)
    density = [0.5, 0.3, 0.7]
    weight = [0.6, 0.3, 0.8]
    models = "\n".join(
        f"  - model: m{j}\n    parameters: {{weight: {weight[j]}, density: {density[j]}}}"
        for j in range(3)
    )
    text = f"merge_method: ties\nbase_model: base\nmodels:\n{models}\nparameters: {{int8_mask: true}}\n"
    if dtype_key:
        text += f"dtype: {dtype_key}\n"
    got = _merge(tmp_path, text)
    cdt = torch.float32 if dtype_key else torch.bfloat16
    want = {
        n: ref_gta(
            ck["base"][n].to(cdt),
            [ck[f"m{j}"][n].to(cdt) for j in range(3)],
            weight,
            lambda i, d: top_k(d, density[i]),
            consensus=True,
            normalize=True,
        )
        for n, _ in SHAPES
    }
    _assert_close(got, want)


def test_model_stock_does_not_count_the_base_among_models_as_a_fine_tune(tmp_path: Path) -> None:
    ck = _checkpoints(tmp_path, torch.float32)
    got = _merge(
        tmp_path,
        """
merge_method: model_stock
base_model: base
models:
  - model: base
  - model: m0
  - model: m1
""",
    )
    want = {n: ref_model_stock(ck["base"][n], [ck["m0"][n], ck["m1"][n]]) for n, _ in SHAPES}
    _assert_close(got, want)


def test_breadcrumbs(tmp_path: Path) -> None:
    ck = _checkpoints(tmp_path, torch.float32)
    got = _merge(
        tmp_path,
        """
merge_method: breadcrumbs
base_model: base
models:
  - model: m0
    parameters: {weight: 0.5, density: 0.6, gamma: 0.05}
  - model: m2
    parameters: {weight: 0.5, density: 0.4, gamma: 0.02}
""",
    )
    dg = {0: (0.6, 0.05), 1: (0.4, 0.02)}
    want = {
        n: ref_gta(
            ck["base"][n],
            [ck["m0"][n], ck["m2"][n]],
            [0.5, 0.5],
            lambda i, d: outliers(d, *dg[i]),
            consensus=False,
            normalize=False,
        )
        for n, _ in SHAPES
    }
    _assert_close(got, want)


def test_dare_linear_with_the_generator_the_plan_seeds(tmp_path: Path) -> None:
    ck = _checkpoints(tmp_path, torch.bfloat16)
    text = """
merge_method: dare_linear
base_model: base
models:
  - model: m0
    parameters: {weight: 0.6, density: 0.5}
  - model: m1
    parameters: {weight: 0.4, density: 0.3}
"""
    got = _merge(tmp_path, text)
    cfg = load_config(tmp_path / "merge.yml")
    plan = ModelMerge(cfg.schema).plan(cfg.inputs, cfg.base)
    try:
        order = [Path(str(i.source.root)).name for i in plan.inputs]  # content-id order
        jobs = {j.info.name: j for j in plan.jobs}
        params = {"m0": (0.6, 0.5), "m1": (0.4, 0.3)}
        want = {}
        for n, _ in SHAPES:
            g = generator_for(plan.digest, n, jobs[n].params_bytes)

            def dare(i: int, d: torch.Tensor, g: torch.Generator = g) -> torch.Tensor:
                density = params[order[i]][1]
                mask = torch.bernoulli(torch.full_like(d, density, dtype=d.dtype), generator=g)
                masked = d * mask
                before, after = d.abs().sum(), masked.abs().sum()
                return masked if before < 1e-7 or after < 1e-7 else masked * (before / after)

            want[n] = ref_gta(
                ck["base"][n],
                [ck[m][n] for m in order],
                [params[m][0] for m in order],
                dare,
                consensus=False,
                normalize=False,
            )
    finally:
        plan.close()
    _assert_close(got, want)


def test_semantics_crdtd_keeps_crdtds_own_strategies(tmp_path: Path) -> None:
    """The same config with `semantics: crdtd` merges with crdtd's ties, as the flags do."""
    _checkpoints(tmp_path, torch.bfloat16)
    body = """merge_method: ties
base_model: base
models:
  - model: m0
    parameters: {weight: 0.6, density: 0.5}
  - model: m2
    parameters: {weight: 0.3, density: 0.3}
"""
    mk = _merge(tmp_path, body)
    (tmp_path / "out").rename(tmp_path / "out-mk")
    cd = _merge(tmp_path, body + "semantics: crdtd\n")
    (tmp_path / "out").rename(tmp_path / "out-cd")
    flags = ["merge", "-s", "ties", "--base", str(tmp_path / "base"), "-p", "weight=0.6,0.3"]
    flags += ["-p", "density=0.5,0.3", "-o", str(tmp_path / "out-flags"), "--no-progress"]
    assert main([*flags, str(tmp_path / "m0"), str(tmp_path / "m2")]) == 0
    by_flags = load_file(str(tmp_path / "out-flags" / "model.safetensors"))
    assert all(torch.equal(cd[n], by_flags[n]) for n in cd)
    assert any(not torch.equal(cd[n], mk[n]) for n in cd)
