"""`sketch` namespaces: sites share aggregates, never records. Materialise is the union.

Each contribution is one sketch in `crdtd.lattice.sketches` canonical bytes (Apache
DataSketches HLL, Theta, KLL or frequent items, built where the data lives: `crdtd sketch`
hashes or summarises values locally). The namespace fixes the sketch type and size; a sketch
of another type or size is refused. Materialise joins the accepted sketches (the lattice
join: order-free, so the union's canonical bytes are the same on every node whatever the
order) and replies with the estimate and its error bound. Provenance lists every sketch that
went into the union with its own estimate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.crypto.node_config import Field
from crdtd.errors import ConfigError, CrdtdError, LatticeError, SketchContributionError
from crdtd.kinds.base import (
    Excluded,
    Materialised,
    MaterialiseRequest,
    Where,
    accepted_set,
    canonical_json,
    check_payload_kind,
    ids_digest,
    read_payload,
    sha256_file,
)

if TYPE_CHECKING:
    from crdtd.node.config import NamespaceConfig

TYPES = ("hll", "theta", "kll", "frequent_items")
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.9, 0.99)
TOP_ITEMS = 20
STD_DEVS = 3  # bounds reported at 3 standard deviations: 99.73 % confidence


@dataclass(frozen=True)
class SketchSettings:
    """The sketch type a namespace holds and its size parameter."""

    type: str = "hll"
    lg_k: int = 12
    k: int = 200
    lg_max_map_size: int = 10

    @property
    def size(self) -> tuple[str, int]:
        """The size parameter that applies to the type: (name, value)."""
        if self.type in ("hll", "theta"):
            return "lg_k", self.lg_k
        if self.type == "kll":
            return "k", self.k
        return "lg_max_map_size", self.lg_max_map_size


def sketch_class(kind: str) -> Any:
    """The `crdtd.lattice.sketches` class of a sketch type."""
    from crdtd.lattice import sketches as sk

    return {
        "hll": sk.HllSketch,
        "theta": sk.ThetaSketch,
        "kll": sk.KllSketch,
        "frequent_items": sk.FrequentItemsSketch,
    }[kind]


_TAGS = {"hll": "hll", "theta": "theta", "kll": "kll", "fi": "frequent_items"}


class SketchKind:
    """Sketches (canonical `crdtd.lattice.sketches` bytes) joined into one union."""

    name = "sketch"
    settings: Mapping[str, Field] = {
        "sketch": Field("choice:hll|theta|kll|frequent_items", "hll", "the sketch type"),
        "lg_k": Field("int", 12, "HLL and Theta: log2 of the sketch size"),
        "k": Field("int", 200, "KLL: the accuracy parameter k"),
        "lg_max_map_size": Field("int", 10, "frequent items: log2 of the largest map"),
    }

    def parse_settings(self, values: Mapping[str, Any], where: Where) -> SketchSettings:
        s = SketchSettings(
            type=values["sketch"],
            lg_k=values["lg_k"],
            k=values["k"],
            lg_max_map_size=values["lg_max_map_size"],
        )
        name, value = s.size
        try:
            sketch_class(s.type)(**{name: value})
        except LatticeError as exc:
            raise ConfigError(f"{where(name)}: {exc}") from None
        return s

    def takes(self, ns: NamespaceConfig) -> tuple[str, ...]:
        return ("sketch",)

    def check_push(self, ns: NamespaceConfig, payload_kind: str, path: Path) -> str:
        """The bytes must decode as the namespace's sketch type and size."""
        check_payload_kind(ns, payload_kind, ("sketch",))
        decode_sketch(path.read_bytes(), ns.settings, ns.name)
        return "sketch"

    def output_name(self, ns: NamespaceConfig, request: MaterialiseRequest) -> str:
        return f"{ns.settings.type}.sketch"

    def materialise(
        self, core: Any, ns: NamespaceConfig, request: MaterialiseRequest, work_dir: Path
    ) -> Materialised:
        """Join the accepted sketches; the union's canonical bytes go to work_dir/out."""
        started = time.monotonic()
        s: SketchSettings = ns.settings
        if request.strategy or request.dtype or request.format not in ("", "sketch"):
            raise ConfigError(
                f"namespace {ns.name!r} is a sketch namespace: its output is the union sketch; "
                "strategy, dtype and formats do not apply"
            )
        entries, excluded = accepted_set(core, ns, ("sketch",))
        parts: list[tuple[bytes, bytes, Any]] = []
        invalid: list[Excluded] = []
        for e in entries:
            data = read_payload(core.state.store, e)  # a node without the namespace key stops here
            try:
                value = decode_sketch(data, s, ns.name)
            except CrdtdError as exc:
                invalid.append(Excluded(e.author, f"invalid contribution: {exc}", (e.id,)))
                continue
            parts.append((e.id, e.author, value))
        if not parts:
            why = "; ".join(x.reason for x in invalid)
            raise SketchContributionError(f"namespace {ns.name!r}: no valid sketch ({why})")
        union = join_all(s, (v for _, _, v in parts))
        out = work_dir / "out" / self.output_name(ns, request)
        out.parent.mkdir(parents=True)
        out.write_bytes(union.to_bytes())
        prov = None
        if request.provenance:
            prov = out.with_name(out.name + ".provenance.json")
            rows = [
                {"entry_id": eid.hex(), "author": a.hex(), "summary": summarise(s, v)}
                for eid, a, v in parts
            ]
            prov.write_text(canonical_json({"inputs": rows}) + "\n")
        ids = tuple(eid for eid, _, _ in parts)
        return Materialised(
            path=out,
            sha256=sha256_file(out),
            size=out.stat().st_size,
            input_set_digest=ids_digest(ids, s),
            inputs=ids,
            excluded=(*excluded, *invalid),
            strategy=f"{s.type} union",
            params={"sketch": s.type, s.size[0]: s.size[1]},
            seconds=time.monotonic() - started,
            kind=self.name,
            format="sketch",
            summary=summarise(s, union),
            provenance=prov,
            provenance_sha256=sha256_file(prov) if prov is not None else "",
        )


KIND = SketchKind()


def decode_sketch(data: bytes, s: SketchSettings, namespace: str) -> Any:
    """A contribution's sketch, strictly decoded; SketchContributionError names the type and
    size it has when they are not the namespace's."""
    import crdtd.lattice.sketches  # noqa: F401  (registers the sketch decoders)
    from crdtd.lattice import decode

    want_name, want = s.size
    where = f"namespace {namespace!r} takes {s.type} sketches with {want_name} {want}"
    try:
        value = decode(data)
    except (LatticeError, ValueError) as exc:
        raise SketchContributionError(f"{where}: the payload is not a sketch ({exc})") from None
    tag = _TAGS.get(getattr(value, "TAG", ""), "")
    if tag != s.type:
        got = tag or type(value).__name__
        raise SketchContributionError(f"{where}: the payload is a {got} sketch")
    got = getattr(value, want_name)
    if got != want:
        raise SketchContributionError(f"{where}: the payload's {want_name} is {got}")
    return value


def join_all(s: SketchSettings, values: Iterable[Any]) -> Any:
    """The lattice join of `values` (order-free), from the empty sketch of the settings."""
    cls = sketch_class(s.type)
    name, size = s.size
    union = cls(**{name: size})
    for v in values:
        union = union.join(v)
    return union


def union_bytes(s: SketchSettings, blobs: Iterable[bytes]) -> bytes:
    """Join sketches given as canonical bytes; the union's canonical bytes."""
    return bytes(join_all(s, (decode_sketch(b, s, "(local)") for b in blobs)).to_bytes())


def build_sketch(s: SketchSettings, values: Iterable[Any]) -> bytes:
    """Sketch `values` here (hashed or summarised locally); its canonical bytes."""
    cls = sketch_class(s.type)
    name, size = s.size
    return bytes(cls.of(values, **{name: size}).to_bytes())


def summarise(s: SketchSettings, value: Any) -> dict[str, Any]:
    """The estimate and its error bound, as plain data (the Materialise reply's summary)."""
    name, size = s.size
    out: dict[str, Any] = {"sketch": s.type, name: size}
    if s.type in ("hll", "theta"):
        est = value.estimate(STD_DEVS)
        out.update(
            estimate=est.value,
            lower_bound=est.lower,
            upper_bound=est.upper,
            confidence=est.confidence,
            std_devs=STD_DEVS,
        )
    elif s.type == "kll":
        out.update(n=value.n, rank_error=value.rank_error)
        if value.n:
            out.update(min=value.min, max=value.max)
            out["quantiles"] = {}
            for r in QUANTILES:
                b = value.quantile_bounds(r)
                out["quantiles"][str(r)] = {"value": b.value, "lower": b.lower, "upper": b.upper}
            out["confidence"] = value.quantile_bounds(0.5).confidence
    else:
        out.update(total_weight=value.total_weight, max_error=value.max_error)
        out["top"] = [
            {"item": item, "estimate": e.value, "lower": e.lower, "upper": e.upper}
            for item, e in value.frequent_items(no_false_positives=False)[:TOP_ITEMS]
        ]
    return out
