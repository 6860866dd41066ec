"""Gating: who is left out of a namespace, and why; revocations and successor keys.

`gate(scores, revocations, policy)` is pure: authors revoked or below the namespace's trust
threshold are excluded, each with a reason an operator can read (the Materialise reply lists
them). A revocation is a replicated entry signed by the key itself or a federation admin, or
is *automatic*: when the federation policy says so, a proven equivocation (or chain fork)
revokes its author for good; the proof is in the evidence set, so every node agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import msgpack

from crdtd.crypto.schemes import PublicKeys
from crdtd.errors import ConfigError, EvidenceError, NotMemberError
from crdtd.state.e4 import AutoRevocation
from crdtd.state.entry import DIMENSIONS, Entry, EquivocationProof, Kind
from crdtd.trust.evidence import Evidence, ProofKind, Verdict, check_proof
from crdtd.trust.scores import SCALE, TrustParams, TrustScores, compute_scores, decode_evidence

__all__ = [
    "Assessment",
    "Exclusion",
    "FederationPolicy",
    "NamespacePolicy",
    "Revocation",
    "Revocations",
    "assess",
    "auto_revocation",
    "collect_revocations",
    "gate",
]

AUTO_REVOKING_FAULTS = ("equivocation", "chain_fork")


@dataclass(frozen=True)
class NamespacePolicy:
    """Per-namespace trust settings: threshold, counted dimensions, aggregator and weighting."""

    threshold: int = SCALE // 2
    dimensions: tuple[str, ...] = DIMENSIONS
    strategy: str = "fedavg"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    trust_weighted: bool = True
    example_weighted: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= SCALE:
            raise ConfigError(f"trust threshold {self.threshold} is outside [0, {SCALE}]")
        unknown = [d for d in self.dimensions if d not in DIMENSIONS]
        if unknown or not self.dimensions:
            raise ConfigError(
                f"trust dimensions {list(self.dimensions)} must be among {DIMENSIONS}"
            )


_NS_KEYS = {"threshold", "dimensions", "strategy", "params", "trust_weighted", "example_weighted"}
_TOP_KEYS = {
    "auto_revoke_equivocation",
    "admins",
    "budget",
    "trim",
    "iterations",
    "reckless_limit",
    "model_window",
    "model_flags",
    "detect_model_outliers",
    "default",
    "namespace",
}


def _namespace_policy(raw: Mapping[str, Any], where: str) -> NamespacePolicy:
    for key in sorted(raw):
        if key not in _NS_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(_NS_KEYS))})"
            )
    kwargs: dict[str, Any] = {}
    if "threshold" in raw:
        t = raw["threshold"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1:
            raise ConfigError(f"{where}.threshold: {t!r} is not a number in [0, 1]")
        kwargs["threshold"] = int(Fraction(str(t)) * SCALE)
    if "dimensions" in raw:
        dims = raw["dimensions"]
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise ConfigError(f"{where}.dimensions: expected a list of dimension names")
        kwargs["dimensions"] = tuple(dims)
    if "strategy" in raw:
        if not isinstance(raw["strategy"], str):
            raise ConfigError(f"{where}.strategy: expected a strategy name")
        kwargs["strategy"] = raw["strategy"]
    if "params" in raw:
        if not isinstance(raw["params"], Mapping):
            raise ConfigError(f"{where}.params: expected a table")
        kwargs["strategy_params"] = dict(raw["params"])
    for flag in ("trust_weighted", "example_weighted"):
        if flag in raw:
            if not isinstance(raw[flag], bool):
                raise ConfigError(f"{where}.{flag}: expected true or false")
            kwargs[flag] = raw[flag]
    try:
        return NamespacePolicy(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class FederationPolicy:
    """Trust settings every node of a federation shares (from the `[trust]` config table).

    `namespaces` maps a namespace or a prefix ending in `/` to its policy; the longest match
    wins, else `default`. `detect_model_outliers` makes a daemon run the model-dimension
    detector (crdtd.trust.outliers) on its safetensors namespaces and publish what it flags.
    """

    default: NamespacePolicy = field(default_factory=NamespacePolicy)
    namespaces: Mapping[str, NamespacePolicy] = field(default_factory=dict)
    auto_revoke_equivocation: bool = False
    admins: frozenset[bytes] = frozenset()
    params: TrustParams = field(default_factory=TrustParams)
    detect_model_outliers: bool = False

    def for_namespace(self, namespace: str) -> NamespacePolicy:
        """The policy for `namespace`: exact match, else longest `prefix/` match, else default."""
        if namespace in self.namespaces:
            return self.namespaces[namespace]
        best = ""
        for key in self.namespaces:
            if key.endswith("/") and namespace.startswith(key) and len(key) > len(best):
                best = key
        return self.namespaces[best] if best else self.default

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "trust") -> FederationPolicy:
        """Build from a parsed TOML table; ConfigError names the bad key."""
        for key in sorted(raw):
            if key not in _TOP_KEYS:
                known = ", ".join(sorted(_TOP_KEYS))
                raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
        auto = raw.get("auto_revoke_equivocation", False)
        if not isinstance(auto, bool):
            raise ConfigError(f"{where}.auto_revoke_equivocation: expected true or false")
        detect = raw.get("detect_model_outliers", False)
        if not isinstance(detect, bool):
            raise ConfigError(f"{where}.detect_model_outliers: expected true or false")
        admins: set[bytes] = set()
        for i, text in enumerate(raw.get("admins", [])):
            try:
                kid = bytes.fromhex(text)
            except (TypeError, ValueError):
                kid = b""
            if len(kid) != 32:
                raise ConfigError(f"{where}.admins[{i}]: {text!r} is not a 64-hex-digit key id")
            admins.add(kid)
        pkw: dict[str, Any] = {}
        for key in ("budget", "iterations", "reckless_limit", "model_window", "model_flags"):
            if key in raw:
                if isinstance(raw[key], bool) or not isinstance(raw[key], int):
                    raise ConfigError(f"{where}.{key}: expected an integer")
                pkw[key] = raw[key]
        if "trim" in raw:
            try:
                pkw["trim"] = Fraction(str(raw["trim"]))
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"{where}.trim: {raw['trim']!r} is not a fraction") from None
        try:
            params = TrustParams(**pkw)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        default = _namespace_policy(raw.get("default", {}), f"{where}.default")
        spaces: dict[str, NamespacePolicy] = {}
        ns_raw = raw.get("namespace", {})
        if not isinstance(ns_raw, Mapping):
            raise ConfigError(f"{where}.namespace: expected a table of namespace tables")
        for name in sorted(ns_raw):
            spaces[name] = _namespace_policy(ns_raw[name], f"{where}.namespace.{name!r}")
        return cls(default, spaces, auto, frozenset(admins), params, detect)


# -- revocations ------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Revocation:
    """One revocation: by the key itself, an admin, or automatic on a proven fault."""

    revoked: bytes
    automatic: bool
    by: bytes
    entry_id: bytes
    successor: bytes | None = None
    reason: str = ""


@dataclass(frozen=True)
class Revocations:
    """The revoked keys and named successors (first revocation in canonical order wins)."""

    items: tuple[Revocation, ...] = ()

    @property
    def revoked(self) -> frozenset[bytes]:
        """Every revoked key id."""
        return frozenset(r.revoked for r in self.items)

    def is_revoked(self, key_id: bytes) -> bool:
        """True once any valid revocation of `key_id` is known."""
        return any(r.revoked == key_id for r in self.items)

    def first(self, key_id: bytes) -> Revocation | None:
        """The governing revocation of `key_id` (admin/self before automatic, then by id)."""
        for r in self.items:
            if r.revoked == key_id:
                return r
        return None

    def successor(self, key_id: bytes) -> bytes | None:
        """The live key that succeeds `key_id`, following chains of successors (cycle-safe);
        None when the chain names no key that is still live."""
        seen = {key_id}
        current = key_id
        while True:
            nxt = next(
                (r.successor for r in self.items if r.revoked == current and r.successor), None
            )
            if nxt is None or nxt in seen:
                return None
            if not self.is_revoked(nxt):
                return nxt
            seen.add(nxt)
            current = nxt


def collect_revocations(
    entries: Iterable[Entry],
    admins: Iterable[bytes],
    scores: TrustScores | None = None,
    auto_revoke_equivocation: bool = False,
) -> Revocations:
    """Revocations from revocation entries (signed by the key or an admin) and, when the
    policy says so, automatic ones for proven equivocators in `scores`."""
    admin_set = frozenset(admins)
    items: list[Revocation] = []
    for e in entries:
        if e.kind is not Kind.REVOCATION:
            continue
        revoked = e.body.revoked  # type: ignore[union-attr]
        if e.author != revoked and e.author not in admin_set:
            continue
        items.append(
            Revocation(
                revoked,
                False,
                e.author,
                e.id,
                e.body.successor,  # type: ignore[union-attr]
                e.body.reason,  # type: ignore[union-attr]
            )
        )
    if auto_revoke_equivocation and scores is not None:
        for subject in sorted(scores.faults):
            proven = [f for f in scores.faults[subject] if f.kind in AUTO_REVOKING_FAULTS]
            if proven:
                f = min(proven, key=lambda x: x.fault_id)
                items.append(
                    Revocation(
                        subject, True, b"", f.evidence_id, None, f"automatic: {f.describe()}"
                    )
                )
    return Revocations(tuple(sorted(set(items))))


def auto_revocation(
    entry: Entry, keys_of: Callable[[bytes], list[PublicKeys]]
) -> AutoRevocation | None:
    """The automatic revocation an evidence entry carries, for `E4State(revocation_rule=...)`.

    A proven equivocation or chain fork (checked exactly as `compute_scores` checks it, so
    the state and `assess` agree) revokes its author from the first seq the proof names:
    the cutoff is that seq − 1, the author's entries up to it stay. Pure; raises
    NotMemberError while the subject's key is unknown, so the entry is retried later.
    """
    try:
        ev = Evidence.from_entry(entry)
    except EvidenceError:
        return None
    if ev.proof_kind not in (ProofKind.EQUIVOCATION, ProofKind.CHAIN_FORK):
        return None
    keys = keys_of(ev.subject)
    if not keys:
        raise NotMemberError(
            f"entry {entry.id.hex()}: proof subject {ev.subject.hex()} is not a member known here"
        )
    finding = check_proof(ev, {ev.subject: keys[0]})
    if finding.verdict is not Verdict.PROVEN:
        return None
    if ev.proof_kind is ProofKind.EQUIVOCATION:
        first = EquivocationProof.from_bytes(ev.proof_data).a.seq
    else:
        earlier = msgpack.unpackb(ev.proof_data, raw=False)[0]
        first = Entry.from_bytes(earlier).seq
    kind = ev.proof_kind.name.lower()
    return AutoRevocation(
        ev.subject, first - 1, f"automatic: causality: {kind} (evidence {entry.id.hex()[:16]})"
    )


# -- gating -----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Exclusion:
    """An author left out of a namespace: `code` is revoked / below_threshold / not_member."""

    author: bytes
    code: str
    reason: str


def _fmt(score: int) -> str:
    return f"{score / SCALE:.3f}"


def _why_low(scores: TrustScores, author: bytes, policy: NamespacePolicy) -> str:
    faults = [
        f.describe() for f in scores.faults.get(author, ()) if f.dimension in policy.dimensions
    ]
    if faults:
        return "; ".join(faults)
    weak = sorted(policy.dimensions, key=lambda d: (scores.dimension(author, d), d))
    return ", ".join(f"{d} {_fmt(scores.dimension(author, d))}" for d in weak[:2])


def gate(
    scores: TrustScores,
    revocations: Revocations,
    policy: NamespacePolicy,
    authors: Iterable[bytes] | None = None,
) -> tuple[tuple[bytes, ...], tuple[Exclusion, ...]]:
    """(accepted authors, excluded authors with reasons), both sorted; pure.

    `authors` defaults to every scored member; an author that is not a member is excluded.
    """
    pool = sorted(set(scores.dims) if authors is None else set(authors))
    accepted: list[bytes] = []
    excluded: list[Exclusion] = []
    for a in pool:
        rev = revocations.first(a)
        if rev is not None:
            succ = revocations.successor(a)
            tail = f"; successor {succ.hex()[:16]}" if succ else ""
            who = "automatically" if rev.automatic else f"by {rev.by.hex()[:16]}"
            why = f": {rev.reason}" if rev.reason else ""
            excluded.append(Exclusion(a, "revoked", f"revoked {who}{why}{tail}"))
        elif a not in scores.dims:
            excluded.append(Exclusion(a, "not_member", "not a member of the federation"))
        else:
            s = scores.score(a, policy.dimensions)
            if s < policy.threshold:
                reason = f"trust {_fmt(s)} < threshold {_fmt(policy.threshold)} ({_why_low(scores, a, policy)})"
                excluded.append(Exclusion(a, "below_threshold", reason))
            else:
                accepted.append(a)
    return tuple(accepted), tuple(excluded)


# -- one call from a node's entries -----------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """Scores and revocations derived from one node's entries."""

    scores: TrustScores
    revocations: Revocations

    def gate(
        self, policy: NamespacePolicy, authors: Iterable[bytes] | None = None
    ) -> tuple[tuple[bytes, ...], tuple[Exclusion, ...]]:
        """`gate` with this assessment's scores and revocations."""
        return gate(self.scores, self.revocations, policy, authors)


def assess(
    entries: Iterable[Entry], keys: Mapping[bytes, PublicKeys], policy: FederationPolicy
) -> Assessment:
    """Scores and revocations from a node's entries (evidence and revocation kinds are read).

    Explicit revocations zero a key's trust; automatic ones follow from the evidence.
    """
    evidence_entries: list[Entry] = []
    revocation_entries: list[Entry] = []
    for e in entries:
        if e.kind is Kind.EVIDENCE:
            evidence_entries.append(e)
        elif e.kind is Kind.REVOCATION:
            revocation_entries.append(e)
    evidence, malformed = decode_evidence(evidence_entries)
    explicit = collect_revocations(revocation_entries, policy.admins)
    scores = compute_scores(evidence, keys, policy.params, explicit.revoked)
    revs = collect_revocations(
        revocation_entries, policy.admins, scores, policy.auto_revoke_equivocation
    )
    if revs.revoked != explicit.revoked:
        scores = compute_scores(evidence, keys, policy.params, revs.revoked)
    if malformed:
        scores = replace(scores, ignored=tuple(sorted([*scores.ignored, *malformed])))
    return Assessment(scores, revs)
