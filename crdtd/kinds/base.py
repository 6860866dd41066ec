"""The contract every namespace kind implements, and what kinds share.

A namespace kind is the only place that knows its payload format. The daemon, sync and store
move entries and chunks without looking inside; a push asks the kind to check the bytes, and
Materialise asks the kind to turn the namespace's accepted set into one deterministic file.
Each kind is a module in `crdtd.kinds` exposing one `NamespaceKind` object:

- `settings`: the kind's keys in `[namespaces."NAME"]` (type, default, doc), and
  `parse_settings` to turn them into a frozen settings object;
- `takes(ns)`: the payload kinds its pushes may carry (refused before the bytes arrive);
- `check_push(ns, payload_kind, path)`: refuse a payload that does not fit (a typed
  `KindError` naming the namespace, the kind and what is wrong) and name its payload kind;
- `materialise(core, ns, request, work_dir)`: a pure function of the namespace's accepted set
  (same set, same settings ⇒ same bytes on every node), returning a `Materialised`;
- `output_name(ns, request)`: the output's file name (its suffix is the one an output path
  written on the node must carry).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crdtd.crypto.node_config import Field
from crdtd.crypto.sealing import SEALED_META, open_sealed
from crdtd.errors import MergeError, NamespaceKeyError, WrongKindError, echo
from crdtd.state.entry import Entry
from crdtd.trust.gating import Exclusion, gate

if TYPE_CHECKING:
    from crdtd.node.config import NamespaceConfig

Where = Callable[[str], str]
"""Names a namespace key for error messages: file, line and key."""


@dataclass(frozen=True)
class MaterialiseRequest:
    """What a client asked of one Materialise call, beyond the namespace's own settings."""

    strategy: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = ""
    format: str = ""
    provenance: bool = False
    round: int | None = None  # rounds namespaces: which round's global (None: the latest)


@dataclass(frozen=True)
class Excluded:
    """An author left out, why, and which of its contributions that dropped."""

    author: bytes
    reason: str
    entries: tuple[bytes, ...]


@dataclass(frozen=True)
class Materialised:
    """A merged file (in the work directory until the caller moves or streams it)."""

    path: Path
    sha256: str
    size: int
    input_set_digest: str
    inputs: tuple[bytes, ...]
    excluded: tuple[Excluded, ...]
    strategy: str
    params: Mapping[str, Any]
    seconds: float
    kind: str = "model"
    format: str = "safetensors"
    summary: Mapping[str, Any] = field(default_factory=dict)
    provenance: Path | None = None
    provenance_sha256: str = ""

    @property
    def params_json(self) -> str:
        """Canonical JSON of the parameters used."""
        return canonical_json(self.params)

    @property
    def summary_json(self) -> str:
        """Canonical JSON of the kind's facts about the output (rows, estimate, ...)."""
        return canonical_json(self.summary)


class NamespaceKind(Protocol):
    """One namespace kind: its settings, its push check and its materialisation."""

    name: str
    settings: Mapping[str, Field]

    def takes(self, ns: NamespaceConfig) -> tuple[str, ...]:
        """The payload kinds a push to the namespace may carry (the first is the default)."""

    def parse_settings(self, values: Mapping[str, Any], where: Where) -> Any:
        """The kind's settings object from the coerced values of its keys."""

    def check_push(self, ns: NamespaceConfig, payload_kind: str, path: Path) -> str:
        """Refuse a payload that does not fit (KindError); returns its payload kind."""

    def materialise(
        self, core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
    ) -> Materialised:
        """Merge the namespace's accepted set into one file under `work_dir`."""

    def output_name(self, ns: NamespaceConfig, request: MaterialiseRequest) -> str:
        """The output's file name (e.g. model.safetensors, table.parquet)."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces (bytes as hex), for anything compared or hashed."""

    def default(v: Any) -> Any:
        if isinstance(v, bytes):
            return v.hex()
        if isinstance(v, tuple | set | frozenset):
            return sorted(v) if isinstance(v, set | frozenset) else list(v)
        return str(v)

    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def ids_digest(ids: tuple[bytes, ...] | list[bytes], settings: Any = None) -> str:
    """Identity of an input set: sha256 over the sorted entry ids and the settings used."""
    h = hashlib.sha256(b"crdtd/input-set/v1\0")
    for i in sorted(ids):
        h.update(i)
    h.update(canonical_json(settings).encode())
    return h.hexdigest()


def provenance_beside(output: Path, provenance: Path) -> Path:
    """Where an output's provenance file goes: beside it, `NAME.provenance.FORMAT`."""
    return output.with_name(f"{output.name}.provenance{provenance.suffix}")


def payload_pieces(store: Any, e: Entry) -> Iterator[bytes]:
    """A contribution's payload, piece by piece from the store; a sealed one (encrypted
    namespace) is opened with the key the store's node holds (`store.namespace_key`), or
    NamespaceKeyError when it holds none: such a node relays the bytes but cannot read them."""
    manifest = store.get_manifest(e.body.payload_digest)  # type: ignore[union-attr]
    pieces = (store.read_chunk(ref.digest) for ref in manifest.chunks)
    if SEALED_META not in e.body.metadata:  # type: ignore[union-attr]
        return pieces
    key_for = getattr(store, "namespace_key", None) or _no_keys
    return open_sealed(pieces, key_for, f"entry {e.id.hex()}")


def _no_keys(key_id: bytes) -> bytes:
    raise NamespaceKeyError(f"this node holds no namespace keys (key {key_id.hex()[:16]})")


def write_payload(store: Any, e: Entry, path: Path) -> Path:
    """Write a contribution's payload (chunk by chunk, from the store) to `path`."""
    with path.open("wb") as out:
        for piece in payload_pieces(store, e):
            out.write(piece)
    return path


def read_payload(store: Any, e: Entry) -> bytes:
    """A contribution's payload in memory (small payloads: sketches, memory files)."""
    return b"".join(payload_pieces(store, e))


def excluded_of(items: tuple[Exclusion, ...], candidates: list[Entry]) -> tuple[Excluded, ...]:
    """Gating exclusions with the contributions each one dropped."""
    out = []
    for x in items:
        ids = tuple(sorted(e.id for e in candidates if e.author == x.author))
        out.append(Excluded(x.author, f"{x.code}: {x.reason}", ids))
    return tuple(out)


def accepted_set(
    core: Any, ns: NamespaceConfig, payload_kinds: tuple[str, ...]
) -> tuple[list[Entry], tuple[Excluded, ...]]:
    """The namespace's visible contributions of the kind's payload kinds whose authors pass
    trust gating (id order), and who was left out. MergeError when nothing is left."""
    visible = [
        e
        for e in core.state.visible(ns.name)
        if e.body.payload_kind in payload_kinds  # type: ignore[union-attr]
    ]
    if not visible:
        raise MergeError(f"namespace {ns.name!r} has no visible contributions to merge")
    a = core.assessment()
    accepted, exclusions = gate(a.scores, a.revocations, ns.policy, {e.author for e in visible})
    ok = set(accepted)
    kept = sorted((e for e in visible if e.author in ok), key=lambda e: e.id)
    excluded = excluded_of(exclusions, visible)
    if not kept:
        why = "; ".join(f"{x.author.hex()[:16]}: {x.reason}" for x in excluded)
        raise MergeError(f"namespace {ns.name!r}: every contribution's author is excluded ({why})")
    return kept, excluded


def check_payload_kind(ns: NamespaceConfig, payload_kind: str, takes: tuple[str, ...]) -> None:
    """WrongKindError naming the namespace and its kind unless `payload_kind` is one it takes."""
    if payload_kind and payload_kind not in takes:
        raise WrongKindError(
            f"namespace {ns.name!r} is a {ns.kind} namespace and takes "
            f"{' or '.join(takes)} payloads, not {echo(payload_kind)}"
        )


def sniff(path: Path) -> str:
    """What a file looks like from its first bytes: safetensors, parquet, arrow, json or ''."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:6] == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff":
        return "arrow"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return ""


class ViewCache:
    """The last few merged views (a table's rows, a namespace's memories) by namespace and
    input-set digest, so repeated queries over an unchanged set do not merge again."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        """The cached value for `key`, or `make()` (cached; the oldest entry goes)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
