"""A small deterministic federation and Hypothesis strategies for the trust tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import PublicKeys
from crdtd.state.entry import DIMENSIONS, Entry, make_contribution
from crdtd.trust.evidence import (
    WEIGHT_UNIT,
    Evidence,
    ModelVerdict,
    ProofKind,
    evidence_entry,
    proof_for_bad_signature,
    proof_for_equivocation,
    proof_for_model_report,
)


def det_key(label: str) -> NodeKey:
    """A reproducible Ed25519 key (tests must not depend on fresh randomness)."""
    raw = hashlib.sha256(f"crdtd-trust-test/{label}".encode()).digest()
    return NodeKey(Ed25519PrivateKey.from_private_bytes(raw))


@dataclass
class Fed:
    """N member keys, chained evidence builders and ready-made proofs."""

    n: int
    keys: list[NodeKey] = field(default_factory=list)
    _links: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = [det_key(f"node-{i}") for i in range(self.n)]

    @property
    def members(self) -> dict[bytes, PublicKeys]:
        return {k.key_id: k.public_keys for k in self.keys}

    def kid(self, i: int) -> bytes:
        return self.keys[i].key_id

    def entry(
        self, observer: int, subject: int, dimension: str, weight: int, epoch: int = 0, **kw: object
    ) -> Entry:
        """The observer's next evidence entry in its chain."""
        k = self.keys[observer]
        seq, prev = self._links.get(k.key_id, (0, None))
        e = evidence_entry(
            k,
            seq + 1,
            prev,
            self.kid(subject),
            dimension,
            weight,
            epoch=epoch,
            **kw,  # type: ignore[arg-type]
        )
        self._links[k.key_id] = (e.seq, e.id)
        return e

    def ev(self, *args: object, **kw: object) -> Evidence:
        return Evidence.from_entry(self.entry(*args, **kw))  # type: ignore[arg-type]

    def equivocation_pair(self, who: int) -> tuple[Entry, Entry]:
        k = self.keys[who]
        a = make_contribution(k, 1, None, "model/x", b"\x01" * 32, 10)
        b = make_contribution(k, 1, None, "model/x", b"\x02" * 32, 10)
        return a, b

    def equivocation(self, observer: int, who: int) -> Evidence:
        a, b = self.equivocation_pair(who)
        return self.ev(
            observer,
            who,
            "causality",
            -WEIGHT_UNIT,
            proof_kind=ProofKind.EQUIVOCATION,
            proof_data=proof_for_equivocation(a, b),
        )

    def report(
        self, observer: int, round_: int, flagged: set[int], judged: range | list[int]
    ) -> Evidence:
        """The observer's model report on round `round_`: a verdict on contribution
        `cid(author, round_)` (seq = round) of every author in `judged`."""
        verdicts = [
            ModelVerdict(self.kid(a), self.cid(a, round_), round_, 1 if a in flagged else 0)
            for a in judged
        ]
        return self.ev(
            observer,
            observer,
            "model",
            0,
            proof_kind=ProofKind.MODEL_REPORT,
            proof_data=proof_for_model_report("model/x", round_, verdicts),
        )

    def cid(self, author: int, round_: int) -> bytes:
        """A stand-in content id for `author`'s contribution to round `round_`."""
        return hashlib.sha256(b"c/%d/%d" % (author, round_)).digest()

    def false_bad_signature(self, observer: int, victim: int) -> Evidence:
        """A 'bad signature' accusation carrying an entry that actually verifies."""
        good = make_contribution(self.keys[victim], 1, None, "model/x", b"\x03" * 32, 10)
        return self.ev(
            observer,
            victim,
            "integrity",
            -WEIGHT_UNIT,
            proof_kind=ProofKind.BAD_SIGNATURE,
            proof_data=proof_for_bad_signature(good.to_bytes()),
        )


FED = Fed(7)
"""Shared by property tests: building keys once keeps examples fast."""

_weights = st.sampled_from(
    [-WEIGHT_UNIT * 5, -WEIGHT_UNIT, -400, -1, 1, 250, WEIGHT_UNIT, 3 * WEIGHT_UNIT]
)
observations = st.tuples(
    st.integers(0, FED.n - 1),
    st.integers(0, FED.n - 1),
    st.sampled_from(DIMENSIONS),
    _weights,
    st.integers(0, 2),
)
"""(observer, subject, dimension, weight, epoch) of one subjective observation."""


def build_evidence(obs: list[tuple[int, int, str, int, int]], proofs: list[int]) -> list[Evidence]:
    """Signed evidence for `obs` (each observer's chain in list order) plus chosen proofs.

    `proofs` picks from: 0 = node 0 proves node 1 equivocated (observed by node 2),
    1 = node 3 falsely accuses node 4 with a valid entry as 'bad signature'.
    """
    fed = Fed(FED.n)
    fed.keys = FED.keys
    out = [fed.ev(o, s, d, w, epoch=e) for o, s, d, w, e in obs]
    if 0 in proofs:
        out.append(fed.equivocation(2, 1))
    if 1 in proofs:
        out.append(fed.false_bad_signature(3, 4))
    return out
