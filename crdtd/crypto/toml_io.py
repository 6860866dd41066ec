"""Minimal TOML reading (tomllib) and writing for the flat configs crdtd generates.

Writing covers what our files need: tables of str/int/bool/list-of-str values, arrays of
tables, and comments. Strings are escaped per the TOML spec (no surrogate escapes).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crdtd.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

TomlValue = str | int | bool | Sequence[str]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(text: str) -> str:
    """A TOML basic string literal for `text`."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: TomlValue) -> str:
    """TOML literal for a str, int, bool or list of str."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    return "[" + ", ".join(toml_string(v) for v in value) + "]"


def toml_key(key: str) -> str:
    """A bare key when possible, else a quoted one."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def render_table(
    name: str,
    values: Mapping[str, TomlValue],
    comments: Mapping[str, str] | None = None,
    *,
    array: bool = False,
) -> str:
    """One `[name]` (or `[[name]]`) table with optional trailing comments per key."""
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    for key, value in values.items():
        line = f"{toml_key(key)} = {toml_value(value)}"
        note = (comments or {}).get(key)
        lines.append(f"{line}  # {note}" if note else line)
    return "\n".join(lines) + "\n"


def read_toml(path: Path | str) -> dict[str, Any]:
    """Parse a TOML file; ConfigError names the file and the parser's line/column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"{path}: invalid TOML: a value is nested too deep") from None


def section_line(path: Path | str, section: str) -> int | None:
    """Best-effort line number of the `[section]` header (for error messages)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        header = stripped.strip("[] ")
        if stripped.startswith("[") and (header == section or header.startswith(section + ".")):
            return number
    return None


def key_line(path: Path | str, section: str, key: str) -> int | None:
    """Best-effort line number of `key` inside `[section]` (for error messages)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    current = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
    return None
