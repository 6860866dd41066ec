"""Product lattice: named fields, each a lattice, joined field by field."""

from __future__ import annotations

from typing import Any

from crdtd.errors import LatticeError, LatticeTypeError, LatticeValueError
from crdtd.lattice import codec
from crdtd.lattice.base import Lattice, LatticeBase


class Product(LatticeBase):
    """`Product(a=GCounter(), b=ORSet())`: join and order are componentwise.

    Both sides of a join must have the same field names and field types.
    """

    TAG = "prod"
    __slots__ = ("_f",)

    def __init__(self, **fields: Lattice) -> None:
        for k, v in fields.items():
            if not isinstance(v, Lattice):
                raise LatticeValueError(f"Product field {k!r} is not a lattice value: {v!r}")
        self._f = {k: fields[k] for k in sorted(fields)}

    def __getattr__(self, name: str) -> Lattice:
        f = object.__getattribute__(self, "_f")
        if name in f:
            return f[name]  # type: ignore[no-any-return]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Lattice:
        return self._f[name]

    @property
    def fields(self) -> dict[str, Lattice]:
        return dict(self._f)

    def replace(self, **fields: Lattice) -> Product:
        """A copy with some fields replaced."""
        unknown = sorted(set(fields) - set(self._f))
        if unknown:
            raise LatticeError(f"Product has no field(s) {unknown}")
        return Product(**{**self._f, **fields})

    def _check(self, other: Product, op: str) -> None:
        self._same_type(other, op)
        if list(self._f) != list(other._f):
            raise LatticeTypeError(f"Product fields differ: {list(self._f)} vs {list(other._f)}")
        for k in self._f:
            if type(self._f[k]) is not type(other._f[k]):
                raise LatticeTypeError(
                    f"Product field {k!r}: {type(self._f[k]).__name__} vs {type(other._f[k]).__name__}"
                )

    def join(self, other: Product) -> Product:
        self._check(other, "join")
        return Product(**{k: self._f[k].join(other._f[k]) for k in self._f})

    def le(self, other: Product) -> bool:
        self._check(other, "compare")
        return all(self._f[k].le(other._f[k]) for k in self._f)

    def to_obj(self) -> list[Any]:
        return [self.TAG, [[k, self._f[k].to_obj()] for k in self._f]]

    @classmethod
    def from_obj(cls, obj: Any) -> Product:
        (items,) = codec.check_header(obj, cls.TAG, 1, "Product")
        fields: dict[str, Lattice] = {}
        for it in codec.expect_list(items, None, "Product.fields"):
            k, v = codec.expect_list(it, 2, "Product field")
            fields[codec.expect_str(k, "Product field name")] = codec.decode_obj(v, f"Product.{k}")
        return cls(**fields)

    def _repr_body(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._f.items())


codec.register_decoder(Product.TAG, Product.from_obj)
