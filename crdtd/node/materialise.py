"""Materialise a namespace: gate and weigh its visible contributions, then merge them.

A pure function of the node's set: the visible contributions of the namespace, the trust
assessment derived from the evidence held, and the namespace's policy (or the request's
strategy and params). `crdtd.trust.plan_materialisation` decides who is merged and with
which weights; `crdtd.model.ModelMerge` writes one deterministic safetensors file. Nodes
holding the same set therefore write byte-identical files (same sha256).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crdtd.errors import ConfigError, MergeError, NotFoundError
from crdtd.node.config import NamespaceConfig
from crdtd.state.entry import Entry
from crdtd.store import sqlite as db
from crdtd.trust.gating import Exclusion
from crdtd.trust.weighting import WeightedInput, plan_materialisation

OUTPUT_NAME = "model.safetensors"
_ONE_FILE = 1 << 62  # shard size: always one output file


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

    @property
    def params_json(self) -> str:
        """Canonical JSON of the parameters used."""
        return json.dumps(dict(self.params), sort_keys=True, separators=(",", ":"), default=str)


def parse_param(text: str) -> Any:
    """A request parameter value: JSON (1, 0.5, true, "x", [..]) or else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def effective_namespace(
    ns: NamespaceConfig,
    strategy: str = "",
    params: Mapping[str, Any] | None = None,
    dtype: str = "",
) -> NamespaceConfig:
    """The namespace's config with a request's strategy/params/dtype applied and validated.

    A request strategy replaces the namespace's params with the request's; params alone are
    laid over the namespace's. Unknown strategies and bad params raise typed errors.
    """
    from crdtd.strategies import registry

    policy = ns.policy
    if strategy:
        policy = replace(policy, strategy=strategy, strategy_params=dict(params or {}))
    elif params:
        policy = replace(policy, strategy_params={**policy.strategy_params, **params})
    registry.get(policy.strategy).validate(policy.strategy_params, [{}])
    if dtype:
        from crdtd.node.config import check_dtype

        check_dtype(dtype, "dtype")
    return replace(ns, policy=policy, dtype=dtype or ns.dtype)


def _num_examples(e: Entry) -> int | None:
    value = e.body.metadata.get("num_examples")  # type: ignore[union-attr]
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _write_payload(store: Any, e: Entry, path: Path) -> None:
    manifest = store.get_manifest(e.body.payload_digest)  # type: ignore[union-attr]
    with path.open("wb") as out:
        for ref in manifest.chunks:
            out.write(store.read_chunk(ref.digest))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def materialise(core: Any, ns: NamespaceConfig, work_dir: Path) -> Materialised:
    """Merge namespace `ns` (already validated, see `effective_namespace`) into
    `work_dir/model.safetensors`. `core` is a `NodeCore`; runs for as long as the merge does."""
    from crdtd.model import Contribution, ModelMerge, ModelMergeSchema
    from crdtd.strategies import registry

    started = time.monotonic()
    if ns.payload_kind != "safetensors":
        raise ConfigError(
            f"namespace {ns.name!r} holds {ns.payload_kind} payloads; only safetensors "
            "namespaces can be materialised"
        )
    store = core.state.store
    visible = [e for e in core.state.visible(ns.name) if e.body.payload_kind == "safetensors"]  # type: ignore[union-attr]
    strategy = registry.get(ns.strategy)
    base = _base_entry(store, ns, visible, strategy.needs_base)
    candidates = [e for e in visible if base is None or e.id != base.id]
    if not candidates:
        raise MergeError(f"namespace {ns.name!r} has no visible contributions to merge")
    assessment = core.assessment()
    plan = plan_materialisation(
        [WeightedInput(e.id, e.author, _num_examples(e)) for e in candidates],
        assessment.scores,
        assessment.revocations,
        ns.policy,
    )
    excluded = _excluded(plan.excluded, candidates)
    if not plan.content_ids:
        why = "; ".join(f"{x.author.hex()[:16]}: {x.reason}" for x in excluded)
        raise MergeError(f"namespace {ns.name!r}: every contribution's author is excluded ({why})")
    work_dir.mkdir(parents=True, exist_ok=True)
    inputs_dir = work_dir / "inputs"
    inputs_dir.mkdir()
    by_id = {e.id: e for e in candidates}
    contributions = []
    for eid, mp in zip(plan.content_ids, plan.model_params):
        path = inputs_dir / f"{eid.hex()}.safetensors"
        _write_payload(store, by_id[eid], path)
        contributions.append(Contribution(path, params=dict(mp), label=f"entry {eid.hex()}"))
    base_path = None
    if base is not None:
        base_path = inputs_dir / f"base-{base.id.hex()}.safetensors"
        _write_payload(store, base, base_path)
    out_dir = work_dir / "out"
    merger = ModelMerge(ModelMergeSchema.single(plan.strategy, plan.params), dtype=ns.dtype)
    report = merger.merge_to_dir(contributions, out_dir, base_path, shard_size=_ONE_FILE)
    if list(report.files) != [OUTPUT_NAME]:
        raise MergeError(f"merge wrote {list(report.files)}, expected one {OUTPUT_NAME}")
    out = out_dir / OUTPUT_NAME
    shutil.rmtree(inputs_dir, ignore_errors=True)
    return Materialised(
        path=out,
        sha256=sha256_file(out),
        size=out.stat().st_size,
        input_set_digest=report.input_set_digest,
        inputs=tuple(sorted(plan.content_ids)),
        excluded=excluded,
        strategy=plan.strategy,
        params=dict(plan.params),
        seconds=time.monotonic() - started,
    )


def _excluded(items: tuple[Exclusion, ...], candidates: list[Entry]) -> tuple[Excluded, ...]:
    out = []
    for x in items:
        ids = tuple(sorted(e.id for e in candidates if e.author == x.author))
        out.append(Excluded(x.author, f"{x.code}: {x.reason}", ids))
    return tuple(out)


def _base_entry(
    store: Any, ns: NamespaceConfig, visible: list[Entry], needed: bool
) -> Entry | None:
    """The base checkpoint: the namespace's `base`, else the base all inputs name (when the
    strategy needs one)."""
    base_id = ns.base
    if base_id is None and needed:
        named = {e.body.base_id for e in visible}  # type: ignore[union-attr]
        if len(named) == 1 and None not in named:
            base_id = named.pop()
    if base_id is None:
        if needed:
            raise MergeError(
                f"strategy {ns.strategy!r} needs a base checkpoint: set base = ENTRY_ID in "
                f'[namespaces."{ns.name}"], or push contributions that name one base_id'
            )
        return None
    try:
        entry = store.get_entry(base_id)
    except NotFoundError:
        raise MergeError(
            f"namespace {ns.name!r}: base entry {base_id.hex()} is not held by this node"
        ) from None
    if store.entry_status(base_id) != db.LIVE:
        raise MergeError(f"namespace {ns.name!r}: base entry {base_id.hex()} was erased")
    return entry
