"""The one contract every lattice type implements: join, a partial order, canonical bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from crdtd.errors import DecodeError, LatticeError, LatticeTypeError
from crdtd.lattice import codec

L = TypeVar("L", bound="Lattice")


@runtime_checkable
class Lattice(Protocol):
    """A join-semilattice value: `join` is commutative, associative and idempotent.

    `a.le(b)` holds exactly when `a.join(b) == b`. `to_bytes()` is canonical: equal values
    give identical bytes.
    """

    def join(self: L, other: L) -> L: ...

    def le(self: L, other: L) -> bool: ...

    def to_obj(self) -> list[Any]: ...

    def to_bytes(self) -> bytes: ...


class LatticeBase:
    """Shared helpers: bytes from `to_obj`, equality and hashing by canonical bytes."""

    TAG = ""

    def to_obj(self) -> list[Any]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Canonical msgpack bytes of this value."""
        return codec.pack(self.to_obj())

    @classmethod
    def from_obj(cls, obj: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        """Decode canonical bytes; raises `DecodeError` on malformed or non-canonical input."""
        value = _strict(cls.from_obj, data)
        if value.to_bytes() != bytes(data):
            raise DecodeError(f"{cls.__name__}: bytes are not in canonical form")
        return value

    def _same_type(self, other: object, op: str = "join") -> None:
        """Refuse to join or compare with a value of another type (LatticeTypeError)."""
        if type(other) is not type(self):
            raise LatticeTypeError(f"cannot {op} {type(self).__name__} with {type(other).__name__}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.to_bytes()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_body()})"

    def _repr_body(self) -> str:
        return ""


def decode(data: bytes) -> Any:
    """Decode any lattice value from its canonical bytes (dispatch on the type tag)."""
    value = _strict(codec.decode_obj, data)
    if value.to_bytes() != bytes(data):
        raise DecodeError("lattice bytes are not in canonical form")
    return value


def _strict(from_obj: Callable[[Any], Any], data: bytes) -> Any:
    """Unpack and build; a value the constructors refuse is, for bytes, a `DecodeError`."""
    obj = codec.unpack(data)
    try:
        return from_obj(obj)
    except DecodeError:
        raise
    except LatticeError as exc:
        raise DecodeError(str(exc)) from None
