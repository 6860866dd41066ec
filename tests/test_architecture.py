"""docs/architecture.md's dependency direction, checked on every import in crdtd/ (lazy ones
inside functions too; imports for type annotations only are exempt): a module imports only
from its own layer or the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

CRDTD = Path(__file__).resolve().parents[1] / "crdtd"

# Lowest first. A module's layer is that of the longest prefix of its dotted name listed.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("crdtd.errors", "crdtd.proto_gen"),
    (
        "crdtd.lattice",
        "crdtd.data",
        "crdtd.strategies",
        "crdtd.fl.optimisers",
        "crdtd.fl.fedprox",
        "crdtd.fl.tasks",
    ),
    ("crdtd.model", "crdtd.crypto", "crdtd.state", "crdtd.store"),
    ("crdtd.sync", "crdtd.trust"),
    ("crdtd.kinds", "crdtd.sql"),
    ("crdtd.node",),
    ("crdtd.client",),
    (
        "crdtd.cli",
        "crdtd.crypto.cli",
        "crdtd.store.cli",
        "crdtd.model.cli",
        "crdtd.kinds.cli",
        "crdtd.node.cli",
        "crdtd.node.demo",
        "crdtd.demo",
        "crdtd.fl",
        "crdtd",
    ),
)


def layer_of(module: str) -> int:
    best, level = "", -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, level = p, i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return level


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for n in ast.walk(node))
    return out


def imports() -> list[tuple[str, str, str]]:
    """(importing module, imported crdtd module, file:line) for every runtime import."""
    found = []
    for path in sorted(CRDTD.rglob("*.py")):
        if "proto_gen" in path.parts:
            continue
        rel = path.relative_to(CRDTD.parent).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        tree = ast.parse(path.read_text())
        skip = _type_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "crdtd":
                    names = [f"crdtd.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("crdtd.") and name != "crdtd.__version__":
                    found.append((module, name, f"{rel}.py:{node.lineno}"))
    return found


def test_every_import_goes_down_the_layers_docs_architecture_draws() -> None:
    wrong = [
        f"{where}: {module} (layer {layer_of(module)}) imports {name} (layer {layer_of(name)})"
        for module, name, where in imports()
        if layer_of(name) > layer_of(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_every_package_is_in_the_architecture_table() -> None:
    table = (CRDTD.parent / "docs" / "architecture.md").read_text()
    packages = [p.name for p in CRDTD.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    missing = [p for p in packages if f"`crdtd/{p}/`" not in table]
    assert not missing, f"packages missing from docs/architecture.md's table: {missing}"
