"""Commands whose exit status tells the truth: start-up that cannot bind, `janustls status`
checked against the pidfile, `janustls reload` waiting for the outcome."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import Twistd, definitions, free_port, install_handlers, secure_port, status_section
from tests.test_ops_twistd import hello


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "janustls.cli", *args], capture_output=True, text=True, timeout=90, cwd=cwd
    )


def setup_files(pki, tmp_path: Path, status: int | None) -> tuple[Path, Path, int]:
    procs = install_handlers(tmp_path / "procs", h="hi_cn")
    port = free_port()
    ini = procs / "ports.ini"
    ini.write_text(definitions(procs, secure_port(pki, port=port), status_section(status)))
    return procs, ini, port


def test_start_fails_when_status_listener_cannot_bind(pki, tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    busy = held.getsockname()[1]
    try:
        _, ini, port = setup_files(pki, tmp_path, busy)
        t = Twistd(
            ["-n", "--pidfile", str(tmp_path / "t.pid"), "--logfile", "-", "janustls", "--port-def", str(ini)], tmp_path
        )
        try:
            code = t.proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        t.stop()
        time.sleep(0.5)  # the reader thread has the last lines
        out = "".join(t.lines.get() for _ in range(t.lines.qsize()))
        assert code not in (None, 0), "the server started although its status listener could not bind"
        assert str(busy) in "".join(t.seen) + out
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()  # no port left serving
    finally:
        held.close()


@pytest.fixture
def server(pki, tmp_path):
    status = free_port()
    procs, ini, port = setup_files(pki, tmp_path, status)
    pidfile = tmp_path / "twistd.pid"
    t = Twistd(["-n", "--pidfile", str(pidfile), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json"], tmp_path)  # fmt: skip
    try:
        t.wait_for("janustls.status.listening")
        yield t, ini, procs, pidfile, port, status
    finally:
        t.stop()


def test_status_checks_the_pid_against_the_pidfile(server, tmp_path):
    t, _ini, _procs, pidfile, _port, status = server
    r = cli("status", f"127.0.0.1:{status}", "--pidfile", str(pidfile))
    assert r.returncode == 0 and "SECURE" in r.stdout, r.stderr
    other = tmp_path / "other.pid"
    other.write_text("1\n")
    r = cli("status", f"127.0.0.1:{status}", "--pidfile", str(other))
    assert r.returncode == 1 and "pid 1" in r.stderr and str(t.proc.pid) in r.stderr, r.stderr
    r = cli("status", f"127.0.0.1:{status}", "--pidfile", str(tmp_path / "absent.pid"))
    assert r.returncode == 0 and "cannot tell" in r.stderr, r.stderr


def test_reload_command_waits_for_the_outcome(server, pki):
    _t, ini, procs, pidfile, port, status = server
    args = ("reload", "--pidfile", str(pidfile), "--port-def", str(ini), "--timeout", "30")
    ini.write_text(
        definitions(
            procs,
            secure_port(pki, port=port, cas=f"{pki.files['root.ca']} {pki.files['other.ca']}"),
            status_section(status),
        )
    )
    r = cli(*args)
    assert r.returncode == 0 and "reloaded" in r.stdout, (r.stdout, r.stderr)
    assert hello(port, pki, "othera") == "hi othera"

    ini.write_text(ini.read_text().replace("client_cert = require", "client_cert = sometimes"))
    started = time.monotonic()
    r = cli(*args)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "refused" in r.stderr and "sometimes" in r.stderr
    assert time.monotonic() - started < 30

    # No status listener to ask: the signal goes, the outcome is unknown, and the status says so.
    r = cli("reload", "--pidfile", str(pidfile))
    assert r.returncode == 2 and "cannot be known" in r.stderr, r.stderr


def test_reload_command_without_answer_gives_up_in_time(server, tmp_path):
    """A pidfile naming a process that is not the status listener's: refused before any signal."""
    _t, ini, _procs, _pidfile, _port, _status = server
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(60)"]
    )
    try:
        other = tmp_path / "sleeper.pid"
        other.write_text(f"{sleeper.pid}\n")
        r = cli("reload", "--pidfile", str(other), "--port-def", str(ini), "--timeout", "2")
        assert r.returncode == 1 and f"not pid {sleeper.pid}" in r.stderr, r.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
