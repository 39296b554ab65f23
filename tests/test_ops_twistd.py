"""`twistd janustls --log-format json` as a real process: JSON lines, `janustls reload` (SIGHUP)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support import Twistd, client_context, definitions, free_port, install_handlers, secure_port


def hello(port: int, pki: Any, cert: str | None) -> str:
    with client_context(pki, cert, tls="1.3").wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
    ) as s:
        return s.recv(100).decode().strip()


@pytest.fixture
def twistd(pki, tmp_path):
    procs = install_handlers(tmp_path / "procs", h="hi_cn")
    port = free_port()
    ini = procs / "ports.ini"
    ini.write_text(definitions(procs, secure_port(pki, port=port)))
    pidfile = tmp_path / "twistd.pid"
    t = Twistd(["-n", "--pidfile", str(pidfile), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json"], tmp_path)  # fmt: skip
    try:
        t.wait_for("janustls.port.listening")
        yield t, port, ini, procs, pidfile
    finally:
        t.stop()


def test_json_lines_and_reload_by_signal(twistd, pki):
    t, port, ini, procs, pidfile = twistd
    assert hello(port, pki, "alice") == "hi alice"
    accepted = t.wait_for("janustls.conn.accepted")
    assert (
        accepted["port"] == "SECURE" and accepted["subject"].startswith("CN=alice") and accepted["version"] == "TLSv1.3"
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        hello(port, pki, None)
    refused = t.wait_for("janustls.refused.no_certificate")
    assert refused["reason"] == "no_certificate" and refused["level"] == "warn" and "refused" in refused["message"]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        hello(port, pki, "othera")
    assert t.wait_for("janustls.refused.unknown_ca")["subject"] == "CN=othera"

    # A new trust list, sent by `janustls reload --pidfile` (SIGHUP).
    ini.write_text(
        definitions(procs, secure_port(pki, port=port, cas=f"{pki.files['root.ca']} {pki.files['other.ca']}"))
    )
    r = subprocess.run([sys.executable, "-m", "janustls.cli", "reload", "--pidfile", str(pidfile)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "cannot be known" in r.stderr, r.stderr  # no status listener to ask
    done = t.wait_for("janustls.reload.done")
    assert done["kept"] == ["SECURE"]
    assert hello(port, pki, "othera") == "hi othera"

    # An invalid file: logged with its errors, nothing changes.
    ini.write_text(ini.read_text().replace("client_cert = require", "client_cert = sometimes"))
    os.kill(int(pidfile.read_text()), signal.SIGHUP)
    failed = t.wait_for("janustls.reload.failed")
    assert any("client_cert" in e and "sometimes" in e for e in failed["errors"])
    assert hello(port, pki, "othera") == "hi othera"


def test_reload_command_without_server(tmp_path):
    r = subprocess.run([sys.executable, "-m", "janustls.cli", "reload", "--pidfile", str(tmp_path / "none.pid")],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1 and "none.pid" in r.stderr


def test_graceful_shutdown_drains_within_deadline(pki, tmp_path):
    procs = install_handlers(tmp_path / "procs", h="hi_echo")
    port = free_port()
    ini = procs / "ports.ini"
    ini.write_text(definitions(procs, secure_port(pki, port=port)))
    t = Twistd(["-n", "--pidfile", str(tmp_path / "t.pid"), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json", "--drain-timeout", "2"], tmp_path)  # fmt: skip
    try:
        t.wait_for("janustls.port.listening")
        held = client_context(pki, "alice", tls="1.3").wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")  # fmt: skip
        assert held.recv(100) == b"hi\n"
        started = time.monotonic()
        t.proc.send_signal(signal.SIGTERM)
        draining = t.wait_for("janustls.shutdown.draining")
        assert draining["open"] == 1
        # No new connections, but the open one is still served while it drains.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        held.sendall(b"during\n")
        assert held.recv(100) == b"echo:during\n"
        done = t.wait_for("janustls.shutdown.done")
        assert done["left"] == 1  # closed at the deadline
        assert held.recv(100) == b""
        t.proc.wait(10)
        assert 1.5 < time.monotonic() - started < 8
    finally:
        t.stop()
