"""`crdtd push`, `ls`, `status`, `materialise --provenance`, `recall` and `watch` for every
namespace kind, as a user types them, against a real in-process node."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from crdtd.cli import main
from tests.node_support import InProcessNode, checkpoint, federation

NAMESPACES = {
    "model/mlp": {"strategy": "fedavg"},
    "records/visits": {"kind": "table", "key": "visit"},
    "stats/patients": {"kind": "sketch", "sketch": "hll", "lg_k": 10},
    "agents/notes": {"kind": "memory"},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> InProcessNode:
    (config,) = federation(tmp_path_factory.mktemp("kinds-cli"), 1, namespaces=NAMESPACES)
    n = InProcessNode(config)
    yield n
    n.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kinds-cli-files")
    visits = d / "visits.csv"
    visits.write_text("visit,ward\nv1,a\nv2,b\n")
    ids = d / "ids.csv"
    ids.write_text("patient_id\n" + "\n".join(f"p{i}" for i in range(300)) + "\n")
    notes = d / "notes.jsonl"
    notes.write_text('{"id": "n1", "text": "ward b is short of saline", "author": "nurse"}\n')
    return {
        "model/mlp": checkpoint(d / "m.safetensors", 1.0),
        "records/visits": visits,
        "ids": ids,
        "agents/notes": notes,
    }


def test_every_kind_pushes_lists_shows_and_materialises_from_the_cli(
    node: InProcessNode, files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(node.config)
    sketch = tmp_path / "ids.sketch"
    code, _ = run(
        capsys,
        "sketch",
        "hll",
        str(files["ids"]),
        "--column",
        "patient_id",
        "--lg-k",
        "10",
        "--out",
        str(sketch),
    )
    assert code == 0
    paths = {**{k: v for k, v in files.items() if k != "ids"}, "stats/patients": sketch}
    for ns, path in paths.items():
        code, out = run(capsys, "push", ns, str(path), "--config", cfg, "--json")
        assert code == 0, ns
        entry = json.loads(out)["entry_id"]
        code, out = run(capsys, "ls", ns, "--config", cfg, "--json")
        assert [e["id"] for e in json.loads(out)] == [entry]
    code, out = run(capsys, "status", "--config", cfg)
    for ns, kind in (
        ("records/visits", "table"),
        ("stats/patients", "sketch"),
        ("agents/notes", "memory"),
    ):
        assert any(
            ns in line and kind in line and "1 contribution," in line for line in out.splitlines()
        )
    outs = {
        "model/mlp": "merged.safetensors",
        "records/visits": "visits.parquet",
        "stats/patients": "patients.sketch",
        "agents/notes": "notes.jsonl",
    }
    for ns, name in outs.items():
        target = tmp_path / name
        code, out = run(
            capsys,
            "materialise",
            ns,
            "--out",
            str(target),
            "--provenance",
            "--config",
            cfg,
            "--json",
        )
        assert code == 0, ns
        m = json.loads(out)
        assert target.exists() and m["kind"] == NAMESPACES[ns].get("kind", "model")
        if m["kind"] != "model":
            assert Path(m["provenance_path"]).exists(), ns
    code, out = run(
        capsys,
        "materialise",
        "stats/patients",
        "--out",
        str(tmp_path / "p.sketch"),
        "--config",
        cfg,
    )
    estimate = re.search(r"estimate ([\d.]+) \[([\d.]+), ([\d.]+)\] \(99\.73% confidence\)", out)
    assert estimate is not None, out
    low, value, high = float(estimate[2]), float(estimate[1]), float(estimate[3])
    assert low <= 300 <= high and low <= value <= high
    assert "  sketch, 1 input," in out and "  sketch hll, lg_k 10" in out
    code, out = run(capsys, "recall", "agents/notes", "saline", "-k", "1", "--config", cfg)
    assert "ward b is short of saline" in out


def test_sketch_push_builds_with_the_namespaces_size_and_refuses_another_type_first(
    node: InProcessNode, files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = str(node.config)
    out_file = tmp_path / "ids.hll.sketch"
    argv = ["sketch", "hll", str(files["ids"]), "--column", "patient_id", "--out", str(out_file)]
    code, out = run(capsys, *argv, "--push", "stats/patients", "--config", cfg, "--json")
    assert code == 0 and json.loads(out)["summary"]["lg_k"] == 10  # the namespace's, not 12
    code = main(
        [
            "sketch",
            "kll",
            str(files["ids"]),
            "--column",
            "patient_id",
            "--push",
            "stats/patients",
            "--config",
            cfg,
            "--out",
            str(tmp_path / "x.sketch"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "takes hll sketches, not kll sketches" in err
    assert not (tmp_path / "x.sketch").exists()


def test_watch_reports_pushes_of_every_kind(
    node: InProcessNode, files: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with node.client(timeout=30) as c:
            stream = c.watch("records/visits")
            ready.set()
            for ev in stream:
                seen.append(ev.namespace)
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(10)
    more = tmp_path / "more.csv"
    more.write_text("visit,ward\nv9,c\n")
    with node.client() as c:
        time.sleep(0.5)  # the server subscribes the stream once its handler runs
        c.push("records/visits", more)
    t.join(20)
    assert seen == ["records/visits"]
