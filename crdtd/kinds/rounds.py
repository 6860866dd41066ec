"""Rounds in a model namespace (`rounds = true`): per-round globals with no coordinator.

A rounds namespace holds three things, all ordinary signed contributions:

- the initial global: a contribution with metadata `role = "global"` and `round = 0` (or
  the namespace's `base` entry). When several members push one, the one with the smallest
  payload digest among accepted authors is round 0 (sites that agree on the initial model
  push the same bytes, so they agree whoever pushes first).
- updates: contributions declaring `round = r` (≥ 1), naming as `base_id` the global they
  trained from (its id is the sha256 of its safetensors bytes, what Materialise returns).
  Each author holds one live update, its newest by its own chain (the state supersedes the
  older ones without removal entries; docs/store.md, "Latest-only namespaces").
- nothing else: a global is never pushed back as an update, and an entry declaring
  `role = "global"` is never merged as one.

Round r's global G_r is a pure function of the replicated set: its *cohort* is, for every
author, the author's newest update (by seq) among those declaring a round in
[r − max_staleness, r]; an update s rounds behind (s = r − its round) is *stale* and its
weight is multiplied by 1/(1 + s); older ones are left out. The cohort is gated by trust
(the namespace's threshold), then, with `screen = true`, the round's outlier screen
(crdtd.trust.outliers over the fresh updates as task vectors against G_{r−1}, every author's
included, gated or not) drops this round's flagged updates: the namespace's rule (FedAvg by
default) merges the rest, and a server optimiser (FedAvgM, FedAdagrad, FedAdam, FedYogi;
crdtd.fl.optimisers) may turn the merge into G_r from G_{r−1} and the state it carries.
When nobody is gated and nothing is flagged, G_r is exactly FedAvg of the round.

Every node keeps the globals it computed under DATA_DIR/rounds/, keyed by the round's cohort,
its base and the settings, so a round is merged once per node and survives restarts. Trust
enters a round when the node first builds it: evidence that arrives later (an author gated at
round 3 for updates it sent in rounds 1–3) changes the rounds still to come, not the globals
already built and trained from. A round whose updates' bytes this node no longer holds
(reclaimed two generations back) and never merged raises MergeError naming the round.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crdtd.errors import ConfigError, MergeError
from crdtd.fl.optimisers import OPTIMISERS, ServerOptimiser, server_step
from crdtd.state.entry import Entry, Kind
from crdtd.store import sqlite as db
from crdtd.trust.outliers import ModelContribution, OutlierParams, model_outliers
from crdtd.trust.weighting import WeightedInput, plan_materialisation

if TYPE_CHECKING:
    from crdtd.node.config import NamespaceConfig

__all__ = [
    "Cohort",
    "Round",
    "RoundSettings",
    "declared_int",
    "global_id",
    "is_global",
    "latest_round",
    "merge_round",
    "metadata_int",
    "round_global",
    "select_cohort",
]

Params = dict[str, np.ndarray]
_IN_LINE = (db.LIVE, db.SUPERSEDED, db.RETIRED)


@dataclass(frozen=True)
class RoundSettings:
    """A model namespace's round settings (`[namespaces."NAME"]` keys of the model kind)."""

    rounds: bool = False
    screen: bool = True
    max_staleness: int = 1
    optimiser: ServerOptimiser = field(default_factory=ServerOptimiser)

    @classmethod
    def parse(cls, v: Mapping[str, Any], where: Any) -> RoundSettings:
        """From the coerced model-kind keys; ConfigError names file, line and key."""
        stale = v.get("max_staleness", 1)
        if stale != int(stale) or not 0 <= stale <= 1000:
            raise ConfigError(f"{where('max_staleness')}: expected a whole number of rounds")
        name = v.get("server_optimizer", "fedavg")

        def opt(key: str) -> float | None:
            value = v.get(key, -1.0)
            return None if value is None or value < 0 else float(value)

        try:
            optimiser = ServerOptimiser(
                name,
                eta=opt("server_lr"),
                beta_1=opt("server_beta_1"),
                beta_2=opt("server_beta_2"),
                tau=opt("server_tau"),
                momentum=float(v.get("server_momentum", 0.0)),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where('server_optimizer')}: {exc}") from None
        return cls(bool(v.get("rounds", False)), bool(v.get("screen", True)), int(stale), optimiser)


SETTINGS_DOC = {
    "rounds": "one live contribution per author; per-round globals (docs/fl.md)",
    "screen": "drop the round's outlier updates from its merge (rounds namespaces)",
    "max_staleness": "rounds an update may lag and still count, at weight 1/(1+s)",
    "server_optimizer": "server optimiser: " + ", ".join(OPTIMISERS),
    "server_lr": "server learning rate η (negative: Flower's default for the optimiser)",
    "server_momentum": "FedAvgM server momentum β",
    "server_beta_1": "β₁ of FedAdam/FedYogi/FedAdagrad (negative: Flower's default)",
    "server_beta_2": "β₂ of FedAdam/FedYogi (negative: Flower's default)",
    "server_tau": "τ, the adaptivity floor (negative: Flower's default)",
}


# -- reading the set --------------------------------------------------------------------------


def declared_int(e: Entry, key: str) -> int | None:
    """An integer a contribution declares in its metadata (`round`, `num_examples`)."""
    return metadata_int(e.body.metadata, key)  # type: ignore[union-attr]


def metadata_int(metadata: Mapping[str, Any], key: str) -> int | None:
    """An integer under `key` in contribution metadata (an int, or a string of digits)."""
    value = metadata.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def is_global(e: Entry) -> bool:
    """True for an entry that declares itself a global model (metadata role = "global")."""
    return e.body.metadata.get("role") == "global"  # type: ignore[union-attr]


def global_id(data: bytes) -> bytes:
    """A global's id: the sha256 of its safetensors bytes (what Materialise reports)."""
    return hashlib.sha256(data).digest()


def _line(core: Any, namespace: str) -> list[tuple[Entry, int]]:
    """Contributions of the namespace still in their author's line (live, superseded, retired)."""
    with core.state.store.reading() as c:
        rows = c.execute(
            "SELECT raw, status FROM entries WHERE kind = ? AND namespace = ? ORDER BY id",
            (int(Kind.CONTRIBUTION), namespace),
        ).fetchall()
    out = []
    for raw, status in rows:
        if int(status) in _IN_LINE:
            out.append((Entry.from_bytes(bytes(raw)), int(status)))
    return out


def latest_round(entries: list[tuple[Entry, int]]) -> int:
    """The highest round a live update declares (0 when there is none)."""
    rounds = [
        declared_int(e, "round") or 0 for e, st in entries if st == db.LIVE and not is_global(e)
    ]
    return max(rounds, default=0)


@dataclass(frozen=True)
class Cohort:
    """Round r's updates: (entry, staleness), one per author, in content-id order."""

    round: int
    members: tuple[tuple[Entry, int], ...]

    @property
    def fresh(self) -> list[Entry]:
        return [e for e, s in self.members if s == 0]


def select_cohort(entries: list[tuple[Entry, int]], round_: int, max_staleness: int) -> Cohort:
    """Each author's newest update (by seq) declaring a round in [r − S, r], with its lag."""
    best: dict[bytes, tuple[Entry, int]] = {}
    for e, _ in entries:
        r = declared_int(e, "round")
        if is_global(e) or r is None or not round_ - max_staleness <= r <= round_ or r < 1:
            continue
        held = best.get(e.author)
        if held is None or e.seq > held[0].seq:
            best[e.author] = (e, round_ - r)
    return Cohort(round_, tuple(sorted(best.values(), key=lambda x: x[0].id)))


# -- the chain of globals ---------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One computed global: its bytes' id, tensors, optimiser state and how it was made."""

    round: int
    id: bytes
    data: bytes
    params: Params
    state: Params
    summary: Mapping[str, Any]


def _payload(store: Any, e: Entry) -> bytes:
    try:
        manifest = store.get_manifest(e.body.payload_digest)  # type: ignore[union-attr]
        return b"".join(store.read_chunk(ref.digest) for ref in manifest.chunks)
    except Exception as exc:  # reclaimed here: this round can no longer be merged
        raise MergeError(
            f"update {e.id.hex()[:16]} of round {declared_int(e, 'round')}: its bytes are not "
            f"held by this node ({type(exc).__name__}); the round was reclaimed before this "
            "node merged it"
        ) from None


def _load(data: bytes) -> Params:
    from safetensors.numpy import load

    return {k: np.asarray(v) for k, v in load(data).items()}


def _save(params: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> bytes:
    """Safetensors bytes with sorted tensors; `meta` must hold at most one key (safetensors
    does not keep several in a fixed order, and these bytes must be equal on every node)."""
    from safetensors.numpy import save

    if len(meta) > 1:
        raise ValueError("a global's header carries one metadata key")
    return save(
        {k: np.ascontiguousarray(params[k]) for k in sorted(params)},
        metadata=dict(sorted(meta.items())),
    )


class RoundChain:
    """The globals this node computed, per namespace and round (memory, then DATA_DIR/rounds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mem: dict[tuple[str, str], Round] = {}
        self._lock = threading.RLock()

    def _path(self, namespace: str, key: str) -> Path:
        ns = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        return self.root / ns / f"{key}.safetensors"

    def get(self, namespace: str, key: str, round_: int) -> Round | None:
        with self._lock:
            got = self._mem.get((namespace, key))
            if got is not None:
                return got
            path = self._path(namespace, key)
            if not path.is_file():
                return None
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            params = {k: v for k, v in tensors.items() if not k.startswith("state/")}
            state = {k[6:]: v for k, v in tensors.items() if k.startswith("state/")}
            data = _save(params, json.loads(meta.get("crdtd.global_meta", "{}")))
            got = Round(round_, global_id(data), data, params, state, json.loads(meta["summary"]))
            self._mem[(namespace, key)] = got
            return got

    def remembered(self, namespace: str, key: str) -> Round | None:
        """A global held in memory only (round 0: its bytes are an entry's payload)."""
        with self._lock:
            return self._mem.get((namespace, key))

    def remember(self, namespace: str, key: str, r: Round) -> None:
        with self._lock:
            self._mem[(namespace, key)] = r

    def put(self, namespace: str, key: str, r: Round) -> None:
        with self._lock:
            self._mem[(namespace, key)] = r
            path = self._path(namespace, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = dict(r.params)
            tensors.update({f"state/{k}": v for k, v in r.state.items()})
            from safetensors.numpy import save

            meta = {"summary": json.dumps(r.summary, sort_keys=True)}
            if r.round > 0:
                meta["crdtd.global_meta"] = json.dumps(_global_meta(r.round, r.summary))
            tmp = path.with_suffix(".part")
            tmp.write_bytes(
                save({k: np.ascontiguousarray(tensors[k]) for k in sorted(tensors)}, meta)
            )
            tmp.replace(path)


def _global_meta(round_: int, summary: Mapping[str, Any]) -> dict[str, str]:
    """The metadata a global's safetensors header carries: its round and its inputs' digest,
    as one key (safetensors writes several metadata keys in no fixed order)."""
    inputs = str(summary.get("inputs_digest", ""))
    return {"crdtd.round": json.dumps({"inputs": inputs, "round": round_}, sort_keys=True)}


def chain_of(core: Any) -> RoundChain:
    """The node's round chain (created on first use under DATA_DIR/rounds)."""
    chain = getattr(core, "_round_chain", None)
    if chain is None:
        chain = RoundChain(Path(core.config.node.data_dir) / "rounds")
        core._round_chain = chain
    return chain  # type: ignore[no-any-return]


def _initial(core: Any, ns: NamespaceConfig, entries: list[tuple[Entry, int]]) -> Entry:
    """Round 0: the namespace's `base`, else the smallest-digest round-0 global of an
    accepted author."""
    if ns.base is not None:
        for e, _ in entries:
            if e.id == ns.base:
                return e
        raise MergeError(f"namespace {ns.name!r}: base entry {ns.base.hex()} is not held here")
    a = core.assessment()
    accepted, _ = a.gate(ns.policy, {e.author for e, _ in entries})
    ok = set(accepted)
    zero = [
        e
        for e, st in entries
        if is_global(e)
        and (declared_int(e, "round") or 0) == 0
        and e.author in ok
        and st == db.LIVE
    ]
    if not zero:
        raise MergeError(
            f"namespace {ns.name!r} has no initial global: push the starting model with "
            'metadata role = "global", round = 0 (crdtd.fl does), or set base = ENTRY_ID'
        )
    return min(zero, key=lambda e: (e.body.payload_digest, e.id))  # type: ignore[union-attr]


def _key(ns: NamespaceConfig, round_: int, parts: list[bytes], settings: Any) -> str:
    h = hashlib.sha256(b"crdtd/round/v1\0" + ns.name.encode() + b"\0" + str(round_).encode())
    for p in parts:
        h.update(p)
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def round_global(core: Any, ns: NamespaceConfig, round_: int) -> Round:
    """G_round of a rounds namespace, computed (and cached) from the replicated set."""
    entries = _line(core, ns.name)
    return _global(core, ns, entries, round_)


def _global(core: Any, ns: NamespaceConfig, entries: list[tuple[Entry, int]], round_: int) -> Round:
    chain = chain_of(core)
    settings: RoundSettings = ns.settings or RoundSettings()
    if round_ == 0:
        g0 = _initial(core, ns, entries)
        key = _key(ns, 0, [g0.id], None)
        got = chain.remembered(ns.name, key)
        if got is None:
            data = _payload(core.state.store, g0)
            got = Round(
                0, global_id(data), data, _load(data), {}, {"round": 0, "initial": g0.id.hex()}
            )
            chain.remember(ns.name, key, got)
        return got
    base = _global(core, ns, entries, round_ - 1)
    cohort = select_cohort(entries, round_, settings.max_staleness)
    if not cohort.members:
        raise MergeError(f"namespace {ns.name!r}: round {round_} has no updates yet")
    settings_key = {
        "strategy": ns.strategy,
        "params": dict(ns.params),
        "screen": settings.screen,
        "optimiser": settings.optimiser.hyper() | {"name": settings.optimiser.name},
        "policy": [ns.policy.threshold, list(ns.policy.dimensions), ns.policy.trust_weighted],
        "examples": ns.policy.example_weighted,
        "dtype": ns.dtype,
    }
    staleness = [str(s).encode() for _, s in cohort.members]
    key = _key(ns, round_, [base.id, *(e.id for e, _ in cohort.members), *staleness], settings_key)
    got = chain.get(ns.name, key, round_)
    if got is not None:
        return got  # built before: trust as it stood then (see the module docstring)
    a = core.assessment()
    loaded = {e.id: _load(_payload(core.state.store, e)) for e, _ in cohort.members}
    screened = {
        e.id: "non-finite values"
        for e, _ in cohort.members
        if not all(np.isfinite(v).all() for v in loaded[e.id].values())
    }
    if settings.screen:
        screened.update(_screen(core, cohort, base, loaded, screened))
    inputs = [
        WeightedInput(e.id, e.author, declared_int(e, "num_examples"), Fraction(1, 1 + s))
        for e, s in cohort.members
        if e.id not in screened
    ]
    plan = plan_materialisation(inputs, a.scores, a.revocations, ns.policy)
    if not plan.content_ids:
        raise MergeError(f"namespace {ns.name!r}: round {round_} has no update left to merge")
    merged = _merge(plan, loaded)
    by_id = {e.id: e for e, _ in cohort.members}
    params, state = server_step(settings.optimiser, base.params, merged, base.state, round_)
    params = {k: params[k].astype(base.params[k].dtype, copy=False) for k in sorted(params)}
    summary = {
        "round": round_,
        "participants": len(plan.content_ids),
        "cohort": len(cohort.members),
        "stale": sum(1 for _, s in cohort.members if s > 0),
        "screened": sorted(x.hex() for x in screened),
        "excluded": sorted(x.author.hex() for x in plan.excluded),
        "base": base.id.hex(),
        "strategy": plan.strategy,
        "optimiser": settings.optimiser.name,
        # the inputs' payload digests, not their entry ids: the same updates signed by other
        # keys (another deployment) give the same global bytes
        "inputs_digest": hashlib.sha256(
            b"".join(sorted(by_id[c].body.payload_digest for c in plan.content_ids))  # type: ignore[union-attr]
        ).hexdigest(),
    }
    data = _save(params, _global_meta(round_, summary))
    got = Round(round_, global_id(data), data, params, state, summary)
    chain.put(ns.name, key, got)
    return got


def _screen(
    core: Any,
    cohort: Cohort,
    base: Round,
    loaded: Mapping[bytes, Params],
    skip: Mapping[bytes, str],
) -> dict[bytes, str]:
    """The round's fresh updates the outlier screen flags: content id -> why."""
    fresh = [e for e in cohort.fresh if e.id not in skip]
    params = OutlierParams.for_federation(len(core.state.members(include_revoked=True)))
    if len(fresh) < params.min_contributions:
        return {}
    contribs = [
        ModelContribution(e.id, e.author, loaded[e.id], declared_int(e, "num_examples"), e.seq)
        for e in fresh
    ]
    stats = model_outliers(contribs, base.params, params)
    return {
        s.content_id: f"outlier in round {cohort.round} ({', '.join(s.flags)})"
        for s in stats
        if s.outlier
    }


def _merge(plan: Any, loaded: Mapping[bytes, Params]) -> Params:
    """The namespace rule over the plan's inputs, in memory (float32 tensors)."""
    import torch

    from crdtd.model import Contribution, ModelMerge, ModelMergeSchema

    contributions = []
    for cid, mp in zip(plan.content_ids, plan.model_params):
        tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in loaded[cid].items()}
        contributions.append(Contribution(tensors, params=dict(mp), label=f"entry {cid.hex()}"))
    result = ModelMerge(ModelMergeSchema.single(plan.strategy, plan.params)).merge(contributions)
    return {k: result.tensor[k].contiguous().numpy() for k in sorted(result.tensor)}


def round_progress(core: Any, namespace: str) -> tuple[int, int, dict[str, float]]:
    """(latest round, authors with an update of it, mean `loss`/`accuracy` they report)."""
    entries = _line(core, namespace)
    r = latest_round(entries)
    ups = [e for e, _ in entries if not is_global(e) and declared_int(e, "round") == r]
    reported: dict[str, list[float]] = {}
    for e in ups:
        for key in ("loss", "accuracy"):
            try:
                value = float(e.body.metadata.get(key))  # type: ignore[union-attr, arg-type]
            except (TypeError, ValueError):
                continue
            if np.isfinite(value):
                reported.setdefault(key, []).append(value)
    means = {k: float(np.mean(v)) for k, v in sorted(reported.items())}
    return r, len({e.author for e in ups}), means


def merge_round(core: Any, ns: NamespaceConfig, round_: int | None) -> tuple[Round, list[Entry]]:
    """G_round (None: the latest round a live update declares) and the cohort's entries."""
    entries = _line(core, ns.name)
    r = latest_round(entries) if round_ is None else round_
    g = _global(core, ns, entries, r)
    cohort = select_cohort(entries, r, (ns.settings or RoundSettings()).max_staleness)
    return g, [e for e, _ in cohort.members]
