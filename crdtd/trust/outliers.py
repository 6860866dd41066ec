"""Model-dimension evidence: which contributions of one round look like outliers.

For each contribution x_i of a cohort (a task vector: its tensors minus the round's base,
flattened in sorted tensor-name order, float64), scaled by s_i = √n_i (n_i its declared
`num_examples`, 1 when absent: a site with more rows takes more local steps and moves
further, and √n is the conservative growth of a sum of noisy steps):

- norm ratio `(‖x_i‖/s_i) / median_j(‖x_j‖/s_j)`: flag `norm` above `max_norm_ratio` (5)
  when the update also moves the model by more than `min_norm_share` (10 %) of the base's
  norm and it does not point the way the others go (cosine with the coordinate-wise median
  of the *other* updates below `aligned_cosine`, 0.3; noise scores about 0.1), or already
  above `max_against_norm_ratio` (4) when it points against them (that cosine below 0: a
  sign flip of a site whose own data points away from the consensus sits inside the
  round's direction spread at 4–5 times the others' norm) — large-norm noise, boosted and
  flipped updates stand out, while
  a site still learning when the others have converged (a tiny median), or one whose data
  the merge keeps leaving out, does not;
- direction: the projection `p_i = ⟨x_i, m̂⟩/s_i` on the unit coordinate-wise median m̂ of
  the cohort, as a robust z-score `(median(p) − p_i) / spread`, spread = max(1.4826·MAD(p),
  `min_spread` (0.2) × the median scaled norm): flag `direction` above `max_direction_z`
  (3) — updates pulling against the cohort (sign flips) stand out by how far below the
  round's own spread they fall, not by a fixed cosine, and a late round's near-orthogonal
  updates (a tiny MAD) do not make small disagreements extreme; only an update that moves
  the model by more than `min_direction_share` (3 %) of the base's norm is flagged, so a
  small site that keeps disagreeing once the others have converged is not;
- ascent (across rounds, when the observer holds the author's previous update and the global
  it was trained from): the cosine between the change of the author's update since its
  previous round, d_i = x_i − x_i', and the global's last step, Δ = base − previous base.
  A site that descends its own loss answers the global moving by Δ with an update that
  changes by about −η·k·H_i·Δ (H_i its loss's curvature, positive semi-definite near a
  minimum), so the cosine is negative; a sign flip (gradient ascent, any factor) answers
  with +c·H_i·Δ, a positive cosine, however small its site or one-class its data. Flag
  `ascent` above `max_ascent_cosine` (0.15) when the update also points against the others
  (cosine with the others' coordinate-wise median below `ascent_aligned`, 0): an honest
  site's change is noisy late in training (its cosine reaches 0.3–0.45 on this project's
  benchmark), but then it points with the others. A tiny flipped site of a binary task
  looks like an honest site of the other class in any one round (norm ratio 1–2, direction
  z within ±1), and only this statistic, in the benchmark's breast-cancer α = 0.1 runs,
  tells it apart;
- against (soft): the cosine with the others' coordinate-wise median below `against_cosine`
  (−0.2) for an update that moves the model by more than `min_norm_share` of the base's norm.
  Honest sites of a skewed federation point away from the others too (a one-class site late
  in training reaches −0.8, though with a tiny step), so this flag never counts alone: it
  counts only when the author's next contribution is an outlier, and then a run of them
  counts whole. A sign flipper of a site whose own data points away from the others (norm
  ratio 1.4–3.2, direction z below 3 in round 1) shows it from round 1 (cosine −0.26 to
  −0.50 on this project's benchmark) and is flagged outright one or two rounds later, so it
  is gated at round 3 instead of 4;
- collusion similarity: the largest cosine between x_i − m and x_j − m over contributions
  of other authors that both moved (scaled norm at least a tenth of the median; m the
  median of all): flag `collusion` at ≥ 0.99 — colluders sending one crafted update ("a
  little is enough", FoolsGold's observation) are ~1, two converged sites sending nothing
  are not colluders.

Both cut-offs move with the round: the norm one with the round's median, the direction one
with its median and MAD, so a round of strongly non-IID (widely spread) honest updates
raises the bar instead of ejecting its sites. One round's flags are never enough to gate an
author: crdtd.trust.scores counts an author out only when observers holding half the trust
mass flag several of its last contributions (`model_flags` of `model_window`); an `ascent`
flag compares two contributions, so it also counts the author's previous one.

Deterministic on every platform: inputs sorted by content id, element-wise float64 ops,
medians by selection, square roots (correctly rounded) and every reduction through
`math.fsum` (correctly rounded, independent of SIMD or BLAS).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crdtd.errors import ConfigError, TensorMismatchError
from crdtd.trust.evidence import (
    AGAINST_FLAG,
    ASCENT_FLAG,
    ModelVerdict,
    Observation,
    ProofKind,
    proof_for_model_report,
)

__all__ = [
    "FLAG_BITS",
    "ContributionStats",
    "ModelContribution",
    "Observation",
    "OutlierParams",
    "model_outliers",
    "report_observation",
]

FLAG_BITS = {
    "norm": 1,
    "direction": 2,
    "collusion": 4,
    "ascent": ASCENT_FLAG,
    "against": AGAINST_FLAG,
}
"""Bits of a verdict's flag mask in a model report (`against` is soft: see ContributionStats)."""


@dataclass(frozen=True)
class OutlierParams:
    """Flag cut-offs. `sybil_cosine=None` turns the collusion check off."""

    max_norm_ratio: float = 5.0
    max_against_norm_ratio: float = 4.0
    max_direction_z: float = 3.0
    min_spread: float = 0.2
    min_norm_share: float = 0.1
    min_direction_share: float = 0.03
    aligned_cosine: float = 0.3
    max_ascent_cosine: float = 0.15
    ascent_aligned: float = 0.0
    against_cosine: float = -0.2
    sybil_cosine: float | None = 0.99
    min_contributions: int = 3

    def __post_init__(self) -> None:
        if not self.max_norm_ratio > 1.0:
            raise ConfigError(f"outlier max_norm_ratio {self.max_norm_ratio} must be above 1")
        if not 1.0 < self.max_against_norm_ratio <= self.max_norm_ratio:
            raise ConfigError(
                f"outlier max_against_norm_ratio {self.max_against_norm_ratio} is outside "
                f"(1, max_norm_ratio {self.max_norm_ratio}]"
            )
        if not self.max_direction_z > 0.0:
            raise ConfigError(f"outlier max_direction_z {self.max_direction_z} must be positive")
        if not 0.0 <= self.min_spread < 1.0:
            raise ConfigError(f"outlier min_spread {self.min_spread} is outside [0, 1)")
        if not -1.0 <= self.aligned_cosine <= 1.0:
            raise ConfigError(f"outlier aligned_cosine {self.aligned_cosine} is outside [-1, 1]")
        if not 0.0 <= self.min_norm_share < 1.0:
            raise ConfigError(f"outlier min_norm_share {self.min_norm_share} is outside [0, 1)")
        if not 0.0 <= self.min_direction_share < 1.0:
            raise ConfigError(
                f"outlier min_direction_share {self.min_direction_share} is outside [0, 1)"
            )
        if not -1.0 <= self.max_ascent_cosine < 1.0:
            raise ConfigError(
                f"outlier max_ascent_cosine {self.max_ascent_cosine} is outside [-1, 1)"
            )
        if not -1.0 <= self.ascent_aligned <= 1.0:
            raise ConfigError(f"outlier ascent_aligned {self.ascent_aligned} is outside [-1, 1]")
        if not -1.0 <= self.against_cosine <= 0.0:
            raise ConfigError(f"outlier against_cosine {self.against_cosine} is outside [-1, 0]")
        if self.sybil_cosine is not None and not 0.0 < self.sybil_cosine <= 1.0:
            raise ConfigError(f"outlier sybil_cosine {self.sybil_cosine} is outside (0, 1]")
        if self.min_contributions < 3:
            raise ConfigError("outlier detection needs min_contributions >= 3")

    @classmethod
    def for_federation(cls, members: int, **kw: Any) -> OutlierParams:
        """Cut-offs that flag nothing until k ≥ 2L + 2 contributions are visible, L = ⌊(N−1)/3⌋.

        With at most L adversarial contributions among them, the medians the statistics use
        are honest ones.
        """
        limit = max(0, (members - 1) // 3)
        return cls(min_contributions=max(3, 2 * limit + 2), **kw)


@dataclass(frozen=True)
class ModelContribution:
    """One contribution of a cohort: content id, author, tensors by name, its declared
    `num_examples` (None: unknown), its seq in the author's chain and, when the observer
    holds it, the author's update of the previous round (`previous`, trained from the
    `previous_base` given to `model_outliers`)."""

    content_id: bytes
    author: bytes
    tensors: Mapping[str, Any]
    num_examples: int | None = None
    seq: int = 0
    previous: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ContributionStats:
    """The statistics of one contribution and the flags they raised (empty = fine).

    `soft` holds flags that are no outlier verdict on their own (`against`): the round screen
    ignores them and crdtd.trust.scores counts them only when the author's next
    contribution is an outlier."""

    content_id: bytes
    author: bytes
    norm_ratio: float
    direction_z: float
    similarity: float
    flags: tuple[str, ...]
    seq: int = 0
    ascent: float | None = None  # None: no previous update to compare with
    soft: tuple[str, ...] = ()

    @property
    def outlier(self) -> bool:
        """True when any flag other than a soft one was raised."""
        return bool(self.flags)

    @property
    def mask(self) -> int:
        """The flags, soft ones included, as a report's bit mask."""
        return sum(FLAG_BITS[f] for f in self.flags + self.soft)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return math.fsum(np.multiply(a, b).tolist())


def _norm(a: np.ndarray) -> float:
    return math.sqrt(_dot(a, a))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = _norm(a), _norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, _dot(a, b) / na / nb))


def _flatten(
    c: ModelContribution,
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    base: Mapping[str, Any] | None,
) -> np.ndarray:
    parts = []
    if sorted(c.tensors) != names:
        missing = sorted(set(names) ^ set(c.tensors))
        raise TensorMismatchError(
            f"contribution {c.content_id.hex()[:16]}: tensors differ from the others ({missing[0]!r})"
        )
    for name in names:
        arr = np.asarray(c.tensors[name], dtype=np.float64)
        if arr.shape != shapes[name]:
            raise TensorMismatchError(
                f"contribution {c.content_id.hex()[:16]}: tensor {name!r} has shape "
                f"{arr.shape}, expected {shapes[name]}"
            )
        if base is not None:
            arr = arr - np.asarray(base[name], dtype=np.float64)
        parts.append(arr.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def _along(x: np.ndarray, i: int) -> float:
    """Cosine of row i with the coordinate-wise median of the other rows (its own update
    does not shape the direction it is compared with)."""
    others = np.delete(x, i, axis=0)
    if not len(others):
        return 0.0
    return _cosine(x[i], np.median(others, axis=0))


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if len(values) else 0.0


def model_outliers(
    contributions: Sequence[ModelContribution],
    base: Mapping[str, Any] | None = None,
    params: OutlierParams | None = None,
    previous_base: Mapping[str, Any] | None = None,
) -> tuple[ContributionStats, ...]:
    """Stats for every contribution, sorted by content id (none flagged below the minimum count).

    `previous_base`: the global the contributions' `previous` updates were trained from
    (the ascent statistic needs it and `base`; without them it is not computed).
    Memoised on everything it reads (ids, declared counts and seqs, the tensors', previous
    updates' and bases' bytes, the params): a node's report and its round screen judge a
    cohort once.
    """
    params = params or OutlierParams()
    ordered = sorted(contributions, key=lambda c: c.content_id)
    if not ordered:
        return ()
    key = _memo_key(ordered, base, params, previous_base)
    with _MEMO_LOCK:
        got = _MEMO.get(key)
        if got is not None:
            _MEMO.move_to_end(key)
            return got
    out = _model_outliers(ordered, base, params, previous_base)
    with _MEMO_LOCK:
        _MEMO[key] = out
        while len(_MEMO) > 64:
            _MEMO.popitem(last=False)
    return out


_MEMO: OrderedDict[bytes, tuple[ContributionStats, ...]] = OrderedDict()
_MEMO_LOCK = threading.Lock()


def _memo_key(
    ordered: Sequence[ModelContribution],
    base: Mapping[str, Any] | None,
    params: OutlierParams,
    previous_base: Mapping[str, Any] | None,
) -> bytes:
    h = hashlib.sha256(repr(params).encode())

    def tensors(t: Mapping[str, Any]) -> None:
        for name in sorted(t):
            arr = np.ascontiguousarray(t[name])
            h.update(name.encode() + repr((arr.dtype.str, arr.shape)).encode() + arr.tobytes())

    for c in ordered:
        h.update(c.content_id + c.author + repr((c.num_examples, c.seq)).encode())
        tensors(c.tensors)
        if c.previous is not None:
            h.update(b"previous")
            tensors(c.previous)
    if base is not None:
        h.update(b"base")
        tensors(base)
    if previous_base is not None:
        h.update(b"previous base")
        tensors(previous_base)
    return h.digest()


def _ascent(
    ordered: Sequence[ModelContribution],
    x: np.ndarray,
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    base: Mapping[str, Any] | None,
    previous_base: Mapping[str, Any] | None,
) -> list[float | None]:
    """Per contribution: cosine of (its task vector − its author's previous one) with the
    global's last step (base − previous base); None without a previous update or bases, or
    when the previous base has other tensors (a changed architecture: nothing to compare)."""
    if base is None or previous_base is None:
        return [None] * len(ordered)
    for n in names:
        if n not in previous_base or np.shape(previous_base[n]) != shapes[n]:
            return [None] * len(ordered)
    step = np.concatenate(
        [
            (
                np.asarray(base[n], dtype=np.float64)
                - np.asarray(previous_base[n], dtype=np.float64)
            ).reshape(-1)
            for n in names
        ]
    )
    out: list[float | None] = []
    for i, c in enumerate(ordered):
        if c.previous is None:
            out.append(None)
            continue
        try:
            before = _flatten(
                ModelContribution(c.content_id, c.author, c.previous), names, shapes, previous_base
            )
        except TensorMismatchError:
            out.append(None)  # (its previous update had another shape: nothing to compare)
            continue
        out.append(_cosine(x[i] - before, step))
    return out


def _model_outliers(
    ordered: Sequence[ModelContribution],
    base: Mapping[str, Any] | None,
    params: OutlierParams,
    previous_base: Mapping[str, Any] | None,
) -> tuple[ContributionStats, ...]:
    names = sorted(ordered[0].tensors)
    shapes = {n: tuple(np.asarray(ordered[0].tensors[n]).shape) for n in names}
    if base is not None:
        for n in names:
            if n not in base:
                raise TensorMismatchError(f"base model has no tensor {n!r}")
    x = np.stack([_flatten(c, names, shapes, base) for c in ordered])
    k = len(ordered)
    base_norm = 0.0
    if base is not None:
        flat = [np.asarray(base[n], dtype=np.float64).reshape(-1) for n in names]
        base_norm = _norm(np.concatenate(flat) if flat else np.zeros(0))
    raw = [_norm(x[i]) for i in range(k)]
    enough = k >= params.min_contributions
    scale = [math.sqrt(max(1, c.num_examples or 1)) for c in ordered]
    norms = [raw[i] / scale[i] for i in range(k)]
    mid_norm = _median(norms)
    centre = np.median(x, axis=0)
    n_centre = _norm(centre)
    proj = [(_dot(x[i], centre) / n_centre if n_centre > 0 else 0.0) / scale[i] for i in range(k)]
    mid_proj = _median(proj)
    mad = 1.4826 * _median([abs(p - mid_proj) for p in proj])
    spread = max(
        mad,
        0.1 * _median([abs(p) for p in proj]),
        params.min_spread * mid_norm,
        1e-300,
    )
    dev = x - centre
    dev_norm = [_norm(dev[i]) for i in range(k)]
    sims = [0.0] * k
    moving = [mid_norm > 0.0 and norms[i] >= 0.1 * mid_norm for i in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            if ordered[i].author == ordered[j].author or dev_norm[i] == 0.0 or dev_norm[j] == 0.0:
                continue
            if not (moving[i] and moving[j]):
                continue  # sites whose training moved nothing are alike, not colluding
            cos = max(-1.0, min(1.0, _dot(dev[i], dev[j]) / dev_norm[i] / dev_norm[j]))
            sims[i] = max(sims[i], cos)
            sims[j] = max(sims[j], cos)
    ascent = _ascent(ordered, x, names, shapes, base, previous_base)
    alongs: dict[int, float] = {}

    def along(i: int) -> float:  # (a median over the others: worked out once, when asked)
        if i not in alongs:
            alongs[i] = _along(x, i)
        return alongs[i]

    out = []
    for i, c in enumerate(ordered):
        ratio = norms[i] / mid_norm if mid_norm > 0.0 else math.inf if norms[i] > 0 else 1.0
        z = (mid_proj - proj[i]) / spread
        sim = sims[i]
        flags: list[str] = []
        soft: list[str] = []
        if enough:
            if ratio > params.max_against_norm_ratio and raw[i] > params.min_norm_share * base_norm:
                cos = along(i)  # (a big step the way the others go: a site still learning)
                if cos < 0.0 or (ratio > params.max_norm_ratio and cos < params.aligned_cosine):
                    flags.append("norm")
            if z > params.max_direction_z and raw[i] > params.min_direction_share * base_norm:
                flags.append("direction")  # (a step too small to move the model is no threat)
            if params.sybil_cosine is not None and sim >= params.sybil_cosine:
                flags.append("collusion")
            up = ascent[i]
            if (
                up is not None
                and up > params.max_ascent_cosine
                and along(i) < params.ascent_aligned
            ):
                flags.append("ascent")  # (noisy late changes still point with the others)
            if (
                not flags
                and raw[i] > params.min_norm_share * base_norm
                and along(i) < params.against_cosine
            ):
                soft.append("against")  # (counted only when the author's next update is flagged)
        out.append(
            ContributionStats(
                c.content_id, c.author, ratio, z, sim, tuple(flags), c.seq, ascent[i], tuple(soft)
            )
        )
    return tuple(out)


def report_observation(
    stats: Sequence[ContributionStats], namespace: str, round_: int, observer: bytes
) -> Observation:
    """The observer's model report on one cohort: a verdict for every contribution judged.

    The reason lists the flagged contributions with their statistics, for operators.
    """
    verdicts = [ModelVerdict(s.author, s.content_id, s.seq, s.mask) for s in stats]
    flagged = [s for s in sorted(stats, key=lambda s: s.content_id) if s.outlier]
    parts = [
        f"{s.content_id.hex()[:16]} norm_ratio={s.norm_ratio:.4g} direction_z={s.direction_z:.4g} "
        f"similarity={s.similarity:.4g}"
        + (f" ascent={s.ascent:.4g}" if s.ascent is not None else "")
        + f" ({', '.join(s.flags)})"
        for s in flagged[:8]
    ]
    reason = f"model report on {namespace[:200]} round {round_}: {len(stats)} judged, "
    reason += f"{len(flagged)} outliers" + (": " + "; ".join(parts) if parts else "")
    return Observation(
        observer,
        "model",
        0,
        reason[:2000],
        ProofKind.MODEL_REPORT,
        proof_for_model_report(namespace, round_, verdicts),
    )
