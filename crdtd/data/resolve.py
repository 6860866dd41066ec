"""The per-field conflict rule: a total order on values, so resolving a conflict is a join (max).

Values of different types are ranked by type first (None < bool < number < str < bytes < date
< datetime < aware datetime < time < timedelta < list/tuple < mapping), then compared within
their type; exact ties between different types (``1`` and ``1.0``) are broken by type name, so
the order is total and ``max`` is a semilattice join on any mix of values.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_NONE, _BOOL, _NUMBER, _STR, _BYTES, _DATE, _DATETIME, _DATETIME_TZ = range(8)
_TIME, _TIMEDELTA, _SEQUENCE, _MAPPING = range(8, 12)

# Types whose values compare directly with `<` among themselves, with a total order.
_PLAIN = frozenset({int, float, str, bytes, bool, dt.date, dt.timedelta})

KEY_KINDS = (
    "bool",
    "int",
    "float",
    "decimal",
    "str",
    "bytes",
    "date",
    "datetime",
    "datetime-tz",
    "time",
    "timedelta",
)


class UnsupportedValueError(TypeError):
    """A value has a type outside the total order (the caller names its column and row)."""


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"


def normalize_value(v: Any) -> Any:
    """Canonical form of a field value: NaN (float, Decimal, NaT) is missing, -0.0 is 0.0."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return 0.0 if v == 0.0 else v
    if isinstance(v, Decimal):
        return None if v.is_nan() else v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if _is_bool(v):
        return bool(v)
    try:
        if v != v:  # NaT and other NaN-like scalars
            return None
    except (TypeError, ValueError):
        return v
    return v


def _type_name(v: Any) -> str:
    t = type(v)
    return f"{t.__module__}.{t.__qualname__}"


def value_rank(v: Any) -> tuple[Any, ...]:
    """Sort key of the total order on values; raises UnsupportedValueError for other types."""
    if v is None:
        return (_NONE,)
    if _is_bool(v):
        return (_BOOL, bool(v))
    if isinstance(v, numbers.Real):
        return (_NUMBER, v, _type_name(v))
    if isinstance(v, Decimal):
        return (_NUMBER, v, _type_name(v))
    if isinstance(v, str):
        return (_STR, v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return (_BYTES, bytes(v))
    if isinstance(v, dt.datetime):
        if v.tzinfo is None or v.utcoffset() is None:
            return (_DATETIME, v, _type_name(v))
        offset = v.utcoffset()
        seconds = offset.total_seconds() if offset is not None else 0.0
        return (_DATETIME_TZ, v, seconds, str(v.tzinfo), _type_name(v))
    if isinstance(v, dt.date):
        return (_DATE, v, _type_name(v))
    if isinstance(v, dt.time):
        offset = v.utcoffset()
        seconds = offset.total_seconds() if offset is not None else 0.0
        return (_TIME, v.replace(tzinfo=None), seconds, str(v.tzinfo))
    if isinstance(v, dt.timedelta):
        return (_TIMEDELTA, v, _type_name(v))
    if isinstance(v, (list, tuple)):
        return (_SEQUENCE, tuple(value_rank(normalize_value(x)) for x in v), isinstance(v, tuple))
    if isinstance(v, Mapping):
        items = sorted((value_rank(k), value_rank(normalize_value(x))) for k, x in v.items())
        return (_MAPPING, tuple(items))
    raise UnsupportedValueError(f"values of type {type(v).__name__} have no defined order")


def join_values(a: Any, b: Any) -> Any:
    """Larger of two normalised values under the total order; None (missing) never wins."""
    if b is None:
        return a
    if a is None:
        return b
    ta = type(a)
    if ta is type(b) and ta in _PLAIN:
        return b if b > a else a
    return b if value_rank(b) > value_rank(a) else a


def key_kind(v: Any) -> str | None:
    """Kind of a key value (all keys of one column must share it), or None if unsupported."""
    if _is_bool(v):
        return "bool"
    if isinstance(v, numbers.Integral):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, Decimal):
        return "decimal"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(v, dt.datetime):
        return "datetime" if v.utcoffset() is None else "datetime-tz"
    if isinstance(v, dt.date):
        return "date"
    if isinstance(v, dt.time):
        return "time"
    if isinstance(v, dt.timedelta):
        return "timedelta"
    return None
