"""Coverage-guided fuzzing of crdtd's decoders with atheris (optional; not in the test suite).

    pip install 'crdtd[fuzz]'
    python -m tests.fuzz_atheris lattice -max_total_time=60
    python -m tests.fuzz_atheris all -atheris_runs=200000     # every target in turn

Targets: lattice, sketch, entry, proof, manifest, envelope, safetensors, config. Each starts
from a corpus of valid encodings (written to a temporary directory), so libFuzzer mutates
real inputs; any exception that is not the decoder's typed error is a crash that atheris
reports with the input that caused it. The Hypothesis tests in tests/test_fuzz_*.py run the
same checks in the default suite; this script is for long runs.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from crdtd.crypto.node_config import load_node_config
    from crdtd.errors import (
        ConfigError,
        DecodeError,
        EvidenceError,
        MalformedEntryError,
        MalformedManifestError,
    )
    from crdtd.lattice import (
        FrequentItemsSketch,
        GCounter,
        GSet,
        HllSketch,
        KllSketch,
        LWWRegister,
        MVRegister,
        ORMap,
        ORSet,
        PNCounter,
        Product,
        ThetaSketch,
        VersionVector,
        decode,
    )
    from crdtd.node.config import load_daemon_config
    from crdtd.state.entry import EquivocationProof
    from crdtd.state.testing import Federation
    from crdtd.store.chunks import Manifest, chunk_bytes, manifest_of, safetensors_boundaries
    from crdtd.trust.evidence import decode_envelope, encode_envelope, proof_for_equivocation


def _lattice_seeds() -> list[bytes]:
    s = ORSet().add("x", "a").add("y", "b").remove("x")
    return [
        v.to_bytes()
        for v in (
            GCounter({"a": 3}),
            PNCounter().increment("a", 2).decrement("b"),
            VersionVector({"a": 1, "b": 7}),
            LWWRegister(("t", 1.5), 9, "a"),
            MVRegister().set(1, "a"),
            GSet([1, "x", b"y", (1, (2,))]),
            s,
            ORMap().update("k", "a", lambda v: GCounter({"a": 1})),
            Product(c=GCounter({"a": 1}), s=s),
        )
    ]


def _sketch_seeds() -> list[bytes]:
    return [
        HllSketch.of(range(300), lg_k=4).to_bytes(),
        ThetaSketch.of(range(300), lg_k=5).to_bytes(),
        KllSketch.of([float(i) for i in range(300)], k=8).to_bytes(),
        FrequentItemsSketch.of([str(i % 20) for i in range(300)], 3).to_bytes(),
    ]


def _entry_seeds() -> tuple[list[bytes], list[bytes]]:
    fed = Federation()
    fed.add_member("alice")
    a = fed.contribute("alice", b"one")
    fed._last.pop(a.author)
    b = fed.contribute("alice", b"two")
    wires = [a.to_bytes(), b.to_bytes(), fed.remove("alice", [a.id]).to_bytes()]
    return wires, [proof_for_equivocation(a, b)]


def _config_seed() -> tuple[Path, bytes]:
    from tests.node_support import federation

    root = Path(tempfile.mkdtemp(prefix="crdtd-atheris-"))
    (path,) = federation(root, 1)
    return path, path.read_bytes()


def _target(name: str) -> tuple[Callable[[bytes], None], list[bytes]]:
    if name in ("lattice", "sketch"):
        seeds = _lattice_seeds() if name == "lattice" else _sketch_seeds()

        def lattice(data: bytes) -> None:
            with contextlib.suppress(DecodeError):
                value = decode(data)
                value.join(value)

        return lattice, seeds
    if name in ("entry", "proof"):
        wires, proofs = _entry_seeds()

        def proof(data: bytes) -> None:
            with contextlib.suppress(MalformedEntryError):
                EquivocationProof.from_bytes(data)

        def entry(data: bytes) -> None:
            from crdtd.state.entry import Entry

            with contextlib.suppress(MalformedEntryError):
                Entry.from_bytes(data)

        return (entry, wires) if name == "entry" else (proof, proofs)
    if name == "manifest":

        def manifest(data: bytes) -> None:
            with contextlib.suppress(MalformedManifestError):
                Manifest.from_bytes(data)

        return manifest, [manifest_of(chunk_bytes(b"x" * 100)).to_bytes()]
    if name == "envelope":
        _, proofs = _entry_seeds()

        def envelope(data: bytes) -> None:
            with contextlib.suppress(EvidenceError):
                decode_envelope(data)

        return envelope, [encode_envelope(3, data=b"abc"), *proofs]
    if name == "safetensors":

        def safetensors(data: bytes) -> None:
            safetensors_boundaries(data, len(data) + 100)

        header = b'{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
        return safetensors, [len(header).to_bytes(8, "little") + header + b"\x00\x00"]
    if name == "config":
        path, seed = _config_seed()
        variant = path.with_name("atheris.toml")

        def config(data: bytes) -> None:
            variant.write_bytes(data)
            for load in (load_node_config, load_daemon_config):
                with contextlib.suppress(ConfigError):
                    load(variant, env={})

        return config, [seed]
    raise SystemExit(f"unknown target {name!r}; one of: {', '.join(TARGETS)} or all")


TARGETS = ("lattice", "sketch", "entry", "proof", "manifest", "envelope", "safetensors", "config")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    if argv[1] == "all":  # one process per target: atheris.Fuzz() does not return
        for name in TARGETS:
            subprocess.run(
                [sys.executable, "-m", "tests.fuzz_atheris", name, *argv[2:]], check=True
            )
        return
    fn, seeds = _target(argv[1])
    corpus = Path(tempfile.mkdtemp(prefix=f"crdtd-corpus-{argv[1]}-"))
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    print(f"== {argv[1]}: {len(seeds)} seeds in {corpus}", flush=True)
    atheris.Setup([argv[0], *argv[2:], str(corpus)], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
