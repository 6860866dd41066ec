"""Federated training on in-process crdtd nodes: the code the daemon runs, minus gRPC.

Every site is a real `NodeCore` (its config written by `crdtd federation add-node`, an
`E4State` on a SQLite store, an Ed25519 key, the federation's trust policy), so pushes,
evidence, trust, gating and materialisation are exactly the daemon's. Between nodes, a
session is an in-process push-pull exchange of the entries one holds and the other lacks,
each applied with `E4State.apply` against the sender's store (like the daemon, a node offers
everything it holds, gated authors' entries included); passes of random pairs run until a
pass moves nothing.

The namespace is a rounds namespace (`rounds = true`, crdtd.kinds.rounds). The first site
pushes the initial model as the round-0 global. Round r: every site builds G_{r−1} on its
own node (Materialise with `round = r − 1`), trains from it (`crdtd.fl.tasks.fit`) and pushes
its update declaring `round = r` and naming G_{r−1}'s id as its base (its previous update is
superseded, no erasure); nodes gossip; every honest node runs the daemon's model detector
(`NodeCore.detect_models`: one report per round's cohort) and publishes it; nodes gossip
again. Attackers (3 of 10 by default, drawn from the seed) push poisoned updates and
otherwise behave: sign flip (the honest update times −5), Gaussian noise (N(0, 1) per
coordinate in place of the update) or label flipping (trained on label C−1−y).

`run(SimConfig(...))` returns a `RunResult`: final test accuracy, which honest authors any
honest node ever gated, the round each attacker was gated at every honest node, and whether
the honest nodes' state roots agree at the end. benchmarks/bench_fl.py tabulates it.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crdtd.fl.tasks import Params, Task, TrainConfig, evaluate, fit, init_params, make_task
from crdtd.state.entry import Entry
from crdtd.trust.gating import NamespacePolicy

NAMESPACE = "model/fl"
ATTACKS = ("clean", "sign_flip", "noise", "label_flip")
RULES = ("fedavg", "default", "fedadam", "multi_krum")


@dataclass(frozen=True)
class SimConfig:
    """One run: task, split, rule, attack, sizes."""

    dataset: str = "digits"
    alpha: float = 0.5
    seed: int = 0
    rule: str = "default"
    attack: str = "clean"
    sites: int = 10
    attackers: int = 3
    rounds: int = 30
    train: TrainConfig = field(default_factory=TrainConfig)
    fanout: int = 2
    store_dir: str | None = None

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r} (known: {', '.join(ATTACKS)})")
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r} (known: {', '.join(RULES)})")


@dataclass
class RunResult:
    """What one run showed."""

    config: SimConfig
    accuracy: float
    curve: list[float]
    attackers: list[int]
    honest_gated: list[int]
    gated_at: dict[int, int | None]
    roots_agree: bool
    sha_agree: bool
    final_sha256: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def attackers_gated(self) -> int:
        return sum(1 for v in self.gated_at.values() if v is not None)

    @property
    def rounds_to_gate(self) -> int | None:
        """Rounds until every attacker was gated at every honest node (None: not all were)."""
        values = list(self.gated_at.values())
        if not values or any(v is None for v in values):
            return None
        return max(v for v in values if v is not None)


# -- payloads ---------------------------------------------------------------------------------


def to_safetensors(params: Mapping[str, np.ndarray]) -> bytes:
    """Canonical safetensors bytes of float32 params (names sorted)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(params[k], dtype=np.float32) for k in sorted(params)})


def from_safetensors(data: bytes) -> Params:
    from safetensors.numpy import load

    return {k: np.asarray(v, dtype=np.float32) for k, v in load(data).items()}


# -- the nodes --------------------------------------------------------------------------------


UNGATED = {"screen": False, "trust_threshold": 0.0, "trust_weighted": False}
TABLES: dict[str, dict[str, Any]] = {
    "default": {"rounds": True, "example_weighted": True},
    "fedavg": {"rounds": True, "example_weighted": True, **UNGATED},
    "fedadam": {
        "rounds": True,
        "example_weighted": True,
        "server_optimizer": "fedadam",  # Flower's defaults: η = 0.1, β = (0.9, 0.99)
        **UNGATED,
    },
    "multi_krum": {"rounds": True, "strategy": "multi_krum", **UNGATED},
}


def namespace_table(rule: str) -> dict[str, Any]:
    """The `[namespaces."model/fl"]` table each rule runs under: the namespace default
    (FedAvg, trust-gated, the round screen on), and plain FedAvg, FedAdam and Multi-Krum
    with neither gating nor screen (trust still runs and is reported)."""
    return dict(TABLES[rule])


class Federation:
    """`n` in-process nodes of one federation (real configs, stores, keys and trust)."""

    def __init__(self, root: Path, n: int, namespaces: Mapping[str, Mapping[str, Any]]) -> None:
        from crdtd.crypto import federation as fed
        from crdtd.node.config import load_daemon_config, render_daemon_sections
        from crdtd.node.core import NodeCore

        self.root = root
        fed.init(root / "fed", federation_id="bench-fl")
        trust = {"auto_revoke_equivocation": True, "detect_model_outliers": True}
        self.cores: list[NodeCore] = []
        for i in range(n):
            cfg = fed.add_node(root / "fed", f"site-{i:02d}")
            text = cfg.path.read_text() + "\n" + render_daemon_sections(namespaces, trust=trust)
            cfg.path.write_text(text)
            self.cores.append(NodeCore.open(load_daemon_config(cfg.path)))
        members = [Entry.from_bytes(c.config.node.membership_bytes()) for c in self.cores]
        for c in self.cores:
            for m in members:
                c.state.apply(m)
        self._tmp = root / "payloads"
        self._tmp.mkdir()
        self._n = 0

    def close(self) -> None:
        for c in self.cores:
            c.close()

    # -- writes -----------------------------------------------------------------------------

    def push(
        self,
        site: int,
        params: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any],
        base_id: bytes | None = None,
    ) -> Entry:
        """Site `site` pushes `params` as a signed contribution through its NodeCore."""
        self._n += 1
        path = self._tmp / f"{self._n}.safetensors"
        path.write_bytes(to_safetensors(params))
        out = self.cores[site].push_file(path, NAMESPACE, metadata=metadata, base_id=base_id)
        path.unlink()
        return out.entry

    # -- gossip -----------------------------------------------------------------------------

    @staticmethod
    def _ids(core: Any) -> set[bytes]:
        with core.state.store.reading() as c:
            return {bytes(r[0]) for r in c.execute("SELECT id FROM entries")}

    def session(self, a: int, b: int, ids: list[set[bytes]]) -> int:
        """Push-pull between nodes a and b (`ids`: what each node holds, kept up to date);
        returns how many entries went in."""
        moved = 0
        for s, d in ((b, a), (a, b)):
            src, dst = self.cores[s], self.cores[d]
            entries = [src.state.store.get_entry(i) for i in sorted(ids[s] - ids[d])]
            moved += dst.state.apply_until_stable(entries, src.state.store)
            ids[d] = self._ids(dst)
        return moved

    def gossip(self, tag: str, fanout: int, max_passes: int = 12) -> int:
        """Random push-pull passes until one moves nothing (seeded by `tag`)."""
        total = 0
        n = len(self.cores)
        ids = [self._ids(c) for c in self.cores]
        for p in range(max_passes):
            moved = 0
            for i in range(n):
                rng = random.Random(f"{tag}/{p}/{i}")
                for j in rng.sample([x for x in range(n) if x != i], min(fanout, n - 1)):
                    moved += self.session(i, j, ids)
            total += moved
            if moved == 0:
                break
        return total

    def roots(self, nodes: Sequence[int]) -> set[bytes]:
        return {self.cores[i].state.merkle_root() for i in nodes}

    def gated(self, node: int, policy: NamespacePolicy) -> set[bytes]:
        """Authors node `node` excludes under `policy` (its own assessment)."""
        core = self.cores[node]
        _, excluded = core.assessment().gate(policy, core.state.members(include_revoked=True))
        return {x.author for x in excluded}

    def materialise(self, node: int, work: Path, round_: int) -> tuple[str, Params]:
        """The daemon's Materialise of round `round_` on `node`: (sha256, tensors)."""
        from crdtd.kinds.base import MaterialiseRequest
        from crdtd.node.materialise import materialise

        core = self.cores[node]
        ns = core.namespace(NAMESPACE)
        m = materialise(core, ns, MaterialiseRequest(round=round_), work)
        data = m.path.read_bytes()
        return m.sha256, from_safetensors(data)

    def counts(self, node: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for (kind, state), n in self.cores[node].entry_counts().items():
            out[f"{kind}_{state}"] = n
        return out


# -- the sites --------------------------------------------------------------------------------


def _attackers(cfg: SimConfig) -> list[int]:
    if cfg.attack == "clean":
        return []
    order = list(range(cfg.sites))
    random.Random(f"attackers/{cfg.seed}").shuffle(order)
    return sorted(order[: cfg.attackers])


def site_update(
    task: Task, cfg: SimConfig, site: int, attack: str | None, global_: Params, round_: int
) -> Params:
    """What site `site` pushes in `round_`: its honest training result, or a poisoned one."""
    x, y = task.site_data(site)
    seed = (cfg.seed * 1_000 + round_) * 1_000 + site
    if attack == "label_flip":
        return fit(global_, x, task.classes - 1 - y, cfg.train, seed)
    trained = fit(global_, x, y, cfg.train, seed)
    if attack == "sign_flip":
        return {k: global_[k] - 5.0 * (trained[k] - global_[k]) for k in global_}
    if attack == "noise":
        rng = np.random.default_rng([cfg.seed, round_, site, 7])
        return {
            k: (global_[k] + rng.normal(0.0, 1.0, global_[k].shape)).astype(np.float32)
            for k in global_
        }
    return trained


# -- one run ----------------------------------------------------------------------------------


def run(cfg: SimConfig, task: Task | None = None, log: Any = None) -> RunResult:
    """One federated run on fresh in-process nodes."""
    started = time.perf_counter()
    task = task or make_task(cfg.dataset, cfg.sites, cfg.alpha, cfg.seed)
    bad = _attackers(cfg)
    honest = [i for i in range(cfg.sites) if i not in bad]
    with tempfile.TemporaryDirectory(prefix="crdtd-fl-", dir=cfg.store_dir or _fast_tmp()) as tmp:
        root = Path(tmp)
        fed = Federation(root, cfg.sites, {NAMESPACE: namespace_table(cfg.rule)})
        try:
            kid = [c.key_id for c in fed.cores]
            bad_ids = {kid[i] for i in bad}
            policy = NamespacePolicy()
            global_ = init_params(task, cfg.seed)
            fed.push(honest[0], global_, {"role": "global", "round": 0})
            fed.gossip(f"{cfg.seed}/0/push", cfg.fanout)
            gated_at: dict[int, int | None] = {i: None for i in bad}
            ever_gated: set[bytes] = set()
            curve: list[float] = []
            sha = ""
            for r in range(1, cfg.rounds + 1):
                sha, global_ = fed.materialise(honest[0], root / f"m{r}", r - 1)
                for i in range(cfg.sites):
                    update = site_update(task, cfg, i, cfg.attack if i in bad else None, global_, r)
                    meta = {"num_examples": len(task.sites[i]), "round": r}
                    fed.push(i, update, meta, bytes.fromhex(sha))
                fed.gossip(f"{cfg.seed}/{r}/push", cfg.fanout)
                for i in honest:
                    fed.cores[i].detect_models()
                fed.gossip(f"{cfg.seed}/{r}/evidence", cfg.fanout)
                views = [fed.gated(i, policy) for i in honest]
                for v in views:
                    ever_gated |= v - bad_ids
                for i in bad:
                    if gated_at[i] is None and all(kid[i] in v for v in views):
                        gated_at[i] = r
                sha, params = fed.materialise(honest[0], root / f"g{r}", r)
                curve.append(evaluate(params, task.x_test, task.y_test)[1])
                if log:
                    print(
                        f"  round {r:3d}: accuracy {curve[-1]:.4f}, gated "
                        f"{sorted(kid.index(a) for v in views for a in v)}",
                        file=log,
                        flush=True,
                    )
            shas = {fed.materialise(i, root / f"final-{i}", cfg.rounds)[0] for i in honest}
            roots = fed.roots(honest)
            counts = fed.counts(honest[0])
        finally:
            fed.close()
    return RunResult(
        config=cfg,
        accuracy=curve[-1] if curve else float("nan"),
        curve=curve,
        attackers=bad,
        honest_gated=sorted(kid.index(a) for a in ever_gated),
        gated_at=gated_at,
        roots_agree=len(roots) == 1,
        sha_agree=len(shas) == 1,
        final_sha256=sha,
        seconds=time.perf_counter() - started,
        counts=counts,
    )


def centralised(task: Task, train: TrainConfig, epochs: int, seed: int) -> float:
    """Test accuracy of one model trained on every site's rows together."""
    params = fit(
        init_params(task, seed), task.x_train, task.y_train, replace(train, epochs=epochs), seed
    )
    return evaluate(params, task.x_test, task.y_test)[1]


def local_only(task: Task, train: TrainConfig, epochs: int, seed: int) -> float:
    """Mean test accuracy of the sites' models, each trained on its own rows only."""
    start = init_params(task, seed)
    accs = []
    for i in range(len(task.sites)):
        x, y = task.site_data(i)
        accs.append(
            evaluate(
                fit(start, x, y, replace(train, epochs=epochs), seed + i), task.x_test, task.y_test
            )[1]
        )
    return float(np.mean(accs))


def _fast_tmp() -> str | None:
    """/dev/shm when writable: the stores fsync every commit, which a tmpfs makes free."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def digest_of(params: Mapping[str, np.ndarray]) -> str:
    return hashlib.sha256(to_safetensors(params)).hexdigest()
