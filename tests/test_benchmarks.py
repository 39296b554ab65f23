"""The benchmark runs: `--quick` smoke runs of the paired benchmarks print their tables.

Speed is measured by the benchmarks, never asserted here: this only checks that the
scripts, their servers and their client processes work together.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _row(text: str, start: str) -> str:
    line = next((row for row in text.splitlines() if row.startswith(start)), None)
    assert line is not None, f"no {start!r} row in:\n{text}"
    return line


def test_bench_srvsock_quick_prints_the_paired_table() -> None:
    text = _run("bench_srvsock.py")
    assert "CPU cores" in text and "CPU pinning" in text
    for row in ("full handshake, TLS 1.3", "resumed handshake, TLS 1.3", "echo round trip"):
        assert len(_row(text, row).split()) >= 8
    for workload in ("handshake", "resumed", "echo"):
        assert len(_row(text, f"  control: bare/bare, {workload}").split()) >= 8
    assert "clients per server" in text
    assert len(_row(text, "memory per idle connection (KiB RSS)").split()) >= 8
    # The bare servers release OpenSSL's buffers as janustls does; the reference row is without.
    assert "bare MODE_RELEASE_BUFFERS: yes" in text
    assert len(_row(text, "  reference: bare without MODE_RELEASE_BUFFERS").split()) >= 6


def test_bench_srvsock_bare_keep_buffers_measures_without_the_mode() -> None:
    text = _run("bench_srvsock.py", "--workloads", "echo", "--sweep", "", "--bare-keep-buffers")
    assert "bare MODE_RELEASE_BUFFERS: no" in text
    assert len(_row(text, "echo round trip").split()) >= 8
    assert len(_row(text, "  reference: bare + MODE_RELEASE_BUFFERS").split()) >= 6


def test_bench_web_quick_prints_the_paired_table() -> None:
    text = _run("bench_web.py")
    for row in ("full handshake + request", "resumed handshake + request", "keep-alive request"):
        assert len(_row(text, row).split()) >= 8
    assert "control: bare/bare, keepalive" in text


def test_bench_srvsock_profile_compares_both_servers() -> None:
    text = _run("bench_srvsock.py", "--workloads", "handshake", "--connections", "0", "--sweep", "", "--profile")
    assert "own time by area" in text
    assert "janustls code, inclusive time per handshake" in text
    assert "named per-handshake work" in text


def test_bench_h2_quick_prints_both_protocols_and_the_control() -> None:
    text = _run("bench_h2.py")
    for row in (
        "HTTP/1.1 keep-alive (32 connections)",
        "HTTP/2 (1 connection, 32 streams)",
        "HTTP/1.1 keep-alive again",
    ):
        assert len(_row(text, row).split()) >= 6
    assert "h2 / h1, req/s:" in text and "control: h1 again / h1, req/s:" in text
