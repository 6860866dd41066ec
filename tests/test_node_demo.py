"""`make demo` end to end: three daemons, three identical hashes, clean shutdown."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_demo_ends_with_three_identical_hashes(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "crdtd.node.demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hashes = re.findall(r"hospital-[abc]: sha256 ([0-9a-f]{64})", proc.stdout)
    assert len(hashes) == 3 and len(set(hashes)) == 1
    assert "identical: True" in proc.stdout
    assert "exit codes [0, 0, 0]" in proc.stdout
    merged = float(re.search(r"merged\s+([0-9.]+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert merged > 0.9
    rounds = re.findall(r"round (\d+): accuracy ([0-9.]+), 3 hospitals", proc.stdout)
    assert [int(r) for r, _ in rounds] == list(range(1, 7))
    assert seconds < 120
