"""The mid-connection benchmark runs and prints its table (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_midconn.py"


def test_quick_run_prints_the_table():
    out = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mid-connection request (post-handshake authentication)" in out.stdout
    assert "mid-connection request (renegotiation)" in out.stdout
