"""The training loop a site runs against its own crdtd node: no coordinator, no hand-written rounds.

`run(node, namespace, initial, fit, evaluate, rounds=R)` first waits (up to `timeout`) until
the node's own membership is in its state (a node added after others receives the admin
entries before its own at its first sync; until then it may not push), then does, for every
round r = 1..R:

1. take G_{r−1} from the node (`Materialise` with `round = r − 1`; round 0 is the initial
   model, which the loop pushes as the round-0 global when the namespace has none yet);
2. `fit(params, config)` → (params, num_examples, metrics), and push the result as this
   site's update: metadata `round = r`, `num_examples`, the fit metrics, this site's
   evaluation of G_{r−1} (`loss`, `accuracy`, ... when `evaluate` is given: Flower's
   federated evaluation), and G_{r−1}'s id as `base_id`;
3. wait until `quorum` authors have an update of round r on the node (or `timeout`
   seconds: then the round goes ahead with the updates that are there);
4. build G_r and evaluate it on the site's own data.

It returns G_R with one `RoundReport` per round. The
namespace must be a rounds namespace (`rounds = true`, docs/fl.md). Every node builds the same
G_r from the same set, so sites pulling from different nodes train from the same bytes.
Progress is a tqdm bar; the node exports the rounds as Prometheus gauges
(`crdtd_fl_round`, `crdtd_fl_participants`, `crdtd_fl_reported_accuracy`, ...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crdtd.client import Client
from crdtd.errors import ConfigError, CrdtdError, MergeError, NotMemberError
from crdtd.kinds.rounds import metadata_int

__all__ = ["FLResult", "RoundReport", "from_bytes", "run", "to_bytes"]

Params = Mapping[str, np.ndarray]
FitFn = Callable[[dict[str, np.ndarray], dict[str, Any]], tuple[Params, int, Mapping[str, Any]]]
EvalFn = Callable[[dict[str, np.ndarray], dict[str, Any]], tuple[float, int, Mapping[str, Any]]]


@dataclass(frozen=True)
class RoundReport:
    """One round as this site saw it."""

    round: int
    global_id: str  # sha256 of G_round's bytes
    participants: int
    stale: int
    screened: int
    excluded: int
    # what the round's updates reported: each site's evaluation of G_{round-1}, averaged
    reported: Mapping[str, float]
    evaluation: Mapping[str, float]  # this site's evaluation of G_round (when evaluate given)
    seconds: float


@dataclass
class FLResult:
    """The final global, its id, and the per-round reports."""

    params: dict[str, np.ndarray]
    global_id: str
    rounds: list[RoundReport] = field(default_factory=list)


def to_bytes(params: Params) -> bytes:
    """Safetensors bytes of the params (names sorted; the dtype each array has)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(params[k]) for k in sorted(params)})


def from_bytes(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return {k: np.asarray(v) for k, v in load(data).items()}


def _declared(info: Any, key: str) -> int | None:
    return metadata_int(info.metadata, key)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _updates(node: Client, namespace: str, round_: int) -> list[Any]:
    """Every author's updates of `round_` the node holds (live or already superseded)."""
    return [
        e
        for e in node.list(namespace, include_removed=True)
        if e.metadata.get("role") != "global" and _declared(e, "round") == round_
    ]


def _members(node: Client) -> int:
    return max(1, len(node.trust().scores))


def _wait_member(node: Client, timeout: float, poll: float) -> None:
    """Return once the node counts itself a member (its own key among the trust scores);
    `NotMemberError` after `timeout` seconds."""
    own = node.status().node_id
    deadline = time.monotonic() + timeout
    while not any(s.key_id == own for s in node.trust().scores):
        if time.monotonic() > deadline:
            raise NotMemberError(
                f"node {own.hex()[:16]} is not a member of its federation after {timeout:g} s: "
                "its membership entry applies once it has synced the admin entries signed "
                "before it (is a peer that holds them reachable? see `crdtd status`)"
            )
        time.sleep(poll)


def _build(node: Client, namespace: str, round_: int, timeout: float, poll: float) -> Any:
    """G_round from the node, retrying while it cannot be built yet (nothing to merge)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return node.global_model(namespace, round_)
        except CrdtdError as exc:
            if time.monotonic() > deadline:
                raise MergeError(
                    f"round {round_} of {namespace!r} could not be built within {timeout:g} s: {exc}"
                ) from None
            time.sleep(poll)


def _evaluate(evaluate: EvalFn | None, params: Params, cfg: dict[str, Any]) -> dict[str, float]:
    if evaluate is None:
        return {}
    loss, _, metrics = evaluate(dict(params), dict(cfg))
    out = {"loss": float(loss)}
    out.update({k: float(v) for k, v in metrics.items() if _float(v) is not None})
    return out


def run(
    node: Client,
    namespace: str,
    initial: Params,
    fit: FitFn,
    evaluate: EvalFn | None = None,
    *,
    rounds: int,
    quorum: int | None = None,
    timeout: float = 120.0,
    poll: float = 0.2,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> FLResult:
    """Train `rounds` rounds against `node` (see the module docstring). `quorum`: authors per
    round to wait for (default: every member of the federation); `on_round` hears each
    round's report as it completes."""

    from tqdm import tqdm

    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    _wait_member(node, timeout, poll)
    need = quorum if quorum is not None else _members(node)
    existing = [
        e
        for e in node.list(namespace)
        if e.metadata.get("role") == "global" and (_declared(e, "round") or 0) == 0
    ]
    if not existing:
        node.push(namespace, to_bytes(initial), metadata={"role": "global", "round": 0})
    reports: list[RoundReport] = []
    result, data = _build(node, namespace, 0, timeout, poll)
    seen = _evaluate(evaluate, from_bytes(data), {"server_round": 0, **(config or {})})
    bar = tqdm(total=rounds, desc=f"fl {namespace}", unit="round", disable=not progress)
    try:
        for r in range(1, rounds + 1):
            started = time.monotonic()
            cfg = {"server_round": r, **(config or {})}
            new, n, fit_metrics = fit(from_bytes(data), dict(cfg))
            meta: dict[str, Any] = dict(seen)  # how the global this update trained from did
            for k, v in fit_metrics.items():
                if _float(v) is not None and k not in meta:
                    meta[f"fit_{k}"] = float(v)
            meta.update({"round": r, "num_examples": int(n)})
            node.push(
                namespace,
                to_bytes(new),
                metadata=meta,
                base_id=bytes.fromhex(result.output_sha256),
            )
            deadline = time.monotonic() + timeout
            while len({e.author for e in _updates(node, namespace, r)}) < need:
                if time.monotonic() > deadline:
                    break
                time.sleep(poll)
            result, data = _build(node, namespace, r, timeout, poll)
            seen = _evaluate(evaluate, from_bytes(data), cfg)
            summary = result.summary
            reported: dict[str, list[float]] = {}
            for e in _updates(node, namespace, r):
                for key in ("loss", "accuracy"):
                    value = _float(e.metadata.get(key))
                    if value is not None:
                        reported.setdefault(key, []).append(value)
            report = RoundReport(
                round=r,
                global_id=result.output_sha256,
                participants=int(summary.get("participants", 0)),
                stale=int(summary.get("stale", 0)),
                screened=len(summary.get("screened", [])),
                excluded=len(summary.get("excluded", [])),
                reported={k: float(np.mean(v)) for k, v in sorted(reported.items())},
                evaluation=dict(seen),
                seconds=time.monotonic() - started,
            )
            reports.append(report)
            if on_round is not None:
                on_round(report)
            shown: dict[str, object] = {"participants": report.participants}
            shown.update({k: f"{v:.4f}" for k, v in report.evaluation.items()})
            bar.set_postfix(shown)
            bar.update(1)
    finally:
        bar.close()
    return FLResult(from_bytes(data), result.output_sha256, reports)
