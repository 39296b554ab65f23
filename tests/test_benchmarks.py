"""The benchmark runs: `benchmarks/bench_srvsock.py --quick` prints its table.

Speed is measured by the benchmark, never asserted here: this only checks that the
script, its servers and its client processes work together.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_srvsock.py"


def test_bench_srvsock_quick_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "janustls/bare" in text
    for row in (
        "full handshake, TLS 1.3",
        "resumed handshake, TLS 1.3",
        "echo round trip",
        "memory per idle connection (KiB RSS)",
    ):
        line = next((l for l in text.splitlines() if l.startswith(row)), None)
        assert line is not None, f"no {row!r} row in:\n{text}"
        assert len(line.split()) >= 4, line
    assert "CPU cores" in text
