"""Contribution metadata values to and from `crdtd.v1.MetaValue`, shared by server and client."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from crdtd.errors import DuplicateKeyError, echo
from crdtd.proto_gen.crdtd.v1 import node_pb2 as pb

V = TypeVar("V")


def meta_to_pb(value: Any) -> pb.MetaValue:
    """A metadata value as a MetaValue message (floats travel as their repr text)."""
    if isinstance(value, bool):
        return pb.MetaValue(flag=value)
    if isinstance(value, int):
        return pb.MetaValue(integer=value)
    if isinstance(value, bytes):
        return pb.MetaValue(raw=value)
    return pb.MetaValue(text="" if value is None else str(value))


def meta_from_pb(value: pb.MetaValue) -> Any:
    """A MetaValue message as a Python value (str, int, bool or bytes; None when unset)."""
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def unique_pairs(
    pairs: Iterable[Any], what: str, value: Callable[[Any], V] = lambda v: v
) -> dict[str, V]:
    """`key -> value(pair.value)` of repeated key/value messages; a key given twice is a
    DuplicateKeyError naming it (a map would silently keep the last one)."""
    out: dict[str, V] = {}
    for pair in pairs:
        if pair.key in out:
            raise DuplicateKeyError(f"{what}: key {echo(pair.key)} is given more than once")
        out[pair.key] = value(pair.value)
    return out
