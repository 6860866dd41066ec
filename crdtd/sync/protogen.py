"""Regenerate the gRPC stubs in crdtd/proto_gen from proto/ (`make proto`), or check them.

Every `*.proto` under `proto/` is compiled with grpcio-tools' bundled protoc into
`crdtd/proto_gen/<same path>` (`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`). protoc writes
absolute imports such as `from crdtd.v1 import peer_pb2`; they are rewritten to
`from crdtd.proto_gen.crdtd.v1 import peer_pb2` so the stubs import inside the package.

`python -m crdtd.sync.protogen --check` regenerates into a temporary directory and exits 1,
naming the files, when the committed stubs differ (a test runs the same check).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from crdtd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
OUT_DIR = REPO / "crdtd" / "proto_gen"
PACKAGE = "crdtd.proto_gen"
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_IMPORT_RE = re.compile(r"^from (crdtd\.v\d+(?:\.\w+)*) import ", re.MULTILINE)
_INIT_TEXT = '"""Generated gRPC stubs (crdtd.sync.protogen); do not edit."""\n'


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Every .proto under `proto_dir`, relative to it, in sorted order."""
    return sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))


def _rewrite(text: str) -> str:
    return _IMPORT_RE.sub(lambda m: f"from {PACKAGE}.{m.group(1)} import ", text)


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile every proto into `out_dir`; returns the files written, relative to it."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise ConfigError("grpcio-tools is not installed (it is in the dev extra)") from None
    protos = proto_files(proto_dir)
    if not protos:
        raise ConfigError(f"{proto_dir}: no .proto files found")
    include = str(resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise ConfigError(f"protoc failed on {', '.join(map(str, protos))}")
    written: list[Path] = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name.endswith(_GENERATED_SUFFIXES):
            path.write_text(_rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")
            written.append(path.relative_to(out_dir))
    for d in sorted({out_dir, *(out_dir / p.parent for p in written)}):
        while True:
            (d / "__init__.py").write_text(_INIT_TEXT, encoding="utf-8")
            if d == out_dir:
                break
            d = d.parent
    return written


def _tree(root: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.name.endswith(_GENERATED_SUFFIXES) or p.name == "__init__.py")
    }


def stale_files(out_dir: Path = OUT_DIR, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Files under `out_dir` that differ from a fresh generation (missing, changed, extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), proto_dir)
        fresh = _tree(Path(tmp))
    current = _tree(out_dir) if out_dir.exists() else {}
    return sorted(str(p) for p in set(fresh) | set(current) if fresh.get(p) != current.get(p))


def main(argv: list[str] | None = None) -> int:
    """CLI: regenerate the stubs, or with --check report stale ones (exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m crdtd.sync.protogen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(
                f"stale gRPC stubs in {OUT_DIR.relative_to(REPO)} (run `make proto`): "
                + ", ".join(stale),
                file=sys.stderr,
            )
            return 1
        print("gRPC stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(Path(tmp))
        fresh = _tree(Path(tmp))
    for rel in _tree(OUT_DIR) if OUT_DIR.exists() else {}:
        if rel not in fresh:
            (OUT_DIR / rel).unlink()
    for rel, data in fresh.items():
        target = OUT_DIR / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    print(f"generated {len(written)} files in {OUT_DIR.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
