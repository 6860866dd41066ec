"""Evidence about peers: what was observed, on which dimension, and how it can be checked.

An evidence entry (H5's `Kind.EVIDENCE`) carries `subject`, `dimension`, `weight`, `reason`
and `proof` bytes. `proof` is a canonical msgpack envelope `[1, epoch, kind, data]`: the
observer's logical epoch (its budget period, never a wall clock) and a proof object. The one
exception is an equivocation, carried as a bare `EquivocationProof` so that crdtd.state
verifies it on arrival and quarantines both headers on every node.

Proof kinds and what every node can check from the bytes alone:

- `EQUIVOCATION` (causality): two headers signed by the subject with one seq. Self-proving.
- `CHAIN_FORK` (causality): signed entries at seq k and k+1 whose `prev` skips the first.
- `SIGNED_MALFORMED` (integrity): a v1 header the subject signed that does not decode.
- `MANIFEST_MISMATCH` (integrity): a contribution the subject signed, plus the manifest its
  payload digest names (and optionally one chunk of it), whose sizes contradict the header.
- `BAD_SIGNATURE` (integrity): the wire bytes of an entry whose signature fails, which the
  subject (a peer) relayed. The bytes are checkable, the attribution is the observer's word:
  anyone can write any author into a header, so a bad signature proves nothing against the
  named author. It therefore counts as *subjective* evidence against the relaying peer.
- `NONE`: purely subjective (timeouts, withholding, replay, praise).
- `MODEL_REPORT` (model): an observer's verdict on one cohort of a model namespace (one
  round): for every contribution it judged, the author, the contribution id, its seq in the
  author's chain and whether it looked like an outlier. The subject is the observer itself;
  the verdicts are statistical, so they only count where observers holding half the trust
  mass agree, and only over an author's last few judged contributions (crdtd.trust.scores).

A proof that every node can see is false (a "bad" signature that verifies, a "fork" that is
not one) convicts the *observer* instead: it signed a demonstrably false accusation.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519, PublicKeys, SignaturePolicy, verify_ed25519
from crdtd.errors import EvidenceError, MalformedEntryError, MalformedManifestError, SignatureError
from crdtd.state.entry import (
    DIMENSIONS,
    MAX_PROOF_BYTES,
    SIGNING_DOMAIN,
    Entry,
    EquivocationProof,
    Kind,
    Signature,
    make_evidence,
)
from crdtd.store.chunks import Manifest, chunk_digest

__all__ = [
    "AGAINST_FLAG",
    "ASCENT_FLAG",
    "DIMENSIONS",
    "ENVELOPE_VERSION",
    "SOFT_FLAGS",
    "WEIGHT_UNIT",
    "Evidence",
    "Finding",
    "ModelReport",
    "ModelVerdict",
    "ProofKind",
    "Verdict",
    "check_proof",
    "decode_envelope",
    "decode_model_report",
    "encode_envelope",
    "evidence_entry",
    "proof_for_bad_signature",
    "proof_for_chain_fork",
    "proof_for_equivocation",
    "proof_for_manifest_mismatch",
    "proof_for_model_report",
    "proof_for_signed_malformed",
]

ENVELOPE_VERSION = 1
WEIGHT_UNIT = 1000
"""Evidence weight of one full vote: weight -1000 is a full accusation, +1000 full praise."""

MAX_EPOCH = 2**62

ASCENT_FLAG = 8
"""The verdict flag bit of an `ascent` outlier (crdtd.trust.outliers): its statistic compares
an author's update with its previous one, so crdtd.trust.scores counts both as flagged."""

AGAINST_FLAG = 16
"""The verdict flag bit of an `against` contribution (crdtd.trust.outliers): a weak sign on its
own, so crdtd.trust.scores never counts it alone, only when the author's next judged
contribution counts as an outlier (a run of them before an outlier counts whole)."""

SOFT_FLAGS = AGAINST_FLAG
"""Verdict bits that are not outlier flags by themselves."""


class ProofKind(IntEnum):
    """What the `data` of a proof envelope holds (the integer is what the envelope stores)."""

    NONE = 0
    EQUIVOCATION = 1
    CHAIN_FORK = 2
    SIGNED_MALFORMED = 3
    MANIFEST_MISMATCH = 4
    BAD_SIGNATURE = 5
    MODEL_REPORT = 6


PROVEN_DIMENSION: dict[ProofKind, str] = {
    ProofKind.EQUIVOCATION: "causality",
    ProofKind.CHAIN_FORK: "causality",
    ProofKind.SIGNED_MALFORMED: "integrity",
    ProofKind.MANIFEST_MISMATCH: "integrity",
}
"""The dimension a self-proving proof convicts its subject on (whatever the entry says)."""


@dataclass(frozen=True)
class Observation:
    """One accusation (or praise) to sign as evidence: about whom, on which dimension, how
    much, why, and the proof bytes when it is self-proving (see `evidence_entry`)."""

    subject: bytes
    dimension: str
    weight: int
    reason: str
    kind: ProofKind = ProofKind.NONE
    data: bytes = b""

    @property
    def self_proving(self) -> bool:
        return self.kind in PROVEN_DIMENSION


class Verdict(IntEnum):
    """What checking a proof established."""

    SUBJECTIVE = 0  # no proof, or a checked proof whose attribution is the observer's word
    PROVEN = 1  # self-proving fault of the subject: full weight from any observer
    FALSE = 2  # the proof is demonstrably false: a fault of the observer
    PENDING = 3  # cannot be checked yet (the subject's key is not known here): ignored


# -- the envelope -----------------------------------------------------------------------------


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def encode_envelope(epoch: int, kind: ProofKind = ProofKind.NONE, data: bytes = b"") -> bytes:
    """Canonical proof bytes `[1, epoch, kind, data]` for an evidence entry."""
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise EvidenceError(f"evidence epoch {epoch!r} is not an integer in [0, {MAX_EPOCH}]")
    out = _pack([ENVELOPE_VERSION, epoch, int(kind), bytes(data)])
    if len(out) > MAX_PROOF_BYTES:
        raise EvidenceError(
            f"evidence proof of {len(out)} bytes exceeds the {MAX_PROOF_BYTES}-byte limit"
        )
    return out


def decode_envelope(proof: bytes, where: str = "evidence") -> tuple[int, ProofKind, bytes]:
    """(epoch, kind, data) from proof bytes; empty bytes mean epoch 0 with no proof.

    A bare `EquivocationProof` (the form crdtd.state quarantines on) is epoch 0, kind
    EQUIVOCATION. Raises EvidenceError naming `where` for anything else but a canonical v1
    envelope.
    """
    if proof == b"":
        return 0, ProofKind.NONE, b""
    if _is_bare_equivocation(proof):
        return 0, ProofKind.EQUIVOCATION, proof
    try:
        obj = msgpack.unpackb(proof, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise EvidenceError(f"{where}: proof is not msgpack ({type(exc).__name__})") from None
    ok = (
        type(obj) is list
        and len(obj) == 4
        and obj[0] == ENVELOPE_VERSION
        and type(obj[1]) is int
        and 0 <= obj[1] <= MAX_EPOCH
        and type(obj[2]) is int
        and type(obj[3]) is bytes
    )
    if not ok:
        raise EvidenceError(f"{where}: proof is not [1, epoch, kind, data]")
    try:
        kind = ProofKind(obj[2])
    except ValueError:
        raise EvidenceError(f"{where}: unknown proof kind {obj[2]}") from None
    if _pack(obj) != proof:
        raise EvidenceError(f"{where}: proof envelope is not canonical msgpack")
    return obj[1], kind, obj[3]


def _is_bare_equivocation(proof: bytes) -> bool:
    try:
        EquivocationProof.from_bytes(proof)
    except MalformedEntryError:
        return False
    return True


# -- the evidence record ----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Evidence:
    """One observation, decoded from an evidence entry (fields in canonical sort order)."""

    observer: bytes
    seq: int
    id: bytes
    subject: bytes
    dimension: str
    weight: int
    epoch: int
    proof_kind: ProofKind = ProofKind.NONE
    proof_data: bytes = b""
    reason: str = ""

    @classmethod
    def from_entry(cls, entry: Entry) -> Evidence:
        """Decode an evidence entry; EvidenceError names the entry when it is not one."""
        where = f"entry {entry.id.hex()[:16]}"
        if entry.kind is not Kind.EVIDENCE:
            raise EvidenceError(f"{where}: is a {entry.kind.name.lower()} entry, not evidence")
        body = entry.body
        epoch, kind, data = decode_envelope(body.proof, where)  # type: ignore[union-attr]
        return cls(
            observer=entry.author,
            seq=entry.seq,
            id=entry.id,
            subject=body.subject,  # type: ignore[union-attr]
            dimension=body.dimension,  # type: ignore[union-attr]
            weight=body.weight,  # type: ignore[union-attr]
            epoch=epoch,
            proof_kind=kind,
            proof_data=data,
            reason=body.reason,  # type: ignore[union-attr]
        )

    @property
    def self_proving(self) -> bool:
        """True when the proof kind, if it checks out, convicts the subject at full weight."""
        return self.proof_kind in PROVEN_DIMENSION


def evidence_entry(
    key: NodeKey,
    seq: int,
    prev: bytes | None,
    subject: bytes,
    dimension: str,
    weight: int,
    *,
    epoch: int,
    proof_kind: ProofKind = ProofKind.NONE,
    proof_data: bytes = b"",
    reason: str = "",
    policy: SignaturePolicy | str | None = None,
) -> Entry:
    """A signed evidence entry whose proof envelope carries `epoch` and the proof object."""
    if dimension not in DIMENSIONS:
        raise EvidenceError(f"evidence dimension {dimension!r} is not one of {DIMENSIONS}")
    if proof_kind in PROVEN_DIMENSION and PROVEN_DIMENSION[proof_kind] != dimension:
        raise EvidenceError(
            f"a {proof_kind.name.lower()} proof belongs to dimension "
            f"{PROVEN_DIMENSION[proof_kind]!r}, not {dimension!r}"
        )
    if proof_kind is ProofKind.EQUIVOCATION:
        proof = bytes(proof_data)  # bare, so crdtd.state verifies it and quarantines both headers
    else:
        proof = encode_envelope(epoch, proof_kind, proof_data)
    return make_evidence(
        key, seq, prev, subject, dimension, weight, reason=reason, proof=proof, policy=policy
    )


# -- proof builders ---------------------------------------------------------------------------


def proof_for_equivocation(a: Entry, b: Entry) -> bytes:
    """Proof data for two entries with one author and seq (EvidenceError if they are not)."""
    proof = EquivocationProof.detect(a, b)
    if proof is None:
        raise EvidenceError(
            f"entries {a.id.hex()[:16]} and {b.id.hex()[:16]} are not an equivocation"
        )
    return EquivocationProof(proof.a, proof.b, None).to_bytes()


def proof_for_chain_fork(earlier: Entry, later: Entry) -> bytes:
    """Proof data for an entry at seq k+1 whose prev is not the author's entry at seq k."""
    if earlier.author != later.author or later.seq != earlier.seq + 1 or later.prev == earlier.id:
        raise EvidenceError(
            f"entries {earlier.id.hex()[:16]} and {later.id.hex()[:16]} are not a chain fork"
        )
    return _pack([earlier.to_bytes(), later.to_bytes()])


def proof_for_signed_malformed(header: bytes, ed25519_signature: bytes) -> bytes:
    """Proof data for a header the subject signed that does not decode as a v1 entry."""
    return _pack([bytes(header), bytes(ed25519_signature)])


def proof_for_manifest_mismatch(
    entry: Entry, manifest: Manifest, chunk: bytes | None = None
) -> bytes:
    """Proof data for a signed contribution whose manifest (or one chunk) contradicts it."""
    return _pack([entry.to_bytes(), manifest.to_bytes(), chunk])


def proof_for_bad_signature(wire: bytes) -> bytes:
    """Proof data for an entry (wire bytes) whose signature fails, as a peer relayed it."""
    return bytes(wire)


@dataclass(frozen=True, order=True)
class ModelVerdict:
    """One judged contribution in a model report: author, contribution id, its seq in the
    author's chain, and the outlier flags raised (a bit mask; 0 = looked normal)."""

    author: bytes
    content_id: bytes
    seq: int
    flags: int

    @property
    def outlier(self) -> bool:
        """True when a flag other than a soft one was raised."""
        return self.flags & ~SOFT_FLAGS != 0


@dataclass(frozen=True)
class ModelReport:
    """An observer's verdicts on one cohort (`round`) of `namespace`."""

    namespace: str
    round: int
    verdicts: tuple[ModelVerdict, ...]


def proof_for_model_report(namespace: str, round_: int, verdicts: list[ModelVerdict]) -> bytes:
    """Proof data for a model report: `[namespace, round, [[author, id, seq, flags], ...]]`,
    verdicts in content-id order."""
    rows = sorted({v.content_id: v for v in verdicts}.values(), key=lambda v: v.content_id)
    return _pack([namespace, round_, [[v.author, v.content_id, v.seq, v.flags] for v in rows]])


def decode_model_report(data: bytes, where: str = "model report") -> ModelReport:
    """The report in proof data; EvidenceError names what is malformed."""
    obj = _decode_pair(data, 3)
    if obj is None or type(obj[0]) is not str or type(obj[1]) is not int or obj[1] < 0:
        raise EvidenceError(f"{where}: not [namespace, round, verdicts]")
    if type(obj[2]) is not list:
        raise EvidenceError(f"{where}: verdicts are not a list")
    out = []
    for row in obj[2]:
        ok = (
            type(row) is list
            and len(row) == 4
            and type(row[0]) is bytes
            and len(row[0]) == 32
            and type(row[1]) is bytes
            and len(row[1]) == 32
            and type(row[2]) is int
            and 0 <= row[2] < 2**63
            and type(row[3]) is int
            and 0 <= row[3] < 2**16
        )
        if not ok:
            raise EvidenceError(f"{where}: a verdict is not [author, id, seq, flags]")
        out.append(ModelVerdict(row[0], row[1], row[2], row[3]))
    ids = [v.content_id for v in out]
    if ids != sorted(set(ids)):
        raise EvidenceError(f"{where}: verdicts are not in content-id order, once each")
    return ModelReport(obj[0], obj[1], tuple(out))


# -- checking proofs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """The result of checking one piece of evidence."""

    verdict: Verdict
    fault_id: bytes = b""
    dimension: str = ""
    detail: str = ""


def _fault_id(tag: bytes, *ids: bytes) -> bytes:
    return hashlib.sha256(tag + b"".join(sorted(ids))).digest()


def check_proof(ev: Evidence, keys: Mapping[bytes, PublicKeys]) -> Finding:
    """Check `ev`'s proof against the members' public `keys` (pure; cached by content).

    PROVEN carries a fault id (equal for every report of the same fault) and the dimension.
    """
    if ev.proof_kind is ProofKind.NONE:
        return Finding(Verdict.SUBJECTIVE, detail="no proof")
    if ev.proof_kind is ProofKind.MODEL_REPORT:
        return Finding(Verdict.SUBJECTIVE, detail="statistical model report")
    if ev.proof_kind is ProofKind.BAD_SIGNATURE:
        author = _claimed_author(ev.proof_data)
        pk = keys.get(author) if author is not None else None
        public = None if pk is None else pk.ed25519
        key = _cache_key(ev.proof_kind, ev.proof_data, b"", public)
        found = _CACHE.get(key)
        if found is None:
            found = _check_bad_signature(ev.proof_data, public)
    else:
        subject_key = keys.get(ev.subject)
        if subject_key is None:
            return Finding(Verdict.PENDING, detail="subject's public key is not known here")
        key = _cache_key(ev.proof_kind, ev.proof_data, ev.subject, subject_key.ed25519)
        found = _CACHE.get(key)
        if found is None:
            found = _check_self_proving(
                ev.proof_kind, ev.proof_data, ev.subject, subject_key.ed25519
            )
    _CACHE[key] = found
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return found


_CACHE: OrderedDict[bytes, Finding] = OrderedDict()
_CACHE_SIZE = 16384
"""Verdicts by content digest: a pure function's memo (bounded; proof bytes are not kept)."""


def _cache_key(kind: ProofKind, data: bytes, subject: bytes, public: bytes | None) -> bytes:
    h = hashlib.sha256(bytes([int(kind)]) + subject + (public or b"-"))
    h.update(data)
    return h.digest()


def _claimed_author(wire: bytes) -> bytes | None:
    try:
        return Entry.from_bytes(wire).author
    except MalformedEntryError:
        return None


def _check_bad_signature(wire: bytes, author_public: bytes | None) -> Finding:
    try:
        entry = Entry.from_bytes(wire)
    except MalformedEntryError as exc:
        return Finding(Verdict.SUBJECTIVE, detail=f"relayed malformed entry: {exc}")
    if author_public is None:
        return Finding(Verdict.SUBJECTIVE, detail="relayed an entry by a non-member")
    try:
        entry.verify_signatures(PublicKeys(author_public))
    except SignatureError as exc:
        return Finding(Verdict.SUBJECTIVE, detail=f"relayed a forged entry: {exc}")
    return Finding(Verdict.FALSE, detail=f"claimed bad signature verifies ({entry.id.hex()[:16]})")


def _signed_by(entry: Entry, public: bytes) -> bool:
    sig = entry.signature(ED25519)
    return sig is not None and verify_ed25519(public, entry.signing_message, sig)


def _decode_pair(data: bytes, n: int) -> list[Any] | None:
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception:
        return None
    if type(obj) is not list or len(obj) != n or _pack(obj) != data:
        return None
    return obj


def _check_self_proving(kind: ProofKind, data: bytes, subject: bytes, public: bytes) -> Finding:
    dim = PROVEN_DIMENSION[kind]
    false = Verdict.FALSE
    if kind is ProofKind.EQUIVOCATION:
        try:
            proof = EquivocationProof.from_bytes(data)
        except MalformedEntryError as exc:
            return Finding(false, detail=f"equivocation proof malformed: {exc}")
        if proof.author != subject:
            return Finding(false, detail="equivocation proof is about another author")
        if not proof.is_valid(public):
            return Finding(false, detail="equivocation proof does not verify")
        return Finding(Verdict.PROVEN, _fault_id(b"equivocation", proof.a.id, proof.b.id), dim)
    if kind is ProofKind.CHAIN_FORK:
        pair = _decode_pair(data, 2)
        if pair is None or not all(type(x) is bytes for x in pair):
            return Finding(false, detail="chain-fork proof is not [entry, entry]")
        try:
            a, b = Entry.from_bytes(pair[0]), Entry.from_bytes(pair[1])
        except MalformedEntryError as exc:
            return Finding(false, detail=f"chain-fork proof malformed: {exc}")
        forked = a.author == b.author == subject and b.seq == a.seq + 1 and b.prev != a.id
        if not forked or not (_signed_by(a, public) and _signed_by(b, public)):
            return Finding(false, detail="chain-fork proof does not show a signed fork")
        return Finding(Verdict.PROVEN, _fault_id(b"fork", a.id, b.id), dim)
    if kind is ProofKind.SIGNED_MALFORMED:
        pair = _decode_pair(data, 2)
        if pair is None or not all(type(x) is bytes for x in pair):
            return Finding(false, detail="signed-malformed proof is not [header, signature]")
        header, sig = pair
        if not verify_ed25519(public, SIGNING_DOMAIN + header, sig):
            return Finding(false, detail="the subject did not sign this header")
        if not _is_v1_array(header):
            return Finding(Verdict.PENDING, detail="header is not a v1 array (newer format?)")
        try:
            Entry.from_parts(header, [Signature(ED25519, sig)])
        except MalformedEntryError as exc:
            return Finding(
                Verdict.PROVEN,
                _fault_id(b"malformed", hashlib.sha256(header).digest()),
                dim,
                str(exc),
            )
        return Finding(false, detail="the signed header is well formed")
    if kind is ProofKind.MANIFEST_MISMATCH:
        return _check_manifest_mismatch(data, subject, public, dim)
    raise AssertionError(f"unhandled proof kind {kind!r}")  # pragma: no cover


def _is_v1_array(header: bytes) -> bool:
    try:
        obj = msgpack.unpackb(header, raw=False, use_list=True, strict_map_key=True)
    except Exception:
        return True  # not even msgpack: malformed under every version
    return type(obj) is list and len(obj) >= 1 and obj[0] == 1


def _check_manifest_mismatch(data: bytes, subject: bytes, public: bytes, dim: str) -> Finding:
    false = Verdict.FALSE
    triple = _decode_pair(data, 3)
    if triple is None or type(triple[0]) is not bytes or type(triple[1]) is not bytes:
        return Finding(false, detail="manifest proof is not [entry, manifest, chunk|nil]")
    if triple[2] is not None and type(triple[2]) is not bytes:
        return Finding(false, detail="manifest proof chunk is not bytes")
    try:
        entry = Entry.from_bytes(triple[0])
        manifest = Manifest.from_bytes(triple[1])
    except (MalformedEntryError, MalformedManifestError) as exc:
        return Finding(false, detail=f"manifest proof malformed: {exc}")
    if entry.kind is not Kind.CONTRIBUTION or entry.author != subject:
        return Finding(false, detail="manifest proof entry is not the subject's contribution")
    if not _signed_by(entry, public):
        return Finding(false, detail="manifest proof entry is not signed by the subject")
    if manifest.digest != entry.payload_digest:
        return Finding(false, detail="manifest is not the one the payload digest names")
    fault = _fault_id(b"manifest", entry.id)
    if manifest.size != entry.payload_size:
        return Finding(
            Verdict.PROVEN,
            fault,
            dim,
            f"manifest size {manifest.size} != signed size {entry.payload_size}",
        )
    chunk = triple[2]
    if chunk is not None:
        digest = chunk_digest(chunk)
        for ref in manifest.chunks:
            if ref.digest == digest and ref.size != len(chunk):
                return Finding(
                    Verdict.PROVEN, fault, dim, f"chunk {digest.hex()[:16]} size mismatch"
                )
    return Finding(false, detail="manifest and chunk agree with the signed header")
