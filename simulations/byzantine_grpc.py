"""The Byzantine scenario on real daemons: `crdtd start` processes gossiping over loopback gRPC.

`python simulations/byzantine.py --grpc` runs this. Every honest site is a real daemon (its
own process, store, mutual-TLS peer port and client port) made from `crdtd federation
add-node` configs, with `[trust] auto_revoke_equivocation` and `detect_model_outliers` on.
Adversaries are members with a key and a certificate but no honest software: they act
through what any member can reach, the honest nodes' client API (pushes signed with their
own key) and peer port (a session of their own). Attacks played here:

- equivocation: two contributions signed with one seq, pushed at two different honest nodes;
- forged_signature: every round, offers every honest node an entry whose signature fails;
- sign_flip / noise / alie: a poisoned model, pushed (signed) at one honest node.

Rounds are wall-clock (`round_seconds`) polls: in each, every honest site and every model
attacker pushes its next contribution (declaring the round, so each round is judged as one
cohort and a model attacker is gated once three of its rounds are corroborated outliers);
after each, every honest node's Trust reply says whom it gates. Then the adversaries stop, the honest nodes settle until their trust
digests agree for three polls, and each materialises the namespace.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from crdtd.client import Client
from crdtd.crypto import federation as fed
from crdtd.crypto.keys import NodeKey
from crdtd.crypto.node_config import NodeConfig
from crdtd.node.config import load_daemon_config, read_token, render_daemon_sections
from crdtd.proto_gen.crdtd.v1 import node_pb2 as npb
from crdtd.proto_gen.crdtd.v1 import node_pb2_grpc
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.e4 import E4State
from crdtd.state.entry import ED25519, Entry, Signature, make_contribution, make_removal
from crdtd.store.chunks import BytesSource
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import Identity
from crdtd.sync.session import Connection
from crdtd.sync.transport import GrpcTransport

GRPC_ATTACKS = ("alie", "equivocation", "forged_signature", "noise", "sign_flip")
BASE_NAMESPACE = "model/sim-base"
GOSSIP = {
    "interval_ms": 100,
    "probe_interval_ms": 300,
    "probe_timeout_ms": 2000,
    "push_pull_interval_ms": 1000,
}


def _edit(text: str, section: str, values: Mapping[str, str]) -> str:
    """Set `key = value` lines (values already TOML) inside one [section] of a config."""
    out, current = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip()[1:-1]
        key = line.split("=", 1)[0].strip()
        if current == section and "=" in line and key in values:
            line = f"{key} = {values[key]}"
        out.append(line)
    return "\n".join(out) + "\n"


class Site:
    """One federation member: its config, and (honest sites) a running daemon."""

    def __init__(self, index: int, config: NodeConfig) -> None:
        self.index = index
        self.config = config
        self.key: NodeKey = config.load_key()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> Path:
        return self.config.path

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.config.peer_port}"

    def start(self) -> None:
        log = self.path.with_suffix(".log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crdtd.cli", "start", "--config", str(self.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        log.close()

    def client(self, timeout: float = 30.0) -> Client:
        return Client.from_config(self.path, timeout=timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.path.with_suffix(".log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"daemon {self.path.name} exited:\n{tail}")
            try:
                with self.client(timeout=2) as c:
                    c.status()
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"daemon {self.path.name} not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _first_contribution(
    key: NodeKey,
    namespace: str,
    base: bytes,
    data: bytes,
    seq: int = 1,
    prev: bytes | None = None,
    round_: int = 1,
) -> Entry:
    """An adversary's signed contribution (seq 1 unless given) of the safetensors `data`."""
    src = BytesSource(data)
    return make_contribution(
        key,
        seq,
        prev,
        namespace,
        src.manifest.digest,
        src.manifest.size,
        payload_kind="safetensors",
        base_id=base,
        metadata={"round": round_},
    )


def _push_signed(site: Site, entry: Entry, data: bytes) -> None:
    """Push a contribution already signed elsewhere (an adversary picks its own seq)."""
    with site.client() as c:
        stub = node_pb2_grpc.NodeStub(c.channel)
        token = read_token(load_daemon_config(site.path, check_strategies=False).token_file)
        header = npb.PushHeader(
            namespace=entry.body.namespace,  # type: ignore[union-attr]
            payload_kind="safetensors",
            payload_size=len(data),
            signed_entry=entry.to_bytes(),
        )

        def requests() -> Iterator[npb.PushRequest]:
            yield npb.PushRequest(header=header)
            for i in range(0, len(data), 1 << 20):
                yield npb.PushRequest(data=data[i : i + (1 << 20)])

        stub.PushContribution(
            requests(), metadata=[("authorization", f"Bearer {token}")], timeout=30
        )


class Forger:
    """An adversary's own peer sessions: offers each honest node a forged entry."""

    def __init__(self, site: Site, data_dir: Path, admin_entries: Sequence[bytes]) -> None:
        cfg = site.config
        self.site = site
        self.state = E4State.open(data_dir, cfg.federation.admin, cfg.federation.policy)
        for raw in admin_entries:
            self.state.apply(raw)
        self.identity = Identity(
            site.key,
            cfg.membership_bytes(),
            cfg.federation.id,
            cfg.federation.admin,
            cfg.federation.policy,
        )
        self.config = SyncConfig(rpc_timeout=10.0)
        self.seq = 100

    async def attack(self, targets: Sequence[Site]) -> None:
        transport = GrpcTransport(self.site.config.tls_material(), self.config)
        try:
            for t in targets:
                self.seq += 1
                good = make_removal(self.site.key, self.seq, bytes(32), [bytes(32)])
                sig = good.signatures[0].value
                forged = Entry.from_parts(
                    good.header_bytes, [Signature(ED25519, bytes([sig[0] ^ 1]) + sig[1:])]
                )
                conn = Connection(
                    transport.connect(t.peer_address), self.identity, self.state, self.config
                )
                try:
                    await conn.ensure()
                    await conn.client.offer(
                        pb.OfferRequest(records=[pb.EntryRecord(entry=forged.to_bytes())])
                    )
                except Exception:
                    continue  # refused (already revoked) or unreachable: nothing more to do
        finally:
            await transport.close()


def _mean(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not items:
        return {}
    return {
        k: np.mean(np.stack([np.asarray(x[k], np.float64) for x in items]), 0) for k in items[0]
    }


def run_grpc(cfg: Any, sim: Any, log: Any = None, round_seconds: float = 1.0) -> Any:
    """Run `cfg` (a SimConfig whose attacks are all in GRPC_ATTACKS) on real daemons.

    `sim` is the harness module (simulations/byzantine.py): its ModelWorld, SimResult,
    NAMESPACE, payload encoding and distance, so both modes judge alike.
    """
    t0 = time.perf_counter()
    unknown = sorted(set(cfg.attacks) - set(GRPC_ATTACKS))
    if unknown:
        raise ValueError(f"--grpc plays {', '.join(GRPC_ATTACKS)}; not {', '.join(unknown)}")
    tmp = tempfile.TemporaryDirectory(prefix="crdtd-byz-grpc-", dir=cfg.store_dir)
    root = Path(tmp.name) / "fed"
    fed.init(root, federation_id="byz-grpc")
    sites = [Site(i, fed.add_node(root, f"node-{i}")) for i in range(cfg.nodes)]
    rng = random.Random(cfg.seed)
    order = list(range(cfg.nodes))
    rng.shuffle(order)
    bad = sorted(order[: cfg.byzantine])
    attack_of = {i: cfg.attacks[j % len(cfg.attacks)] for j, i in enumerate(bad)}
    honest = [s for s in sites if s.index not in attack_of]
    adversaries = [s for s in sites if s.index in attack_of]
    boot = "[" + ", ".join(f'"{s.peer_address}"' for s in honest) + "]"
    for s in honest:
        text = _edit(s.path.read_text(), "peer", {"bootstrap": boot})
        text = _edit(
            text,
            "gossip",
            {**{k: str(v) for k, v in GOSSIP.items()}, "fanout": str(cfg.fanout)},
        )
        text += "\n" + render_daemon_sections(
            {sim.NAMESPACE: {"strategy": cfg.strategy}, BASE_NAMESPACE: {}},
            trust={"auto_revoke_equivocation": cfg.auto_revoke, "detect_model_outliers": True},
            limits={"max_payload": "64MiB", "drain_timeout_ms": 2000},
        )
        s.path.write_text(text)
        s.config = load_daemon_config(s.path, check_strategies=False).node
    world = sim.ModelWorld(cfg.seed, cfg.model_dim, cfg.nodes)
    memberships = [s.config.membership_bytes() for s in sites]
    pushed: dict[bytes, dict[str, np.ndarray]] = {}
    try:
        for s in honest:
            s.start()
        for s in honest:
            s.wait_ready()
        for s in honest:
            with s.client() as c:
                for m in memberships:
                    c.submit(m)
        ns = sim.NAMESPACE
        with honest[0].client() as c:
            base = c.push(
                BASE_NAMESPACE, sim._to_safetensors(world.base), payload_kind="safetensors"
            ).entry_id
        for s in honest:
            with s.client() as c:
                r = c.push(
                    ns,
                    sim._to_safetensors(world.honest[s.index]),
                    payload_kind="safetensors",
                    base_id=base,
                    metadata={"round": 1},
                )
                pushed[r.entry_id] = world.honest[s.index]
        honest_idx = [s.index for s in honest]
        forgers: list[Forger] = []
        chains: dict[int, tuple[int, bytes, Site]] = {}  # model attacker -> (seq, prev, target)
        for j, a in enumerate(adversaries):
            attack = attack_of[a.index]
            target = honest[j % len(honest)]
            if attack in ("sign_flip", "noise", "alie"):
                tensors = world.poisoned(attack, a.index, honest_idx)
                data = sim._to_safetensors(tensors)
                e = _first_contribution(a.key, ns, base, data)
                _push_signed(target, e, data)
                pushed[e.id] = tensors
                chains[a.index] = (1, e.id, target)
            elif attack == "equivocation":
                other = honest[(j + 1) % len(honest)]
                for t, delta in ((target, 0.0), (other, 0.01)):
                    tensors = {k: v + delta for k, v in world.honest[a.index].items()}
                    data = sim._to_safetensors(tensors)
                    e = _first_contribution(a.key, ns, base, data)
                    try:
                        _push_signed(t, e, data)
                    except grpc.RpcError as exc:
                        # the twin reached `other` by gossip first: it refuses the second
                        # header as an equivocation, which is the attack being detected
                        if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                            raise
                    pushed[e.id] = tensors
            elif attack == "forged_signature":
                forgers.append(
                    Forger(a, Path(tmp.name) / f"forger-{a.index}", memberships[: cfg.nodes])
                )
        adv_keys = {
            a.key.key_id: f"{attack_of[a.index]}@{a.key.key_id.hex()[:8]}" for a in adversaries
        }
        honest_keys = {s.key.key_id for s in honest}
        gated_at: dict[bytes, int | None] = {k: None for k in adv_keys}
        honest_gated: set[bytes] = set()
        round_ = 0
        for round_ in range(1, cfg.max_rounds + 1):
            for f in forgers:
                asyncio.run(f.attack(honest))
            if round_ > 1:  # the model namespace's next round: every site pushes again
                for s in honest:
                    with s.client() as c:
                        tensors = world.update(s.index, round_)
                        r = c.push(
                            ns,
                            sim._to_safetensors(tensors),
                            payload_kind="safetensors",
                            base_id=base,
                            metadata={"round": round_},
                        )
                        pushed[r.entry_id] = tensors
                for a in adversaries:
                    if a.index not in chains or gated_at[a.key.key_id] is not None:
                        continue
                    seq, prev, target = chains[a.index]
                    tensors = world.poisoned(attack_of[a.index], a.index, honest_idx, round_)
                    data = sim._to_safetensors(tensors)
                    e = _first_contribution(a.key, ns, base, data, seq + 1, prev, round_)
                    _push_signed(target, e, data)
                    pushed[e.id] = tensors
                    chains[a.index] = (seq + 1, e.id, target)
            time.sleep(round_seconds)
            views = [_gated(s) for s in honest]
            for k in adv_keys:
                if gated_at[k] is None and all(k in v for v in views):
                    gated_at[k] = round_
            for v in views:
                honest_gated |= v & honest_keys
            if log:
                done = sum(v is not None for v in gated_at.values())
                print(f"  round {round_:2d}: adversaries gated {done}/{len(adv_keys)}", file=log)
            if all(v is not None for v in gated_at.values()):
                break
        stable, last = 0, None
        for _ in range(60):
            time.sleep(round_seconds / 2)
            digests = {_trust_digest(s) for s in honest}
            for s in honest:
                honest_gated |= _gated(s) & honest_keys
            key = tuple(sorted(digests))
            stable = stable + 1 if len(digests) == 1 and key == last else 0
            last = key
            if stable >= 3:
                break
        shas, merged = {}, {}
        for s in honest:
            out = Path(tmp.name) / f"merged-{s.index}.safetensors"
            with s.client(timeout=120) as c:
                m = c.materialise(ns, out=out)
            shas[s.index] = m.output_sha256
            merged = _load(out)
        with honest[0].client() as c:
            visible = [e.id for e in c.list(ns)]
            evidence = c.status().entry_counts.get("evidence", 0)
        naive = _mean([pushed[i] for i in visible if i in pushed])
        honest_only = _mean([world.honest[i] for i in honest_idx])
        digests = {_trust_digest(s) for s in honest}
        for f in forgers:
            f.state.close()
        return sim.SimResult(
            config=cfg,
            adversaries={k.hex()[:8]: v.split("@")[0] for k, v in adv_keys.items()},
            rounds=round_,
            trust_identical=len(digests) == 1,
            sha_identical=len(set(shas.values())) == 1,
            materialised_sha256=next(iter(shas.values())) if shas else "",
            rounds_to_gate={adv_keys[k]: v for k, v in gated_at.items()},
            honest_gated=sorted(k.hex()[:8] for k in honest_gated),
            distance=sim._distance(merged, honest_only),
            distance_no_trust=sim._distance(naive, honest_only),
            evidence_entries=evidence,
            seconds=time.perf_counter() - t0,
            notes=[f"grpc: {len(honest)} daemons, round = {round_seconds:g} s"],
        )
    finally:
        for s in honest:
            s.stop()
        tmp.cleanup()


def _gated(site: Site) -> set[bytes]:
    try:
        with site.client(timeout=10) as c:
            return {bytes(s.key_id) for s in c.trust().scores if s.gated}
    except Exception:
        return set()


def _trust_digest(site: Site) -> str:
    with site.client(timeout=10) as c:
        return c.trust().digest


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}


__all__ = ["GRPC_ATTACKS", "run_grpc"]
