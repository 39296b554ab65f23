"""CRLs kept fresh: a CRL replaced on disk takes effect without restart; stale CRLs refused or tolerated."""

from __future__ import annotations

import dataclasses
import datetime
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from janustls.explain import explain_chain
from janustls.materials import load_certificates
from tests.support import client_context, start

HANDLER = '''
def serve(sock):
    sock.write(("hi %s\\n" % sock.cert_info("CN")).encode())
'''


def hello(port: int, pki: Any, cert: str) -> str:
    try:
        with client_context(pki, cert, tls="1.3").wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
        ) as s:
            return s.recv(100).decode().strip() or "closed"
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {e}"


def port_ini(pki: Any, procs: Path, crl: Path, extra: str = "") -> str:
    f = pki.files
    return f"""
[janustls]
procs = {procs}
[port:SECURE]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {f['server.pem']}
private_key = {f['server.key']}
client_cert = require
addca = {f['root.ca']}
crl = {crl}
crl_refresh = 0.2
handler = h:serve
{extra}
"""


@pytest.fixture
def procs(tmp_path):
    d = tmp_path / "procs"
    d.mkdir()
    (d / "h.py").write_text(HANDLER)
    return d


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_crl_replaced_on_disk(pki, reactor, procs, events):
    crl = procs / "inter.crl"
    empty = dataclasses.replace(pki.inter, revoked=[])  # the same CA, nothing revoked yet
    crl.write_bytes(empty.crl_pem())
    s = start(port_ini(pki, procs, crl), procs)
    try:
        port = s.port("SECURE")
        assert hello(port, pki, "revoked") == "hi revoked"
        mark = events.mark()
        crl.write_bytes(pki.inter.crl_pem())  # the CA's new CRL lists it
        e = events.wait_for(mark, "janustls.crl.reloaded", "SECURE")
        assert e["path"] == str(crl)
        assert hello(port, pki, "revoked").startswith("refused")
        assert events.wait_for(mark, "janustls.refused.revoked", "SECURE")["subject"] == "CN=revoked"
        assert hello(port, pki, "alice") == "hi alice"
        # A broken replacement is logged and changes nothing.
        mark = events.mark()
        crl.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
        e = events.wait_for(mark, "janustls.crl.failed", "SECURE")
        assert "crl" in e["error"]
        assert hello(port, pki, "revoked").startswith("refused")
        assert hello(port, pki, "alice") == "hi alice"
    finally:
        s.stop()


@pytest.mark.parametrize("policy", ["refuse", "tolerate"])
def test_stale_crl(pki, reactor, procs, events, policy):
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = procs / "stale.crl"
    crl.write_bytes(pki.inter.crl_pem(last_update=now - datetime.timedelta(days=10),
                                      next_update=now - datetime.timedelta(days=1)))  # fmt: skip
    mark = events.mark()
    s = start(port_ini(pki, procs, crl, f"crl_expired = {policy}"), procs)
    try:
        port = s.port("SECURE")
        e = events.wait_for(mark, "janustls.crl.expired", "SECURE")
        assert e["policy"] == policy and e["issuer"].startswith("CN=Test Intermediate CA")
        tls = s.service.ports[0].runtime.tls
        for cert in ("alice", "revoked"):
            verdict = explain_chain(tls, load_certificates(pki.cert(cert)))
            m = events.mark()
            out = hello(port, pki, cert)
            if policy == "tolerate" and cert == "alice":
                assert out == "hi alice" and verdict.accepted
                continue
            assert out.startswith("refused")
            refusal = events.wait_for(m, "janustls.refused", "SECURE")
            expected = "crl_unavailable" if policy == "refuse" else "revoked"
            assert refusal["reason"] == expected
            assert not verdict.accepted and verdict.refusal is not None
            assert (verdict.refusal.reason.value, verdict.refusal.depth) == (refusal["reason"], refusal["depth"])
        # Logged once, not at every poll.
        time.sleep(0.5)
        assert len(events.since(mark, "janustls.crl.expired", "SECURE")) == 1
    finally:
        s.stop()
