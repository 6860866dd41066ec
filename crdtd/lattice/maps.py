"""ORMap: an add-wins map from canonical keys to nested lattice values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from crdtd.errors import LatticeTypeError, LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import Lattice, LatticeBase
from crdtd.lattice.sets import ORSet


class ORMap(LatticeBase):
    """Keys live in an add-wins ORSet; each key's value is a lattice joined on merge.

    Removing a key hides it but keeps its value's history: a later or concurrent `update`
    of that key re-exposes the joined value (the "remove does not reset" semantics, which
    keeps join a plain lattice join). Values of one key must share a type.
    """

    TAG = "orm"
    __slots__ = ("_keys", "_vals")

    def __init__(
        self,
        keys: ORSet | None = None,
        values: Mapping[Any, Lattice] | Iterable[tuple[Any, Lattice]] | None = None,
    ) -> None:
        if keys is not None and type(keys) is not ORSet:
            raise LatticeValueError(f"ORMap keys must be an ORSet, got {type(keys).__name__}")
        self._keys = keys if keys is not None else ORSet()
        self._vals: dict[bytes, tuple[Any, Lattice]] = {}
        pairs = values.items() if isinstance(values, Mapping) else (values or ())
        for k, v in pairs:
            if not isinstance(v, Lattice):
                raise LatticeValueError(f"ORMap value for {k!r} is not a lattice value: {v!r}")
            ck = codec.canon_value(k, "ORMap key")
            self._vals[codec.value_key(ck)] = (ck, v)

    def get(self, key: Any) -> Lattice | None:
        """The value of a visible key, or None."""
        if key not in self._keys:
            return None
        item = self._vals.get(codec.value_key(codec.canon_value(key)))
        return item[1] if item else None

    @property
    def keys(self) -> list[Any]:
        return self._keys.elements

    def items(self) -> list[tuple[Any, Lattice]]:
        out = []
        for k in self._keys.elements:
            v = self.get(k)
            if v is not None:
                out.append((k, v))
        return out

    def update_delta(self, key: Any, node: str, fn: Callable[[Lattice | None], Lattice]) -> ORMap:
        """Delta that (re)adds `key` and sets its value to `fn(current)` joined in."""
        current = self._vals.get(codec.value_key(codec.canon_value(key)))
        new_value = fn(current[1] if current else None)
        return ORMap(self._keys.add_delta(key, node), [(key, new_value)])

    def update(self, key: Any, node: str, fn: Callable[[Lattice | None], Lattice]) -> ORMap:
        return self.join(self.update_delta(key, node, fn))

    def remove_delta(self, key: Any) -> ORMap:
        return ORMap(self._keys.remove_delta(key), ())

    def remove(self, key: Any) -> ORMap:
        return self.join(self.remove_delta(key))

    def join(self, other: ORMap) -> ORMap:
        self._same_type(other)
        vals: list[tuple[Any, Lattice]] = []
        for k in set(self._vals) | set(other._vals):
            a = self._vals.get(k)
            b = other._vals.get(k)
            if a and b:
                if type(a[1]) is not type(b[1]):
                    raise LatticeTypeError(
                        f"ORMap key {a[0]!r}: cannot join {type(a[1]).__name__} with {type(b[1]).__name__}"
                    )
                vals.append((a[0], a[1].join(b[1])))
            else:
                item = a or b
                assert item is not None
                vals.append(item)
        return ORMap(self._keys.join(other._keys), vals)

    def le(self, other: ORMap) -> bool:
        self._same_type(other, "compare")
        return self.join(other) == other

    def to_obj(self) -> list[Any]:
        vals = [
            [codec.value_to_obj(self._vals[k][0]), self._vals[k][1].to_obj()]
            for k in sorted(self._vals)
        ]
        return [self.TAG, self._keys.to_obj(), vals]

    @classmethod
    def from_obj(cls, obj: Any) -> ORMap:
        keys, vals = codec.check_header(obj, cls.TAG, 2, "ORMap")
        values: list[tuple[Any, Lattice]] = []
        for it in codec.expect_list(vals, None, "ORMap.values"):
            k, v = codec.expect_list(it, 2, "ORMap value")
            values.append(
                (codec.value_from_obj(k, "ORMap key"), codec.decode_obj(v, "ORMap value"))
            )
        return cls(ORSet.from_obj(keys), values)

    def _repr_body(self) -> str:
        return repr({repr(k): v for k, v in self.items()})


codec.register_decoder(ORMap.TAG, ORMap.from_obj)
