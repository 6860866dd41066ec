"""Sets: grow-only (GSet) and observed-remove, add-wins (ORSet) with delta-mutators."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from crdtd.errors import LatticeError, LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import LatticeBase
from crdtd.lattice.clocks import Dot, DotContext, check_dot


class GSet(LatticeBase):
    """Grow-only set of canonical values; join = union."""

    TAG = "gs"
    __slots__ = ("_e",)

    def __init__(self, elements: Iterable[Any] = ()) -> None:
        self._e: dict[bytes, Any] = {}
        for x in elements:
            v = codec.canon_value(x, "GSet element")
            self._e[codec.value_key(v)] = v

    def __contains__(self, x: object) -> bool:
        try:
            return codec.value_key(codec.canon_value(x)) in self._e
        except LatticeError:
            return False

    def __iter__(self) -> Iterator[Any]:
        return iter(self.elements)

    def __len__(self) -> int:
        return len(self._e)

    @property
    def elements(self) -> list[Any]:
        """Elements in canonical order."""
        return [self._e[k] for k in sorted(self._e)]

    def add(self, x: Any) -> GSet:
        return GSet([*self._e.values(), x])

    def join(self, other: GSet) -> GSet:
        self._same_type(other)
        return GSet([*self._e.values(), *other._e.values()])

    def le(self, other: GSet) -> bool:
        self._same_type(other, "compare")
        return all(k in other._e for k in self._e)

    def to_obj(self) -> list[Any]:
        return [self.TAG, [codec.value_to_obj(self._e[k]) for k in sorted(self._e)]]

    @classmethod
    def from_obj(cls, obj: Any) -> GSet:
        (items,) = codec.check_header(obj, cls.TAG, 1, "GSet")
        return cls(
            codec.value_from_obj(x, "GSet element") for x in codec.expect_list(items, None, "GSet")
        )

    def _repr_body(self) -> str:
        return repr(self.elements)


class ORSet(LatticeBase):
    """Observed-remove set, add-wins, without tombstone growth (the ORSWOT design).

    Each add is tagged with a unique dot (node, counter); the causal context records every dot
    the replica has seen. Join keeps a dot when both sides hold it, or when one side holds it
    and the other has not seen it; so a concurrent add survives a remove (add wins).
    Mutators come in delta form: `add_delta`/`remove_delta` return the small ORSet to ship,
    and `add`/`remove` apply it locally.
    """

    TAG = "ors"
    __slots__ = ("_ctx", "_e")

    def __init__(
        self,
        entries: Mapping[Any, Iterable[Dot]] | Iterable[tuple[Any, Iterable[Dot]]] | None = None,
        context: DotContext | None = None,
    ) -> None:
        e: dict[bytes, tuple[Any, frozenset[Dot]]] = {}
        all_dots: set[Dot] = set()
        pairs = entries.items() if isinstance(entries, Mapping) else (entries or ())
        for x, dots in pairs:
            v = codec.canon_value(x, "ORSet element")
            ds = frozenset(check_dot(d) for d in dots)
            if ds:
                e[codec.value_key(v)] = (v, ds)
                all_dots |= ds
        self._e = e
        if context is not None and type(context) is not DotContext:
            raise LatticeValueError(
                f"ORSet context must be a DotContext, got {type(context).__name__}"
            )
        self._ctx = (context or DotContext()).add(all_dots)

    @property
    def context(self) -> DotContext:
        return self._ctx

    @property
    def elements(self) -> list[Any]:
        """Visible elements in canonical order."""
        return [self._e[k][0] for k in sorted(self._e)]

    def __contains__(self, x: object) -> bool:
        try:
            return codec.value_key(codec.canon_value(x)) in self._e
        except LatticeError:
            return False

    def __len__(self) -> int:
        return len(self._e)

    def dots_of(self, x: Any) -> frozenset[Dot]:
        item = self._e.get(codec.value_key(codec.canon_value(x)))
        return item[1] if item else frozenset()

    def add_delta(self, x: Any, node: str) -> ORSet:
        """Delta that adds `x` with a fresh dot of `node` and supersedes its older dots."""
        dot = self._ctx.next_dot(node)
        old = self.dots_of(x)
        return ORSet([(x, [dot])], DotContext(old | {dot}))

    def remove_delta(self, x: Any) -> ORSet:
        """Delta that removes every observed add of `x` (concurrent unseen adds survive)."""
        return ORSet((), DotContext(self.dots_of(x)))

    def add(self, x: Any, node: str) -> ORSet:
        return self.join(self.add_delta(x, node))

    def remove(self, x: Any) -> ORSet:
        return self.join(self.remove_delta(x))

    def join(self, other: ORSet) -> ORSet:
        self._same_type(other)
        entries: list[tuple[Any, frozenset[Dot]]] = []
        keys = set(self._e) | set(other._e)
        for k in keys:
            mine = self._e.get(k)
            theirs = other._e.get(k)
            a = mine[1] if mine else frozenset()
            b = theirs[1] if theirs else frozenset()
            keep = (a & b) | {d for d in a - b if not other._ctx.contains(d)}
            keep |= {d for d in b - a if not self._ctx.contains(d)}
            if keep:
                value = (mine or theirs)[0]  # type: ignore[index]
                entries.append((value, keep))
        return ORSet(entries, self._ctx.union(other._ctx))

    def le(self, other: ORSet) -> bool:
        self._same_type(other, "compare")
        return self.join(other) == other

    def to_obj(self) -> list[Any]:
        items = []
        for k in sorted(self._e):
            v, dots = self._e[k]
            items.append([codec.value_to_obj(v), [[n, c] for n, c in sorted(dots)]])
        return [self.TAG, items, self._ctx.to_obj()]

    @classmethod
    def from_obj(cls, obj: Any) -> ORSet:
        items, ctx = codec.check_header(obj, cls.TAG, 2, "ORSet")
        entries: list[tuple[Any, list[Dot]]] = []
        for it in codec.expect_list(items, None, "ORSet.entries"):
            v, dots = codec.expect_list(it, 2, "ORSet entry")
            ds = []
            for d in codec.expect_list(dots, None, "ORSet dots"):
                n, c = codec.expect_list(d, 2, "ORSet dot")
                ds.append(
                    (
                        codec.expect_str(n, "ORSet dot node"),
                        codec.expect_uint(c, "ORSet dot counter"),
                    )
                )
            entries.append((codec.value_from_obj(v, "ORSet element"), ds))
        context = DotContext.from_obj(ctx, "ORSet.context")
        out = cls(entries, context)
        if out._ctx != context:
            raise codec.DecodeError("ORSet: element dots missing from the causal context")
        return out

    def _repr_body(self) -> str:
        return repr(self.elements)


codec.register_decoder(GSet.TAG, GSet.from_obj)
codec.register_decoder(ORSet.TAG, ORSet.from_obj)
