"""`model` namespaces: safetensors checkpoints merged by a strategy (or opaque `bytes`).

Materialise gates and weighs the visible contributions (`crdtd.trust.plan_materialisation`:
who is merged and with which weights), picks the base checkpoint when the strategy needs one,
and has `crdtd.model.ModelMerge` write one deterministic safetensors file. Nodes holding the
same set therefore write byte-identical files (same sha256). A global model is never merged
as a contribution of itself: an entry declaring metadata `role = "global"`, or one another
contribution names as its `base_id`, is left out of the inputs. A namespace with
`payload_kind = "bytes"` replicates opaque payloads and is never merged. With `rounds = true`
Materialise builds one round's global instead (crdtd.kinds.rounds).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.crypto.node_config import Field
from crdtd.errors import (
    ConfigError,
    CrdtdError,
    InputReadError,
    MergeError,
    NotFoundError,
    echo,
)
from crdtd.fl.optimisers import OPTIMISERS
from crdtd.kinds.base import (
    Excluded,
    Materialised,
    MaterialiseRequest,
    Where,
    check_payload_kind,
    excluded_of,
    sha256_file,
    write_payload,
)
from crdtd.kinds.rounds import SETTINGS_DOC, RoundSettings, declared_int, is_global, merge_round
from crdtd.state.entry import Entry
from crdtd.store import sqlite as db
from crdtd.trust.weighting import WeightedInput, plan_materialisation

if TYPE_CHECKING:
    from crdtd.node.config import NamespaceConfig

OUTPUT_NAME = "model.safetensors"
_ONE_FILE = 1 << 62  # shard size: always one output file


class ModelKind:
    """Safetensors checkpoints merged by a strategy; `bytes` payloads only replicated."""

    name = "model"
    # Read by crdtd.node.config, which turns them into the namespace's trust policy.
    settings: Mapping[str, Field] = {
        "strategy": Field(
            "str", "", "merge strategy (`crdtd merge --list`); default [trust.default]"
        ),
        "params": Field("table", {}, "the strategy's parameters"),
        "payload_kind": Field("choice:safetensors|bytes", "safetensors", "what pushes carry"),
        "trust_weighted": Field("bool", None, "weigh contributions by their author's trust"),
        "example_weighted": Field("bool", None, "weigh contributions by metadata num_examples"),
        "base": Field(
            "str", "", "entry id (hex) of the base checkpoint, for strategies needing one"
        ),
        "dtype": Field("str", "", "output dtype (e.g. bfloat16); default: the inputs' dtype"),
        "rounds": Field("bool", False, SETTINGS_DOC["rounds"]),
        "screen": Field("bool", True, SETTINGS_DOC["screen"]),
        "max_staleness": Field("float", 1, SETTINGS_DOC["max_staleness"]),
        "server_optimizer": Field(
            "choice:" + "|".join(OPTIMISERS), "fedavg", SETTINGS_DOC["server_optimizer"]
        ),
        "server_lr": Field("float", -1.0, SETTINGS_DOC["server_lr"]),
        "server_momentum": Field("float", 0.0, SETTINGS_DOC["server_momentum"]),
        "server_beta_1": Field("float", -1.0, SETTINGS_DOC["server_beta_1"]),
        "server_beta_2": Field("float", -1.0, SETTINGS_DOC["server_beta_2"]),
        "server_tau": Field("float", -1.0, SETTINGS_DOC["server_tau"]),
    }

    def parse_settings(self, values: Mapping[str, Any], where: Where) -> RoundSettings:
        """The round settings (the rest lives in NamespaceConfig's own fields)."""
        return RoundSettings.parse(values, where)

    def takes(self, ns: NamespaceConfig) -> tuple[str, ...]:
        return (ns.payload_kind,)

    def check_push(self, ns: NamespaceConfig, payload_kind: str, path: Path) -> str:
        """The namespace's payload kind; a safetensors payload must parse and hold tensors."""
        check_payload_kind(ns, payload_kind, self.takes(ns))
        if ns.payload_kind == "safetensors":
            check_safetensors(path)
        return ns.payload_kind

    def output_name(self, ns: NamespaceConfig, request: MaterialiseRequest) -> str:
        return OUTPUT_NAME

    def materialise(
        self, core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
    ) -> Materialised:
        """Merge the namespace into `work_dir/out/model.safetensors`."""
        if request.format not in ("", "safetensors"):
            raise ConfigError(
                f"namespace {ns.name!r} is a model namespace: its output is safetensors, "
                f"not {echo(request.format)}"
            )
        if isinstance(ns.settings, RoundSettings) and ns.settings.rounds:
            return _materialise_round(core, effective(ns, request), request, work_dir)
        return merge_models(core, effective(ns, request), work_dir)


def _materialise_round(
    core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
) -> Materialised:
    """One round's global of a rounds namespace, written to `work_dir/out/model.safetensors`."""
    started = time.monotonic()
    g, cohort = merge_round(core, ns, request.round)
    out_dir = work_dir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / OUTPUT_NAME
    out.write_bytes(g.data)
    excluded = {bytes.fromhex(a) for a in g.summary.get("excluded", [])}
    screened = {bytes.fromhex(c) for c in g.summary.get("screened", [])}
    used = tuple(sorted(e.id for e in cohort if e.id not in screened and e.author not in excluded))
    gone = tuple(
        Excluded(e.author, "screened: outlier this round", (e.id,))
        for e in cohort
        if e.id in screened
    )
    return Materialised(
        path=out,
        sha256=g.id.hex(),
        size=len(g.data),
        input_set_digest=str(g.summary.get("inputs_digest", "")),
        inputs=used if g.round else (),
        excluded=gone,
        strategy=str(g.summary.get("strategy", ns.strategy)),
        params=dict(ns.params),
        seconds=time.monotonic() - started,
        summary=dict(g.summary),
    )


KIND = ModelKind()


def check_dtype(name: str, where: str) -> str:
    """Raise ConfigError naming `where` unless `name` is a dtype the merge engine writes."""
    from crdtd.model.io import parse_dtype

    try:
        parse_dtype(name)
    except CrdtdError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return name


def effective(ns: NamespaceConfig, request: MaterialiseRequest) -> NamespaceConfig:
    """The namespace's config with a request's strategy/params/dtype applied and validated.

    A request strategy replaces the namespace's params with the request's; params alone are
    laid over the namespace's. Unknown strategies and bad params raise typed errors.
    """
    from crdtd.strategies import registry

    policy = ns.policy
    if request.strategy:
        policy = replace(
            policy, strategy=request.strategy, strategy_params=dict(request.params or {})
        )
    elif request.params:
        policy = replace(policy, strategy_params={**policy.strategy_params, **request.params})
    registry.get(policy.strategy).validate(policy.strategy_params, [{}])
    if request.dtype:
        check_dtype(request.dtype, "dtype")
    return replace(ns, policy=policy, dtype=request.dtype or ns.dtype)


def merge_models(core: Any, ns: NamespaceConfig, work_dir: Path) -> Materialised:
    """Merge namespace `ns` (already validated, see `effective`) into
    `work_dir/out/model.safetensors`. `core` is a `NodeCore`; runs as long as the merge does."""
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
    named = {e.body.base_id for e in visible}  # type: ignore[union-attr]
    candidates = [
        e
        for e in visible
        if (base is None or e.id != base.id) and e.id not in named and not is_global(e)
    ]
    if not candidates:
        raise MergeError(f"namespace {ns.name!r} has no visible contributions to merge")
    assessment = core.assessment()
    plan = plan_materialisation(
        [WeightedInput(e.id, e.author, declared_int(e, "num_examples")) for e in candidates],
        assessment.scores,
        assessment.revocations,
        ns.policy,
    )
    excluded = excluded_of(plan.excluded, candidates)
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
        write_payload(store, by_id[eid], path)
        contributions.append(Contribution(path, params=dict(mp), label=f"entry {eid.hex()}"))
    base_path = None
    if base is not None:
        base_path = inputs_dir / f"base-{base.id.hex()}.safetensors"
        write_payload(store, base, base_path)
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


def check_safetensors(path: Path) -> None:
    """Refuse bytes that are not a well-formed safetensors file (InputReadError names why)."""
    from crdtd.model.io import SafetensorsFile

    try:
        f = SafetensorsFile(path)
    except InputReadError as exc:
        raise InputReadError(
            f"payload is not a valid safetensors file: {str(exc).replace(str(path) + ': ', '')}"
        ) from None
    try:
        if not f.infos:
            raise InputReadError("payload is a safetensors file with no tensors")
    finally:
        f.close()
