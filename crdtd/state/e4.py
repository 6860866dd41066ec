"""E4State = Data × Trust × Clock × Hash over a NodeStore, and the validation every entry passes.

`apply` checks an entry completely (signature under the federation policy, membership,
revocation, kind rules, sizes, seq/prev chain, payload complete and digest-verified) before it
writes anything, then commits it in one durable transaction; a failed check raises a typed
`ValidationError` and leaves the state exactly as it was. The accepted set is a function of the
entries offered, not of their order (see docs/store.md, "Order independence"):

- an entry whose `prev` is not yet held is *held* (durably, outside the set) and enters the set
  in the transaction that accepts its predecessor;
- a removal takes effect on a target whenever both are present, in either order; a target that
  arrives after its removal is recorded as a tombstone and its payload is never stored;
- a revocation purges the revoked key's entries above its cutoff (the self-revocation's own seq,
  or 0 when the admin revokes) and refuses them afterwards;
- a second header for the same author and seq raises EquivocationError carrying the proof; an
  evidence entry carrying a verified proof quarantines both headers on every node;
- with a `revocation_rule` (the federation's `auto_revoke_equivocation`), an evidence entry whose
  self-proving proof convicts an author revokes that author from the proof's first seq on,
  exactly like an entry-borne revocation (docs/store.md, "Automatic revocation").
"""

from __future__ import annotations

import enum
import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crdtd.crypto import verifier
from crdtd.crypto.schemes import ED25519, ED25519_ONLY, PublicKeys, SignaturePolicy
from crdtd.errors import (
    ChainError,
    ConfigError,
    DigestMismatchError,
    EquivocationError,
    MalformedEntryError,
    MissingPayloadError,
    NotFoundError,
    NotMemberError,
    OversizedPayloadError,
    RevokedKeyError,
    SignatureError,
    TruncatedPayloadError,
    UnauthorizedError,
    ValidationError,
)
from crdtd.state.bulk import apply_run
from crdtd.state.entry import Entry, EquivocationProof, Kind, chain_next
from crdtd.store import sqlite as db
from crdtd.store.chunks import Manifest, chunk_digest
from crdtd.store.store import NodeStore, PayloadSource

DEFAULT_MAX_PAYLOAD = 64 * 1024**3
DEFAULT_MAX_HELD = 100_000
VERIFIED_REMEMBERED = 131_072
"""Signature checks remembered: a session verifies on arrival, then applies in batches, and
entries held for their predecessor are validated again when it arrives, possibly in the next
session (two sessions' worth: 2 x max_entries_per_session)."""
_ERASABLE = (int(Kind.CONTRIBUTION), int(Kind.EVIDENCE))
_KEEPS_LOOKUPS = (Kind.CONTRIBUTION, Kind.REMOVAL)
"""Kinds whose apply changes no member key, revocation or quarantine: the per-batch lookups
(`_keys_of`, `_cutoff`, and the yes/no flags) stay valid across them."""
JOIN_ORDER = {
    Kind.MEMBERSHIP: 0,
    Kind.REVOCATION: 1,
    Kind.REMOVAL: 2,
    Kind.EVIDENCE: 3,
    Kind.CONTRIBUTION: 4,
}
"""Apply order of entries that arrive together: who may sign first, then what erases, then the
rest (sync's transfers and `apply_until_stable` sort by it)."""


class ApplyStatus(enum.Enum):
    """What `apply` did with an entry."""

    APPLIED = "applied"  # in the set and (for a contribution) visible
    TOMBSTONED = "tombstoned"  # in the set as an erased id; its payload is not stored
    HELD = "held"  # valid, waiting for its predecessor; not yet in the set
    DUPLICATE = "duplicate"  # already in the set (or already held): nothing changed


@dataclass(frozen=True)
class AutoRevocation:
    """A key an evidence entry's proof revokes: entries above `cutoff` are dropped and refused."""

    key_id: bytes
    cutoff: int
    reason: str = ""


LatestOnly = Callable[[str], bool]
"""Says whether a namespace keeps one live contribution per author (its newest by seq, per
metadata `role`); every replica of a federation must answer alike (it is namespace config
the federation shares, like the trust policy)."""

RevocationRule = Callable[[Entry, Callable[[bytes], list[PublicKeys]]], AutoRevocation | None]
"""Decides, from an evidence entry and a key lookup, whether it revokes a key automatically.

Must be a pure function of its arguments (every replica must decide alike); raises
NotMemberError when the proof's subject is not known yet, so the entry is retried later.
`crdtd.trust.gating.auto_revocation` is the federation's rule."""


class VerifiedSignatures:
    """Signature checks that passed, remembered so that one entry is verified once.

    Keyed by the entry id, its signature bytes, the public keys and the policy: a result is
    reused only for exactly the same bytes under exactly the same keys (a forged signature on
    a known header is a different key, and is verified). Bounded, oldest forgotten first;
    thread-safe (sessions verify in worker threads).
    """

    def __init__(self, limit: int = VERIFIED_REMEMBERED) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[object, ...], None] = OrderedDict()
        self._lock = threading.Lock()

    def verify_all(
        self, pairs: Sequence[tuple[Entry, Sequence[PublicKeys]]], policy: SignaturePolicy
    ) -> None:
        """Check many entries ahead, each against its candidate keys, with the Ed25519 math in
        worker processes (`crdtd.crypto.verifier`: the library holds the GIL, so threads do
        not run it side by side); what passes is remembered. Raises nothing: `verify` later
        answers from memory, or checks again (and raises) what did not pass."""
        todo: list[tuple[Entry, PublicKeys]] = []
        triples: list[tuple[bytes, bytes, bytes]] = []
        with self._lock:
            for e, candidates in pairs:
                if any((e.id, e.signatures, k, policy) in self._seen for k in candidates):
                    continue
                sig = e.signature(ED25519)
                for keys in candidates:
                    if sig is not None and keys.key_id == e.author:
                        todo.append((e, keys))
                        triples.append((keys.ed25519, e.signing_message, sig))
        for (e, keys), ok in zip(todo, verifier.shared().verify_many(triples)):
            if not ok:
                continue
            try:
                e.verify_signatures(keys, policy, ed25519_verified=True)
            except SignatureError:
                continue
            self._remember((e.id, e.signatures, keys, policy))

    def _remember(self, key: tuple[object, ...]) -> None:
        with self._lock:
            self._seen[key] = None
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)

    def verify(self, e: Entry, keys: PublicKeys, policy: SignaturePolicy) -> None:
        """`e.verify_signatures(keys, policy)`, skipped when it passed before."""
        key = (e.id, e.signatures, keys, policy)
        with self._lock:
            if key in self._seen:
                return
        e.verify_signatures(keys, policy)
        self._remember(key)


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of one `apply`: the entry's status and any held entries it let in."""

    entry_id: bytes
    status: ApplyStatus
    released: tuple[bytes, ...] = ()


class E4State:
    """The node state over one NodeStore; `admin` is the federation admin's public keys."""

    def __init__(
        self,
        store: NodeStore,
        admin: PublicKeys,
        policy: SignaturePolicy | str = ED25519_ONLY,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD,
        max_held: int = DEFAULT_MAX_HELD,
        revocation_rule: RevocationRule | None = None,
        latest_only: LatestOnly | None = None,
    ) -> None:
        self.store = store
        self.admin = admin
        self.policy = SignaturePolicy.coerce(policy)
        self.max_payload_size = max_payload_size
        self.max_held = max_held
        self.revocation_rule = revocation_rule
        self.latest_only = latest_only
        self.signatures = VerifiedSignatures()
        self.bulk = True
        """Apply runs of contributions with per-run lookups and one write per table
        (`crdtd.state.bulk`); False applies every entry the one-at-a-time way (the
        reference the property tests compare against)."""
        self._entered: list[bytes] = []
        self._roster_version = 0
        self._roster: dict[bool, tuple[int, dict[bytes, PublicKeys]]] = {}
        self._lookups: dict[tuple[str, bytes], object] | None = None
        _bind_federation(store, admin, self.policy)

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        admin: PublicKeys | None = None,
        policy: SignaturePolicy | str | None = None,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD,
        revocation_rule: RevocationRule | None = None,
        latest_only: LatestOnly | None = None,
    ) -> E4State:
        """Open the state in `data_dir`; `admin`/`policy` default to what the store recorded."""
        store = NodeStore.open(data_dir)
        try:
            stored_admin, stored_policy = federation_of(store)
            admin = admin or stored_admin
            if admin is None:
                raise ConfigError(f"{data_dir}: new store needs the federation admin public key")
            pol = policy or stored_policy or ED25519_ONLY
            return cls(
                store,
                admin,
                pol,
                max_payload_size,
                revocation_rule=revocation_rule,
                latest_only=latest_only,
            )
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> E4State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the four dimensions ----------------------------------------------------------------

    def visible(self, namespace: str | None = None) -> list[Entry]:
        """Data: live contributions (adds − removals), in id order."""
        sql = "SELECT raw FROM entries WHERE kind = ? AND status = ?"
        args: tuple[object, ...] = (int(Kind.CONTRIBUTION), db.LIVE)
        if namespace is not None:
            sql += " AND namespace = ?"
            args += (namespace,)
        with self.store.reading() as c:
            rows = c.execute(sql + " ORDER BY id", args).fetchall()
        return [Entry.from_bytes(bytes(r[0])) for r in rows]

    def evidence(self, subject: bytes | None = None) -> list[Entry]:
        """Trust: the evidence G-set (live evidence entries), in id order."""
        out = [e for e, _ in self.store.iter_entries(Kind.EVIDENCE, db.LIVE)]
        return [e for e in out if subject is None or e.body.subject == subject]  # type: ignore[union-attr]

    def version_vector(self) -> dict[bytes, int]:
        """Clock: highest contiguous seq held per author."""
        return self.store.version_vector()

    def merkle_root(self) -> bytes:
        """Hash: the 256-ary Merkle root over every entry id in the set."""
        return self.store.merkle_root()

    # -- other views ------------------------------------------------------------------------

    def members(self, include_revoked: bool = False) -> dict[bytes, PublicKeys]:
        """Current members (admitted, not revoked; every admitted one with `include_revoked`)
        and their public keys. Trust scoring takes every admitted key, so that a proof
        against a revoked key still counts (and names why it was revoked).

        Remembered until a membership or revocation is written (so a session checking the
        next records while a batch is being applied does not wait for the store lock)."""
        version = self._roster_version
        cached = self._roster.get(include_revoked)
        if cached is not None and cached[0] == version:
            return dict(cached[1])
        out = self._read_members(include_revoked)
        if not self.store._in_transaction():  # what a transaction sees may still roll back
            self._roster[include_revoked] = (version, out)
        return dict(out)

    def _roster_changed(self) -> None:
        """A membership or revocation row was written: forget the remembered members."""
        self._roster_version += 1

    def _read_members(self, include_revoked: bool) -> dict[bytes, PublicKeys]:
        with self.store.reading() as c:
            rows = c.execute(
                "SELECT key_id, ed25519, ml_dsa_65 FROM members ORDER BY key_id, entry"
            ).fetchall()
            revoked = set()
            if not include_revoked:
                revoked = {bytes(r[0]) for r in c.execute("SELECT revoked FROM revocations")}
        out: dict[bytes, PublicKeys] = {}
        for kid, ed, ml in rows:
            if bytes(kid) not in revoked:
                out.setdefault(bytes(kid), PublicKeys(bytes(ed), None if ml is None else bytes(ml)))
        return out

    def is_revoked(self, key_id: bytes) -> bool:
        with self.store.reading():
            return self._cutoff(key_id) is not None

    def held_ids(self) -> list[bytes]:
        """Entries waiting for their predecessor (not in the set)."""
        with self.store.reading() as c:
            return [bytes(r[0]) for r in c.execute("SELECT id FROM pending ORDER BY id")]

    def equivocations(self) -> list[EquivocationProof]:
        """Proofs recorded from evidence entries, in (author, seq) order."""
        with self.store.reading() as c:
            rows = c.execute(
                "SELECT proof FROM equivocations ORDER BY author, seq, a, b"
            ).fetchall()
        return [EquivocationProof.from_bytes(bytes(r[0])) for r in rows]

    def chain_next(self, author: bytes) -> tuple[int, bytes | None]:
        """(seq, prev) for `author`'s next entry, continuing its highest held entry."""
        with self.store.reading() as c:
            row = c.execute(
                "SELECT raw FROM entries WHERE author = ? ORDER BY seq DESC, id LIMIT 1", (author,)
            ).fetchone()
        return chain_next(None if row is None else Entry.from_bytes(bytes(row[0])))

    # -- writing ----------------------------------------------------------------------------

    def apply(
        self, entry: Entry | bytes, payload_source: PayloadSource | None = None
    ) -> ApplyResult:
        """Validate and durably commit one entry, or raise a ValidationError changing nothing.

        A contribution's payload is taken from the store when its chunks are already there
        (`put_chunk`, `ingest_file`), else from `payload_source`.
        """
        e = entry if isinstance(entry, Entry) else Entry.from_bytes(entry)
        (result,) = self.apply_many([e], payload_source)
        if isinstance(result, ValidationError):
            raise result
        return result

    def apply_many(
        self, entries: Sequence[Entry], payload_source: PayloadSource | None = None
    ) -> list[ApplyResult | ValidationError]:
        """Validate each entry on its own, then commit them all in one durable transaction.

        Every entry is checked exactly as `apply` checks it, inside its own SAVEPOINT: one
        that fails is rolled back alone and comes back as its ValidationError (state as if it
        had never been offered), the others stay. Any other error rolls the whole batch back.
        Nothing of the batch is visible to readers, nor acknowledged to anyone, before the
        COMMIT returns (synchronous=FULL), so a crash loses the batch whole or not at all.
        """
        out: list[ApplyResult | ValidationError] = []
        failed: list[bytes] = []  # chunk files written by refused entries
        every: list[bytes] = []  # by any entry of the batch
        lookups: dict[tuple[str, bytes], object] = {}
        try:
            with self.store.transaction() as c:
                self._lookups = lookups
                i, window = 0, len(entries)
                while i < len(entries):
                    if self.bulk and self._in_runs(entries[i]) and self._bulk_ready():
                        end = i
                        while end < min(len(entries), i + window) and self._in_runs(entries[end]):
                            end += 1
                        decided = apply_run(self, entries[i:end], payload_source)
                        out.extend(decided)
                        # a run that stopped early looked up entries it did not decide: look
                        # ahead less next time (payloads of chunk files stop every run)
                        full = len(decided) == end - i
                        window = 2 * window if full else max(8, 2 * len(decided))
                        i += len(decided)
                        if i == len(entries) or (full and self._in_runs(entries[i])):
                            continue
                    e = entries[i]
                    i += 1
                    written: list[bytes] = []
                    keeps = e.kind in _KEEPS_LOOKUPS
                    if not keeps:
                        lookups.clear()
                    c.execute("SAVEPOINT entry")
                    try:
                        self._entered = []
                        result = self._apply(e, payload_source, written)
                        if self._entered:
                            result = ApplyResult(e.id, result.status, self._release_held())
                    except ValidationError as exc:
                        c.execute("ROLLBACK TO entry")
                        failed.extend(written)
                        out.append(exc)
                        keeps = False
                    else:
                        out.append(result)
                        keeps = keeps and not result.released
                    finally:
                        c.execute("RELEASE entry")
                        every.extend(written)
                    if not keeps:
                        lookups.clear()
        except BaseException:
            self._drop_unreferenced(every)
            raise
        finally:
            self._lookups = None
        self._drop_unreferenced(failed)
        return out

    def join(self, other: E4State) -> int:
        """Apply every entry `other` holds (in its set or held) that this state lacks; returns
        how many went in.

        Entries refused now (e.g. a contribution whose removal has not been applied yet) are
        retried until a pass makes no progress, as anti-entropy would.
        """
        offered = [e for e, _ in other.store.iter_entries()] + other.store.held_entries()
        return self.apply_until_stable(
            [e for e in offered if not self.store.has_entry(e.id)], other.store
        )

    def apply_until_stable(self, entries: list[Entry], source: PayloadSource) -> int:
        """Apply `entries` (payloads read from `source`) in join order, retrying the refused
        ones until a pass makes no progress; returns how many went in (duplicates not counted)."""
        todo = sorted(entries, key=lambda e: (JOIN_ORDER[e.kind], e.author, e.seq, e.id))
        accepted = 0
        while todo:
            left = []
            for e in todo:
                try:
                    r = self.apply(e, source)
                except ValidationError:
                    left.append(e)
                    continue
                accepted += r.status is not ApplyStatus.DUPLICATE
            if len(left) == len(todo):
                break
            todo = left
        return accepted

    # -- the decision -----------------------------------------------------------------------

    def _apply(self, e: Entry, source: PayloadSource | None, written: list[bytes]) -> ApplyResult:
        c = self.store.conn
        also = "UNION ALL SELECT 1 FROM pending WHERE id = ?1 " if self._held_exist() else ""
        if c.execute(f"SELECT 1 FROM entries WHERE id = ?1 {also}LIMIT 1", (e.id,)).fetchone():
            return ApplyResult(e.id, ApplyStatus.DUPLICATE)
        proof = self._validate_header(e)
        auto = self._auto_revocation(e)
        self._check_equivocation(e)
        hold = self._chain_waits(e)
        status = db.LIVE
        payload = None
        if e.kind in (Kind.CONTRIBUTION, Kind.EVIDENCE) and self._erased(e):
            status = db.TOMBSTONED
        elif e.kind is Kind.CONTRIBUTION:
            newer = self._newer_in_line(e) if self._is_latest_only(e) else 0
            if newer >= 2:
                status = db.RETIRED  # two generations behind: its bytes are not needed
            elif newer == 1:
                try:  # one behind: keep the bytes when they come, else take the header alone
                    payload = self._take_payload(e, source, written)
                    status = db.SUPERSEDED
                except MissingPayloadError:
                    status = db.RETIRED
            else:
                payload = self._take_payload(e, source, written)
        if hold:
            held = int(c.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
            if held >= self.max_held:
                raise ChainError(
                    f"entry {e.id.hex()}: predecessor {e.prev.hex() if e.prev else ''} unknown "
                    f"and {held} entries are already held"
                )
            self.store.hold(e, payload)
            self._note("held")
            if e.kind is Kind.REMOVAL:
                self._removal_rows(e)
            return ApplyResult(e.id, ApplyStatus.HELD)
        self._commit(e, status, proof, auto)
        if e.kind is Kind.CONTRIBUTION and self._is_latest_only(e):
            self._settle_line(e)
        done = ApplyStatus.TOMBSTONED if status == db.TOMBSTONED else ApplyStatus.APPLIED
        return ApplyResult(e.id, done)

    # -- latest-only namespaces -------------------------------------------------------------

    def _is_latest_only(self, e: Entry) -> bool:
        return self.latest_only is not None and self.latest_only(e.body.namespace)  # type: ignore[union-attr]

    @staticmethod
    def _line_of(e: Entry) -> tuple[str, object]:
        """What a contribution competes with: its namespace and declared role."""
        return e.body.namespace, e.body.metadata.get("role", "")  # type: ignore[union-attr]

    def _newer_in_line(self, e: Entry) -> int:
        """How many contributions of e's author in e's line with a higher seq are held (in
        the set, whatever their status, or waiting for their predecessor)."""
        c = self.store.conn
        rows = c.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq > ? AND kind = ? AND namespace = ?",
            (e.author, e.seq, int(Kind.CONTRIBUTION), e.body.namespace),  # type: ignore[union-attr]
        ).fetchall()
        if self._held_exist():
            rows += c.execute(
                "SELECT raw FROM pending WHERE author = ? AND seq > ?", (e.author, e.seq)
            ).fetchall()
        line = self._line_of(e)
        n = 0
        for (raw,) in rows:
            x = Entry.from_bytes(bytes(raw))
            n += x.kind is Kind.CONTRIBUTION and self._line_of(x) == line
        return n

    def _settle_line(self, e: Entry) -> None:
        """After e entered the set: the newest of its line stays as it is, the one before it
        is superseded (bytes kept: the round it belongs to may still be merged), older ones
        are retired and their payloads reclaimed."""
        c = self.store.conn
        rows = c.execute(
            "SELECT raw, status FROM entries WHERE author = ? AND kind = ? AND namespace = ? "
            "AND (status IN (?, ?) OR seq >= ?) ORDER BY seq DESC",
            (e.author, int(Kind.CONTRIBUTION), e.body.namespace, db.LIVE, db.SUPERSEDED, e.seq),  # type: ignore[union-attr]
        ).fetchall()
        line = self._line_of(e)
        same = [(Entry.from_bytes(bytes(r)), int(st)) for r, st in rows]
        same = [(x, st) for x, st in same if self._line_of(x) == line]
        for rank, (x, st) in enumerate(same):
            if rank == 0 or st not in (db.LIVE, db.SUPERSEDED):
                continue
            if rank == 1 and st == db.LIVE:
                self.store.set_status(x.id, db.SUPERSEDED)
            elif rank >= 2:
                self.store.set_status(x.id, db.RETIRED)
                self.store.release_payload(x.body.payload_digest)  # type: ignore[union-attr]

    def _validate_header(self, e: Entry) -> EquivocationProof | None:
        """Signature, membership, revocation and kind rules; returns an evidence's proof."""
        where = f"entry {e.id.hex()}"
        cutoff = self._cutoff(e.author)
        if cutoff is not None and e.seq > cutoff:
            raise RevokedKeyError(
                f"{where}: author {e.author.hex()} is revoked (entries after seq {cutoff} refused)"
            )
        candidates = self._keys_of(e.author)
        if not candidates:
            raise NotMemberError(f"{where}: author {e.author.hex()} is not a federation member")
        err: SignatureError | None = None
        for keys in candidates:
            try:
                self.signatures.verify(e, keys, self.policy)
                err = None
                break
            except SignatureError as exc:
                err = exc
        if err is not None:
            raise err
        is_admin = e.author == self.admin.key_id
        body = e.body
        if e.kind is Kind.MEMBERSHIP and not is_admin:
            raise UnauthorizedError(
                f"{where}: membership signed by {e.author.hex()}, not the admin"
            )
        if e.kind is Kind.REVOCATION:
            revoked = body.revoked  # type: ignore[union-attr]
            if revoked == self.admin.key_id:
                raise UnauthorizedError(f"{where}: the admin key cannot be revoked by an entry")
            if not is_admin and revoked != e.author:
                raise UnauthorizedError(
                    f"{where}: {e.author.hex()} may revoke only its own key, not {revoked.hex()}"
                )
        if e.kind is Kind.REMOVAL:
            ta = body.target_author  # type: ignore[union-attr]
            if ta is not None and not is_admin and ta != e.author:
                raise UnauthorizedError(
                    f"{where}: only the admin may erase all entries of another author ({ta.hex()})"
                )
        if e.kind is Kind.CONTRIBUTION and body.payload_size > self.max_payload_size:  # type: ignore[union-attr]
            raise OversizedPayloadError(
                f"{where}: payload of {body.payload_size} bytes exceeds the "  # type: ignore[union-attr]
                f"{self.max_payload_size}-byte limit"
            )
        if e.kind is Kind.EVIDENCE and body.proof:  # type: ignore[union-attr]
            return self._equivocation_proof(e)
        return None

    def _equivocation_proof(self, e: Entry) -> EquivocationProof | None:
        """The verified equivocation proof an evidence entry carries, if it carries one."""
        try:
            proof = EquivocationProof.from_bytes(e.body.proof)  # type: ignore[union-attr]
        except MalformedEntryError:
            return None  # some other kind of proof: kept as opaque evidence
        where = f"entry {e.id.hex()}"
        if proof.author != e.body.subject:  # type: ignore[union-attr]
            raise MalformedEntryError(
                f"{where}: proof is about {proof.author.hex()}, not the subject"
            )
        keys = self._keys_of(proof.author)
        if not keys and proof.author_public is None:
            raise NotMemberError(f"{where}: proof author {proof.author.hex()} is unknown")
        try:
            proof.verify(keys[0] if keys else None)
        except SignatureError as exc:
            raise SignatureError(f"{where}: equivocation proof: {exc}") from None
        return proof

    def _auto_revocation(self, e: Entry) -> AutoRevocation | None:
        """What the revocation rule says about an evidence entry (None without a rule)."""
        if self.revocation_rule is None or e.kind is not Kind.EVIDENCE or not e.body.proof:  # type: ignore[union-attr]
            return None
        auto = self.revocation_rule(e, self._keys_of)
        if auto is None or auto.key_id == self.admin.key_id:
            return None  # the admin key is never revoked, not even by proof
        if auto.key_id == e.author and e.seq > auto.cutoff:
            raise RevokedKeyError(
                f"entry {e.id.hex()}: its proof revokes its own author {e.author.hex()} "
                f"from seq {auto.cutoff + 1} on"
            )
        return auto

    def _check_equivocation(self, e: Entry) -> None:
        c = self.store.conn
        rows = c.execute(
            "SELECT raw FROM entries WHERE author = ? AND seq = ? AND id != ? "
            "UNION ALL SELECT raw FROM pending WHERE author = ? AND seq = ? AND id != ?",
            (e.author, e.seq, e.id, e.author, e.seq, e.id),
        ).fetchall()
        if not rows:
            return
        other = Entry.from_bytes(bytes(sorted(rows)[0][0]))
        keys = self._keys_of(e.author)
        proof = EquivocationProof(other, e, keys[0].ed25519 if keys else None)
        raise EquivocationError(
            f"entry {e.id.hex()}: author {e.author.hex()} already has entry {other.id.hex()} "
            f"at seq {e.seq} (equivocation)",
            proof,
        )

    def _chain_waits(self, e: Entry) -> bool:
        """False when the chain link checks out, True when `prev` is not held yet."""
        if e.prev is None:
            return False
        row = self.store.conn.execute(
            "SELECT author, seq FROM entries WHERE id = ?", (e.prev,)
        ).fetchone()
        if row is None:
            return True
        if bytes(row[0]) != e.author or int(row[1]) != e.seq - 1:
            raise ChainError(
                f"entry {e.id.hex()}: prev {e.prev.hex()} is seq {row[1]} of "
                f"{bytes(row[0]).hex()}, expected seq {e.seq - 1} of {e.author.hex()}"
            )
        return False

    def _take_payload(self, e: Entry, source: PayloadSource | None, written: list[bytes]) -> bytes:
        """Make the payload complete and verified in the store; returns its digest."""
        body = e.body
        digest, size = body.payload_digest, body.payload_size  # type: ignore[union-attr]
        where = f"entry {e.id.hex()} payload {digest.hex()}"
        manifest = self._manifest_for(digest, source, where)
        if manifest.size < size:
            raise TruncatedPayloadError(f"{where}: {manifest.size} bytes, declared {size}")
        if manifest.size > size:
            raise OversizedPayloadError(f"{where}: {manifest.size} bytes, declared {size}")
        if manifest.digest != digest:
            raise DigestMismatchError(f"{where}: chunks hash to {manifest.digest.hex()}")
        for i, ref in enumerate(manifest.chunks):
            if self.store.has_chunk(ref.digest, ref.size):
                continue
            if source is None:
                raise MissingPayloadError(f"{where}: chunk {i} ({ref.digest.hex()}) not stored")
            try:
                data = source.read_chunk(ref.digest)
            except NotFoundError:
                raise MissingPayloadError(
                    f"{where}: chunk {i} ({ref.digest.hex()}) not offered by the source"
                ) from None
            if len(data) < ref.size:
                raise TruncatedPayloadError(
                    f"{where}: chunk {i} has {len(data)} of {ref.size} bytes"
                )
            if len(data) > ref.size:
                raise OversizedPayloadError(
                    f"{where}: chunk {i} has {len(data)} > {ref.size} bytes"
                )
            if chunk_digest(data) != ref.digest:
                raise DigestMismatchError(f"{where}: chunk {i} does not hash to {ref.digest.hex()}")
            self.store.store_chunk(data, ref.digest)
            written.append(ref.digest)
        self.store.put_manifest(manifest)
        return digest

    def _manifest_for(self, digest: bytes, source: PayloadSource | None, where: str) -> Manifest:
        if self.store.has_manifest(digest):
            return self.store.get_manifest(digest)
        if source is None:
            raise MissingPayloadError(f"{where}: no manifest stored and no payload source given")
        try:
            return source.get_manifest(digest)
        except NotFoundError:
            raise MissingPayloadError(f"{where}: the source has no manifest for it") from None

    # -- committing -------------------------------------------------------------------------

    def _commit(
        self,
        e: Entry,
        status: int,
        proof: EquivocationProof | None,
        auto: AutoRevocation | None = None,
    ) -> None:
        c = self.store.conn
        self.store.insert_entry(e, status)
        self._entered.append(e.id)
        if auto is not None:
            c.execute(
                "INSERT OR IGNORE INTO revocations (revoked, entry, cutoff) VALUES (?, ?, ?)",
                (auto.key_id, e.id, max(0, auto.cutoff)),
            )
            self._roster_changed()
            self._purge(auto.key_id)
        body = e.body
        if e.kind is Kind.MEMBERSHIP:
            c.execute(
                "INSERT OR IGNORE INTO members (key_id, entry, ed25519, ml_dsa_65, name) "
                "VALUES (?, ?, ?, ?, ?)",
                (body.member, e.id, body.ed25519_public, body.ml_dsa_65_public, body.name),  # type: ignore[union-attr]
            )
            self._roster_changed()
        elif e.kind is Kind.REVOCATION:
            revoked = body.revoked  # type: ignore[union-attr]
            cutoff = e.seq if revoked == e.author else 0
            c.execute(
                "INSERT OR IGNORE INTO revocations (revoked, entry, cutoff) VALUES (?, ?, ?)",
                (revoked, e.id, cutoff),
            )
            self._roster_changed()
            self._purge(revoked)
        elif e.kind is Kind.REMOVAL:
            self._index_removal(e)
        elif proof is not None:
            self._quarantine(proof)

    def _removal_rows(self, r: Entry) -> None:
        """Index a removal's targets (also while it is held, so a target arriving meanwhile
        is recorded as a tombstone instead of waiting for a payload nobody keeps)."""
        c = self.store.conn
        body = r.body
        self._note("removals")
        c.executemany(
            "INSERT OR IGNORE INTO removal_targets (target, removal, remover) VALUES (?, ?, ?)",
            [(t, r.id, r.author) for t in body.targets],  # type: ignore[union-attr]
        )
        if body.target_author is not None:  # type: ignore[union-attr]
            c.execute(
                "INSERT OR IGNORE INTO author_removals (target_author, removal) VALUES (?, ?)",
                (body.target_author, r.id),  # type: ignore[union-attr]
            )

    def _unindex_removal(self, removal_id: bytes) -> None:
        c = self.store.conn
        c.execute("DELETE FROM removal_targets WHERE removal = ?", (removal_id,))
        c.execute("DELETE FROM author_removals WHERE removal = ?", (removal_id,))

    def _index_removal(self, r: Entry) -> None:
        """A removal entered the set: index it and erase every authorised target present."""
        self._removal_rows(r)
        c = self.store.conn
        body = r.body
        is_admin = r.author == self.admin.key_id
        for t in body.targets:  # type: ignore[union-attr]
            row = c.execute("SELECT author, kind FROM entries WHERE id = ?", (t,)).fetchone()
            if (
                row is not None
                and int(row[1]) in _ERASABLE
                and (is_admin or bytes(row[0]) == r.author)
            ):
                self._tombstone(t)
            prow = c.execute("SELECT author FROM pending WHERE id = ?", (t,)).fetchone()
            if prow is not None and (is_admin or bytes(prow[0]) == r.author):
                self._forget_held_payload(t)
        ta = body.target_author  # type: ignore[union-attr]
        if ta is not None:
            rows = c.execute(
                f"SELECT id FROM entries WHERE author = ? AND status IN (?, ?, ?) AND kind IN "
                f"({','.join('?' * len(_ERASABLE))})",
                (ta, db.LIVE, db.SUPERSEDED, db.RETIRED, *_ERASABLE),
            ).fetchall()
            for (t,) in rows:
                self._tombstone(bytes(t))
            for (t,) in c.execute("SELECT id FROM pending WHERE author = ?", (ta,)).fetchall():
                self._forget_held_payload(bytes(t))

    def _tombstone(self, entry_id: bytes) -> None:
        """Erase a live (or superseded) entry: keep its id, drop its payload unless a live
        entry shares it."""
        row = self.store.conn.execute(
            "SELECT status, payload_digest FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None or int(row[0]) not in (db.LIVE, db.SUPERSEDED, db.RETIRED):
            return
        self.store.set_status(entry_id, db.TOMBSTONED)
        if row[1] is not None and int(row[0]) != db.RETIRED:
            self.store.release_payload(bytes(row[1]))

    def _forget_held_payload(self, entry_id: bytes) -> None:
        c = self.store.conn
        row = c.execute("SELECT payload_digest FROM pending WHERE id = ?", (entry_id,)).fetchone()
        if row is not None and row[0] is not None:
            c.execute("UPDATE pending SET payload_digest = NULL WHERE id = ?", (entry_id,))
            self.store.release_payload(bytes(row[0]))

    def _erased(self, e: Entry) -> bool:
        if not self._removals_exist():
            return False
        c = self.store.conn
        for (remover,) in c.execute(
            "SELECT remover FROM removal_targets WHERE target = ?", (e.id,)
        ):
            if bytes(remover) in (self.admin.key_id, e.author):
                return True
        return bool(
            c.execute(
                "SELECT 1 FROM author_removals WHERE target_author = ? LIMIT 1", (e.author,)
            ).fetchone()
        )

    def _purge(self, key_id: bytes) -> None:
        """Drop every entry of a revoked key above its cutoff, held or in the set."""
        c = self.store.conn
        cutoff = self._cutoff(key_id)
        if cutoff is None:
            return
        rows = c.execute(
            "SELECT id, payload_digest FROM entries WHERE author = ? AND seq > ?", (key_id, cutoff)
        ).fetchall()
        for eid, digest in rows:
            eid = bytes(eid)
            self.store.delete_entry(eid)
            self._unindex_removal(eid)
            c.execute("DELETE FROM revocations WHERE entry = ?", (eid,))
            self._roster_changed()
            if digest is not None:
                self.store.release_payload(bytes(digest))
        held = c.execute(
            "SELECT id, payload_digest FROM pending WHERE author = ? AND seq > ?", (key_id, cutoff)
        ).fetchall()
        for eid, digest in held:
            self.store.unhold(bytes(eid))
            self._unindex_removal(bytes(eid))
            if digest is not None:
                self.store.release_payload(bytes(digest))

    def _quarantine(self, proof: EquivocationProof) -> None:
        """Both headers of a verified equivocation enter the set, neither stays visible."""
        c = self.store.conn
        for x in (proof.a, proof.b):
            cutoff = self._cutoff(x.author)
            if cutoff is not None and x.seq > cutoff:
                continue
            row = c.execute("SELECT status FROM entries WHERE id = ?", (x.id,)).fetchone()
            if row is None:
                held = c.execute(
                    "SELECT payload_digest FROM pending WHERE id = ?", (x.id,)
                ).fetchone()
                if held is not None:
                    self.store.unhold(x.id, x)
                    if held[0] is not None:
                        self.store.release_payload(bytes(held[0]))
                self.store.insert_entry(x, db.QUARANTINED)
                self._entered.append(x.id)
            elif int(row[0]) in (db.LIVE, db.SUPERSEDED, db.RETIRED):
                self._tombstone(x.id)
                self.store.set_status(x.id, db.QUARANTINED)
            if x.kind is Kind.CONTRIBUTION and self._is_latest_only(x):
                self._settle_line(x)
        c.execute(
            "INSERT OR IGNORE INTO equivocations (author, seq, a, b, proof) VALUES (?, ?, ?, ?, ?)",
            (proof.author, proof.a.seq, proof.a.id, proof.b.id, proof.to_bytes()),
        )

    def _release_held(self) -> tuple[bytes, ...]:
        """Apply, in this transaction, every held entry whose chain now reaches the set.

        Starts from the ids that entered the set in this transaction (`self._entered`); a held
        entry that no longer validates is dropped.
        """
        c = self.store.conn
        released: list[bytes] = []
        if not self._held_exist():
            return ()
        frontier = sorted(self._entered)
        while frontier:
            prev = heapq.heappop(frontier)
            rows = c.execute(
                "SELECT id, raw, payload_digest FROM pending WHERE prev = ? ORDER BY id", (prev,)
            ).fetchall()
            for eid, raw, digest in rows:
                e = Entry.from_bytes(bytes(raw))
                self.store.unhold(bytes(eid), e)
                mark = len(self._entered)
                try:
                    self._apply(e, None, [])
                except ValidationError:
                    self._unindex_removal(e.id)
                for new in self._entered[mark:]:
                    released.append(new)
                    heapq.heappush(frontier, new)
                if digest is not None:
                    self.store.release_payload(bytes(digest))
        return tuple(sorted(released))

    # -- lookups ----------------------------------------------------------------------------

    def _keys_of(self, author: bytes) -> list[PublicKeys]:
        if author == self.admin.key_id:
            return [self.admin]
        cache = self._lookups
        if cache is not None and ("keys", author) in cache:
            return cache["keys", author]  # type: ignore[return-value]
        rows = self.store.conn.execute(
            "SELECT ed25519, ml_dsa_65 FROM members WHERE key_id = ? ORDER BY entry", (author,)
        ).fetchall()
        keys = [PublicKeys(bytes(ed), None if ml is None else bytes(ml)) for ed, ml in rows]
        if cache is not None:
            cache["keys", author] = keys
        return keys

    def _cutoff(self, key_id: bytes) -> int | None:
        cache = self._lookups
        if cache is not None and ("cutoff", key_id) in cache:
            return cache["cutoff", key_id]  # type: ignore[return-value]
        row = self.store.conn.execute(
            "SELECT MIN(cutoff) FROM revocations WHERE revoked = ?", (key_id,)
        ).fetchone()
        cutoff = None if row is None or row[0] is None else int(row[0])
        if cache is not None:
            cache["cutoff", key_id] = cutoff
        return cutoff

    def _flag(self, name: str, sql: str) -> bool:
        """A yes/no question about the whole store, asked once per batch while it stays no."""
        cache = self._lookups
        if cache is not None and ("flag", name.encode()) in cache:
            return bool(cache["flag", name.encode()])
        answer = bool(self.store.conn.execute(sql).fetchone()[0])
        if cache is not None:
            cache["flag", name.encode()] = answer
        return answer

    def _note(self, name: str) -> None:
        """Something `_flag` asks about now exists (removal rows, held entries)."""
        if self._lookups is not None:
            self._lookups["flag", name.encode()] = True

    def _forget_lookups(self) -> None:
        """Drop the per-batch lookups (after a refusal, as the one-at-a-time path does)."""
        if self._lookups is not None:
            self._lookups.clear()

    def _in_runs(self, e: Entry) -> bool:
        """Contributions outside latest-only namespaces go in runs (`crdtd.state.bulk`)."""
        return e.kind is Kind.CONTRIBUTION and not self._is_latest_only(e)

    def _bulk_ready(self) -> bool:
        """True when no entry is held and no removal exists: then a contribution neither
        releases held entries nor is erased, which is what `apply_run` relies on."""
        return not self._held_exist() and not self._removals_exist()

    def _removals_exist(self) -> bool:
        return self._flag(
            "removals",
            "SELECT EXISTS (SELECT 1 FROM removal_targets) OR EXISTS "
            "(SELECT 1 FROM author_removals)",
        )

    def _held_exist(self) -> bool:
        return self._flag("held", "SELECT EXISTS (SELECT 1 FROM pending)")

    def _drop_unreferenced(self, digests: list[bytes]) -> None:
        """After a refused apply, delete the chunk files it wrote that nothing references."""
        with self.store.reading() as c:
            for d in digests:
                if not c.execute("SELECT 1 FROM payload_chunks WHERE chunk = ?", (d,)).fetchone():
                    self.store.chunks.delete(d)


# -- the federation a store belongs to ----------------------------------------------------------


def federation_of(store: NodeStore) -> tuple[PublicKeys | None, SignaturePolicy | None]:
    """The admin keys and signature policy recorded in a store (None before the first open)."""
    ed = store.get_meta("admin_ed25519")
    if ed is None:
        return None, None
    ml = store.get_meta("admin_ml_dsa_65")
    pol = store.get_meta("policy")
    return (
        PublicKeys(ed, ml or None),
        SignaturePolicy.parse(pol.decode()) if pol else None,
    )


def _bind_federation(store: NodeStore, admin: PublicKeys, policy: SignaturePolicy) -> None:
    """Record the admin key and policy on first use; refuse a store of another federation."""
    stored_admin, _ = federation_of(store)
    if stored_admin is None:
        with store.transaction() as c:
            for k, v in (
                ("admin_ed25519", admin.ed25519),
                ("admin_ml_dsa_65", admin.ml_dsa_65 or b""),
                ("policy", str(policy).encode()),
            ):
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))
    elif stored_admin.key_id != admin.key_id:
        raise ConfigError(
            f"{store.data_dir}: store belongs to the federation with admin "
            f"{stored_admin.key_id.hex()}, not {admin.key_id.hex()}"
        )
    elif str(policy) != (store.get_meta("policy") or b"").decode():
        with store.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('policy', ?)",
                (str(policy).encode(),),
            )
