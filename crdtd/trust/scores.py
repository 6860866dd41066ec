"""The trust score function: a pure, order-independent function of the evidence set.

All arithmetic is on integers and exact fractions; a score is an integer in [0, SCALE]
(SCALE = 1,000,000 is trust 1.0). Inputs are sorted canonically, so any two nodes holding the
same evidence, members and revocations compute identical bytes. The formula (docs/trust.md):

1. **Proofs.** Each evidence entry's proof is checked (`evidence.check_proof`). A self-proving
   fault (equivocation, chain fork, signed malformed header, manifest mismatch) counts once per
   distinct fault id at full weight, from any observer. A demonstrably false proof is an
   integrity fault of its *observer*.
2. **Budget.** Subjective evidence of observer o in epoch e is taken in o's chain order
   (seq, id); each entry counts `min(|w|, what is left of B)`, B = `params.budget` weight
   units per (observer, epoch). An observer whose demand in one epoch exceeds B has flooded:
   a self-evident gossip fault (the entries are in the set for all to see).
3. **Opinions.** Counted weights become the per-observer GCounters `praise[s, d]` and
   `accusations[s, d]`, each capped at one full vote (SCALE); o's opinion of (s, d) is
   `praise − accusations` in [−SCALE, SCALE]. Evidence about oneself uses budget, counts nothing.
4. **Aggregate.** `agg(s, d)` = the β-trimmed mean of every member's opinion (silent members
   and s itself count as 0), each weighted by that member's current trust t(m): drop β of the
   trust mass from each end, average the rest (β = `params.trim`, default 1/3).
   If colluders hold at most β of the trust mass (f ≤ N/3 when honest trust is 1), every
   honest subject's aggregate lies within the range of honest opinions.
5. **Dimensions.** `dim(s, d) = max(0, min(SCALE, SCALE + agg(s, d)) − P · faults(s, d))`,
   P = `params.proven_penalty`: praise never lifts a score above 1.0. An observer that makes
   full accusations (opinion ≤ −`accusation_level`) against more than L = ⌊(N−1)/3⌋
   distinct subjects that the aggregate does not support (their agg > −`unsupported_level`
   and their trust ≥ SCALE − `unsupported_level`) is a reckless accuser: a consistency fault.
   An honest node only accuses adversaries, of which there are at most L when f < N/3.
6. **Model reports.** Observers' per-round verdicts on model contributions (evidence with a
   `MODEL_REPORT` proof) are statistical, so one round's outlier test gates nobody. A
   contribution counts as *judged* when observers holding more than half of the trust mass
   reported on it, and as an *outlier* when observers holding more than half flagged it
   (an author's verdict on its own contribution is ignored). An author is gated on the model
   dimension while at least `model_flags` (3) of its last `model_window` (5) judged
   contributions, by its own chain order, are outliers: older verdicts fall out of the
   window (decay), so an author whose updates look normal again recovers. A contribution
   flagged `ascent` (by that majority) also makes the author's previous judged contribution
   an outlier: that statistic compares the two (crdtd.trust.outliers). A contribution flagged
   `against` (a soft flag: it pointed against the others) is an outlier only when the
   author's next judged contribution is one, so a run of them ending in an outlier counts
   whole and a run that ends in normal updates counts nothing.
7. **Trust.** `t(s) = min_d dim(s, d)`, 0 when revoked. Because t weights the aggregate,
   t is the fixed point of steps 4–7, iterated from t₀ (faults only) at most
   `params.iterations` times, stopping early when t no longer changes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import msgpack

from crdtd.crypto.schemes import PublicKeys
from crdtd.errors import ConfigError, EvidenceError
from crdtd.lattice import GCounter
from crdtd.state.entry import Entry
from crdtd.trust.evidence import (
    AGAINST_FLAG,
    ASCENT_FLAG,
    DIMENSIONS,
    SOFT_FLAGS,
    WEIGHT_UNIT,
    Evidence,
    ProofKind,
    Verdict,
    check_proof,
    decode_model_report,
)

__all__ = [
    "SCALE",
    "DimensionCounters",
    "Fault",
    "TrustParams",
    "TrustScores",
    "compute_scores",
    "decode_evidence",
    "trimmed_mean",
]

SCALE = 1_000_000
"""Trust 1.0. Scores, opinions and aggregates are integers in units of 1/SCALE."""

_DIM_INDEX = {d: i for i, d in enumerate(DIMENSIONS)}


@dataclass(frozen=True)
class TrustParams:
    """Tunables of the score function (every node of a federation must use the same)."""

    budget: int = 8 * WEIGHT_UNIT
    trim: Fraction = Fraction(1, 3)
    iterations: int = 16
    proven_penalty: int = SCALE
    flood_is_fault: bool = True
    accusation_level: int = SCALE // 2
    unsupported_level: int = SCALE // 2
    reckless_limit: int | None = None
    model_window: int = 5
    model_flags: int = 3

    def __post_init__(self) -> None:
        checks = [
            ("budget", self.budget > 0),
            ("trim", 0 <= self.trim < Fraction(1, 2)),
            ("iterations", self.iterations >= 1),
            ("proven_penalty", 0 <= self.proven_penalty <= SCALE),
            ("accusation_level", 0 < self.accusation_level <= SCALE),
            ("unsupported_level", 0 < self.unsupported_level <= SCALE),
            ("reckless_limit", self.reckless_limit is None or self.reckless_limit >= 0),
            ("model_window", self.model_window >= 1),
            ("model_flags", 1 <= self.model_flags <= self.model_window),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(
                    f"trust parameter {name!r}={getattr(self, name)!r} is out of range"
                )

    def limit_for(self, members: int) -> int:
        """L: how many distinct unsupported subjects an observer may fully accuse."""
        if self.reckless_limit is not None:
            return self.reckless_limit
        return max(0, (members - 1) // 3)


@dataclass(frozen=True)
class Fault:
    """A fault that zeroes (or lowers) one dimension of `subject`, with its cause."""

    subject: bytes
    dimension: str
    kind: str
    fault_id: bytes
    evidence_id: bytes = b""
    detail: str = ""

    def describe(self) -> str:
        """One line for operators: `causality: equivocation (evidence 1a2b…)`."""
        ev = f" (evidence {self.evidence_id.hex()[:16]})" if self.evidence_id else ""
        extra = f": {self.detail}" if self.detail else ""
        return f"{self.dimension}: {self.kind}{extra}{ev}"


@dataclass(frozen=True)
class DimensionCounters:
    """GCounters derived from the evidence set for one (subject, dimension).

    `proven` counts distinct fault ids (key: fault id hex); `praise` and `accusations` hold
    each observer's budget-capped weight in score units (key: observer key id hex).
    """

    proven: GCounter = field(default_factory=GCounter)
    praise: GCounter = field(default_factory=GCounter)
    accusations: GCounter = field(default_factory=GCounter)

    def opinion(self, observer_hex: str) -> int:
        """The observer's opinion: praise − accusations, in [−SCALE, SCALE]."""
        return self.praise.counts.get(observer_hex, 0) - self.accusations.counts.get(
            observer_hex, 0
        )


@dataclass(frozen=True)
class TrustScores:
    """Scores for every member: per-dimension integers and the overall trust, plus causes."""

    dims: Mapping[bytes, tuple[int, ...]]
    trust: Mapping[bytes, int]
    faults: Mapping[bytes, tuple[Fault, ...]]
    counters: Mapping[tuple[bytes, str], DimensionCounters]
    revoked: frozenset[bytes]
    iterations: int
    converged: bool
    ignored: tuple[tuple[bytes, str], ...] = ()

    def score(self, subject: bytes, dimensions: Iterable[str] = DIMENSIONS) -> int:
        """min over `dimensions` of the subject's scores; 0 for revoked keys and non-members."""
        row = self.dims.get(subject)
        if row is None or subject in self.revoked:
            return 0
        return min(row[_DIM_INDEX[d]] for d in dimensions)

    def dimension(self, subject: bytes, dimension: str) -> int:
        """One dimension's score (0 for non-members)."""
        row = self.dims.get(subject)
        return 0 if row is None else row[_DIM_INDEX[dimension]]

    def to_bytes(self) -> bytes:
        """Canonical bytes of the trust vector: `[[subject, [dims...], trust], ...]` sorted."""
        rows = [[s, list(self.dims[s]), self.trust[s]] for s in sorted(self.dims)]
        return msgpack.packb([1, rows, sorted(self.revoked)], use_bin_type=True)

    def digest(self) -> bytes:
        """sha256 of `to_bytes()`: equal on every node holding the same evidence."""
        return hashlib.sha256(self.to_bytes()).digest()

    def as_floats(self) -> dict[str, dict[str, float]]:
        """{subject hex: {dimension: score, ..., "trust": score}} for display (not hashed)."""
        out: dict[str, dict[str, float]] = {}
        for s in sorted(self.dims):
            row = {d: self.dims[s][i] / SCALE for i, d in enumerate(DIMENSIONS)}
            row["trust"] = self.trust[s] / SCALE
            out[s.hex()] = row
        return out


# -- exact helpers ----------------------------------------------------------------------------


def _div_toward_zero(num: int, den: int) -> int:
    """num / den rounded toward zero (symmetric for accusations and praise); den > 0."""
    q = abs(num) // den
    return q if num >= 0 else -q


def trimmed_mean(points: Iterable[tuple[int, int]], trim: Fraction) -> int:
    """Weighted β-trimmed mean of (value, weight ≥ 0) pairs, exact, truncated toward zero.

    β·W of the weight mass is dropped from each end of the values sorted ascending; the
    rest is averaged by weight. 0 when the total weight is 0. Integer arithmetic only:
    weights are scaled by β's denominator so both cut points are integers.
    """
    pts = sorted(p for p in points if p[1] > 0)
    total = sum(w for _, w in pts)
    if total == 0:
        return 0
    p, q = trim.numerator, trim.denominator
    lo = p * total  # β·W in units of 1/q
    hi = q * total - lo
    num = 0
    c = 0
    for value, weight in pts:
        end = c + q * weight
        a = lo if c < lo else c
        b = hi if end > hi else end
        if b > a:
            num += (b - a) * value
        c = end
    return _div_toward_zero(num, hi - lo)


def decode_evidence(entries: Iterable[Entry]) -> tuple[list[Evidence], list[tuple[bytes, str]]]:
    """Evidence records from evidence entries, and (entry id, why) for those ignored."""
    good: list[Evidence] = []
    bad: list[tuple[bytes, str]] = []
    for entry in entries:
        try:
            good.append(Evidence.from_entry(entry))
        except EvidenceError as exc:
            bad.append((entry.id, str(exc)))
    return good, bad


# -- the score function -----------------------------------------------------------------------


@dataclass
class _Derived:
    faults: dict[bytes, dict[bytes, Fault]]
    pos: dict[tuple[bytes, str], dict[bytes, int]]
    neg: dict[tuple[bytes, str], dict[bytes, int]]
    ignored: list[tuple[bytes, str]]
    # (author, contribution id) -> observer -> (seq, flag mask): the observer's latest verdict
    verdicts: dict[tuple[bytes, bytes], dict[bytes, tuple[int, int]]] = field(default_factory=dict)


def _take_report(ev: Evidence, d: _Derived) -> None:
    """Record a model report's verdicts (evidence comes in the observer's chain order, so a
    later report, judged on a fuller cohort, replaces the observer's earlier verdict)."""
    if ev.dimension != "model" or ev.subject != ev.observer:
        d.ignored.append((ev.id, "a model report must be about its observer, on `model`"))
        return
    try:
        report = decode_model_report(ev.proof_data, f"entry {ev.id.hex()[:16]}")
    except EvidenceError as exc:
        d.ignored.append((ev.id, str(exc)))
        return
    for v in report.verdicts:
        if v.author == ev.observer:
            continue  # nobody judges its own contribution
        d.verdicts.setdefault((v.author, v.content_id), {})[ev.observer] = (v.seq, v.flags)


def _majority(
    cell: Mapping[bytes, tuple[int, int]], trust: Mapping[bytes, int], total: int, bits: int
) -> bool:
    """Whether observers holding more than half of the trust mass set any of `bits`."""
    return 2 * sum(trust.get(o, 0) for o, (_, f) in cell.items() if f & bits) > total


def model_gated(
    d: _Derived, trust: Mapping[bytes, int], params: TrustParams
) -> dict[bytes, tuple[int, int]]:
    """Authors gated by corroborated model reports: author -> (outliers, judged) in its window.

    Judged: observers holding more than half of the trust mass reported the contribution;
    outlier: observers holding more than half flagged it (soft flags aside), or flagged the
    author's next judged contribution `ascent` (a statistic of the pair), or flagged it
    `against` while that next contribution is an outlier (corroboration from the next
    round). The window is the author's last `model_window` judged contributions by seq (the
    seq most reporting mass names).
    """
    total = sum(trust.values())
    if total == 0:
        return {}
    judged: dict[bytes, list[tuple[int, bytes, bool, bool, bool]]] = defaultdict(list)
    for (author, cid), cell in sorted(d.verdicts.items()):
        reported = sum(trust.get(o, 0) for o in cell)
        if 2 * reported <= total:
            continue
        by_seq: dict[int, int] = defaultdict(int)
        for o, (seq, _) in cell.items():
            by_seq[seq] += trust.get(o, 0)
        seq = min(by_seq, key=lambda q: (-by_seq[q], q))
        judged[author].append(
            (
                seq,
                cid,
                _majority(cell, trust, total, ~SOFT_FLAGS),
                _majority(cell, trust, total, ASCENT_FLAG),
                _majority(cell, trust, total, AGAINST_FLAG),
            )
        )
    out: dict[bytes, tuple[int, int]] = {}
    for author, rows in judged.items():
        rows.sort(reverse=True)  # newest first: a contribution's successor is rows[i - 1]
        marked: list[bool] = []
        for i, (_, _, flagged, _, against) in enumerate(rows):
            after = i > 0 and (rows[i - 1][3] or (against and marked[i - 1]))
            marked.append(flagged or after)
        window = marked[: params.model_window]
        outliers = sum(window)
        if outliers >= params.model_flags:
            out[author] = (outliers, len(window))
    return out


def _derive(
    evidence: Iterable[Evidence], keys: Mapping[bytes, PublicKeys], params: TrustParams
) -> _Derived:
    """Steps 1–3: proofs, budgets and capped opinions (independent of trust)."""
    unique: dict[bytes, Evidence] = {}
    for ev in evidence:
        unique.setdefault(ev.id, ev)
    ordered = sorted(unique.values())
    faults: dict[bytes, dict[bytes, Fault]] = defaultdict(dict)
    ignored: list[tuple[bytes, str]] = []
    subjective: dict[tuple[bytes, int], list[Evidence]] = defaultdict(list)
    pos: dict[tuple[bytes, str], dict[bytes, int]] = defaultdict(dict)
    neg: dict[tuple[bytes, str], dict[bytes, int]] = defaultdict(dict)
    d = _Derived(faults, pos, neg, ignored)

    def add_fault(f: Fault) -> None:
        faults[f.subject].setdefault(f.fault_id, f)

    for ev in ordered:
        if ev.observer not in keys:
            ignored.append((ev.id, "observer is not a member"))
            continue
        if ev.subject not in keys:
            ignored.append((ev.id, "subject is not a member"))
            continue
        if ev.proof_kind is ProofKind.MODEL_REPORT:
            _take_report(ev, d)
            continue
        finding = check_proof(ev, keys)
        if finding.verdict is Verdict.PENDING:
            ignored.append((ev.id, finding.detail))
        elif finding.verdict is Verdict.FALSE:
            add_fault(Fault(ev.observer, "integrity", "false_proof", ev.id, ev.id, finding.detail))
        elif finding.verdict is Verdict.PROVEN:
            kind = ev.proof_kind.name.lower()
            add_fault(
                Fault(ev.subject, finding.dimension, kind, finding.fault_id, ev.id, finding.detail)
            )
        else:
            subjective[(ev.observer, ev.epoch)].append(ev)

    for (observer, epoch), evs in sorted(subjective.items()):
        left = params.budget
        demand = 0
        for ev in evs:  # already in (observer, seq, id) order
            demand += abs(ev.weight)
            counted = min(abs(ev.weight), left)
            left -= counted
            if ev.subject == ev.observer:
                ignored.append((ev.id, "evidence about oneself (uses budget, counts nothing)"))
                continue
            if counted == 0:
                continue
            units = counted * SCALE // WEIGHT_UNIT
            side = pos if ev.weight > 0 else neg
            cell = side[(ev.subject, ev.dimension)]
            cell[observer] = min(SCALE, cell.get(observer, 0) + units)
        if demand > params.budget and params.flood_is_fault:
            fid = hashlib.sha256(b"flood" + observer + epoch.to_bytes(8, "big")).digest()
            detail = f"demanded {demand} weight units in epoch {epoch} (budget {params.budget})"
            add_fault(Fault(observer, "gossip", "flood", fid, evs[0].id, detail))
    return d


def _counters(d: _Derived, members: list[bytes]) -> dict[tuple[bytes, str], DimensionCounters]:
    out: dict[tuple[bytes, str], DimensionCounters] = {}
    cells = set(d.pos) | set(d.neg)
    for s in members:
        for f in d.faults.get(s, {}).values():
            cells.add((s, f.dimension))
    for s, dim in sorted(cells):
        proven = {f.fault_id.hex(): 1 for f in d.faults.get(s, {}).values() if f.dimension == dim}
        praise = {o.hex(): n for o, n in d.pos.get((s, dim), {}).items()}
        accus = {o.hex(): n for o, n in d.neg.get((s, dim), {}).items()}
        out[(s, dim)] = DimensionCounters(GCounter(proven), GCounter(praise), GCounter(accus))
    return out


def compute_scores(
    evidence: Iterable[Evidence],
    keys: Mapping[bytes, PublicKeys],
    params: TrustParams | None = None,
    revoked: Iterable[bytes] = (),
) -> TrustScores:
    """Scores of every member (`keys`: key id → public keys) from an evidence set.

    Pure: the result depends only on the set, the members' keys, the revoked set and params.
    """
    params = params or TrustParams()
    members = sorted(keys)
    revoked_set = frozenset(revoked) & frozenset(members)
    d = _derive(evidence, keys, params)
    opinions: dict[tuple[bytes, str], dict[bytes, int]] = {}
    for cell in sorted(set(d.pos) | set(d.neg)):
        ops: dict[bytes, int] = {}
        for o, n in d.pos.get(cell, {}).items():
            ops[o] = ops.get(o, 0) + n
        for o, n in d.neg.get(cell, {}).items():
            ops[o] = ops.get(o, 0) - n
        opinions[cell] = {o: v for o, v in ops.items() if v != 0}
    fault_count: dict[tuple[bytes, str], int] = defaultdict(int)
    for s in members:
        for f in d.faults.get(s, {}).values():
            fault_count[(s, f.dimension)] += 1
    limit = params.limit_for(len(members))

    def evaluate(
        trust: Mapping[bytes, int],
    ) -> tuple[dict[bytes, tuple[int, ...]], dict[bytes, int], dict[bytes, list[Fault]]]:
        aggs: dict[tuple[bytes, str], int] = {}
        total = sum(trust.values())
        for cell, ops in opinions.items():
            silent = total - sum(trust[o] for o in ops)
            points = [(v, trust[o]) for o, v in ops.items()]
            points.append((0, silent))
            aggs[cell] = trimmed_mean(points, params.trim)
        unsupported: dict[bytes, set[bytes]] = defaultdict(set)
        for (s, _dim), ops in opinions.items():
            agg = aggs[(s, _dim)]
            if agg <= -params.unsupported_level or trust[s] < SCALE - params.unsupported_level:
                continue
            for o, v in ops.items():
                if v <= -params.accusation_level:
                    unsupported[o].add(s)
        reckless: dict[bytes, Fault] = {}
        for o in sorted(unsupported):
            if len(unsupported[o]) > limit:
                fid = hashlib.sha256(b"reckless" + o).digest()
                detail = f"{len(unsupported[o])} unsupported accusations (limit {limit})"
                reckless[o] = Fault(o, "consistency", "reckless_accuser", fid, b"", detail)
        derived: dict[bytes, Fault] = {}
        for a, (outliers, judged) in model_gated(d, trust, params).items():
            fid = hashlib.sha256(b"model-outliers" + a).digest()
            detail = f"{outliers} of its last {judged} judged contributions were outliers"
            derived[a] = Fault(a, "model", "model_outliers", fid, b"", detail)
        dims: dict[bytes, tuple[int, ...]] = {}
        new_trust: dict[bytes, int] = {}
        for s in members:
            row = []
            for dim in DIMENSIONS:
                agg = aggs.get((s, dim), 0)
                n_faults = fault_count.get((s, dim), 0)
                if dim == "consistency" and s in reckless:
                    n_faults += 1
                value = min(SCALE, SCALE + agg) - params.proven_penalty * n_faults
                if dim == "model" and s in derived:
                    value = 0
                row.append(max(0, value))
            dims[s] = tuple(row)
            new_trust[s] = 0 if s in revoked_set else min(row)
        extra: dict[bytes, list[Fault]] = defaultdict(list)
        for table in (reckless, derived):
            for who, f in table.items():
                extra[who].append(f)
        return dims, new_trust, extra

    trust = {m: SCALE for m in members}
    # t0: faults only (no subjective opinions yet).
    for s in members:
        worst = max((fault_count.get((s, dim), 0) for dim in DIMENSIONS), default=0)
        trust[s] = 0 if s in revoked_set else max(0, SCALE - params.proven_penalty * worst)
    converged = False
    iterations = 0
    dims: dict[bytes, tuple[int, ...]] = {}
    extra: dict[bytes, list[Fault]] = {}
    for iterations in range(1, params.iterations + 1):  # noqa: B007  (reported below)
        dims, new_trust, extra = evaluate(trust)
        if new_trust == trust:
            converged = True
            break
        trust = new_trust
    final_trust = {s: 0 if s in revoked_set else min(dims[s]) for s in members}

    all_faults: dict[bytes, tuple[Fault, ...]] = {}
    for s in members:
        fs = list(d.faults.get(s, {}).values())
        fs.extend(extra.get(s, ()))
        if fs:
            all_faults[s] = tuple(sorted(fs, key=lambda f: (f.dimension, f.kind, f.fault_id)))
    return TrustScores(
        dims=dims,
        trust=final_trust,
        faults=all_faults,
        counters=_counters(d, members),
        revoked=revoked_set,
        iterations=iterations,
        converged=converged,
        ignored=tuple(sorted(d.ignored)),
    )


def proof_kinds() -> tuple[str, ...]:
    """Names of the proof kinds evidence may carry (for docs and the CLI)."""
    return tuple(k.name.lower() for k in ProofKind)
