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

from janustls.core.materials import load_certificates
from janustls.explain import explain_chain
from tests.support import client_context, start

HANDLER = """
def serve(sock):
    sock.write(("hi %s\\n" % sock.cert_info("CN")).encode())
"""


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
certificate = {f["server.pem"]}
private_key = {f["server.key"]}
client_cert = require
addca = {f["root.ca"]}
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
    now = datetime.datetime.now(datetime.UTC)
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


class CRLServer:
    """A CRL distribution point: serves `data` with an ETag, answers 304 to a matching If-None-Match."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, str | None]] = []

    def resource(self) -> Any:
        from twisted.web.resource import Resource

        server = self

        class One(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                import hashlib

                etag = '"%s"' % hashlib.sha256(server.data).hexdigest()[:16]
                asked = request.getHeader("if-none-match")
                if asked == etag:
                    server.requests.append((304, asked))
                    request.setResponseCode(304)
                    return b""
                server.requests.append((200, asked))
                request.setHeader("etag", etag)
                return server.data

        return One()


def test_crl_from_url_fetched_cached_and_refreshed(pki, reactor, procs, events):
    from twisted.internet import reactor as r
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.server import Site

    from tests.support import in_reactor

    empty = dataclasses.replace(pki.inter, revoked=[])
    dp = CRLServer(empty.crl_pem())
    listening = in_reactor(lambda: TCP4ServerEndpoint(r, 0, interface="127.0.0.1").listen(Site(dp.resource())))
    url = f"http://127.0.0.1:{listening.getHost().port}/inter.crl"
    f = pki.files
    ini = f"""
[janustls]
procs = {procs}
[port:SECURE]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {f["server.pem"]}
private_key = {f["server.key"]}
client_cert = require
addca = {f["root.ca"]}
crl_url = {url}
crl_refresh = 0.3
handler = h:serve
"""
    try:
        mark0 = events.mark()
        s = start(ini, procs)  # the first fetch happens as the port starts, asynchronously
        try:
            port = s.port("SECURE")
            events.wait_for(mark0, "janustls.crl.reloaded", "SECURE")
            assert hello(port, pki, "revoked") == "hi revoked"
            time.sleep(1.0)
            assert (304, dp.requests[-1][1]) == dp.requests[-1]  # unchanged: conditional requests, 304s
            mark = events.mark()
            dp.data = pki.inter.crl_pem()  # the CA publishes a CRL that lists it
            events.wait_for(mark, "janustls.crl.fetched", "SECURE")
            events.wait_for(mark, "janustls.crl.reloaded", "SECURE")
            assert hello(port, pki, "revoked").startswith("refused")
            assert hello(port, pki, "alice") == "hi alice"
            # A distribution point that sends something else: logged, the cached CRL stays.
            mark = events.mark()
            dp.data = b"not a CRL"
            e = events.wait_for(mark, "janustls.crl.fetch_failed", "SECURE")
            assert "did not send a CRL" in e["error"]
            assert hello(port, pki, "revoked").startswith("refused")
            # An older CRL (one from before the revocation) is not taken: no replay.
            mark = events.mark()
            dp.data = empty.crl_pem(last_update=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2))
            e = events.wait_for(mark, "janustls.crl.fetch_failed", "SECURE")
            assert "older than the cached one" in e["error"]
            assert hello(port, pki, "revoked").startswith("refused")
        finally:
            s.stop()
        # No distribution point and no cached copy: the port serves at once (nothing waits
        # for the URL), refuses the clients that need the CRL, and says why.
        mark = events.mark()
        unreachable = ini.replace(url, url.replace("/inter.crl", "/other.crl")).replace(
            f"127.0.0.1:{listening.getHost().port}", "127.0.0.1:1")  # fmt: skip
        t0 = time.monotonic()
        s = start(unreachable, procs)
        try:
            assert time.monotonic() - t0 < 2.0
            e = events.wait_for(mark, "janustls.crl.fetch_failed", "SECURE")
            assert "no cached copy" in e["effect"]
            assert hello(s.port("SECURE"), pki, "alice").startswith("refused")
            events.wait_for(mark, "janustls.refused.crl_unavailable", "SECURE")
        finally:
            s.stop()
    finally:
        in_reactor(listening.stopListening)


def test_reload_with_a_slow_crl_url_never_freezes_serving(pki, reactor, procs, events):
    """A reload that adds a crl_url waits for its first fetch without stopping the reactor."""
    from twisted.internet import reactor as r
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    from janustls.core.config import parse_definitions
    from tests.support import in_reactor

    data = pki.inter.crl_pem()

    class Slow(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            def answer() -> None:
                request.write(data)
                request.finish()

            r.callLater(3.0, answer)
            return NOT_DONE_YET

    listening = in_reactor(lambda: TCP4ServerEndpoint(r, 0, interface="127.0.0.1").listen(Site(Slow())))
    url = f"http://127.0.0.1:{listening.getHost().port}/slow.crl"
    crl = procs / "inter.crl"
    crl.write_bytes(dataclasses.replace(pki.inter, revoked=[]).crl_pem())  # lists nobody; the URL's lists "revoked"
    ini = port_ini(pki, procs, crl)
    s = start(ini, procs)
    try:
        port = s.port("SECURE")
        assert hello(port, pki, "revoked") == "hi revoked"
        mark = events.mark()
        new = parse_definitions(ini.replace(f"crl = {crl}", f"crl_url = {url}"), source="test.ini", base=procs)
        done: list[bool] = []
        r.callFromThread(lambda: s.service.reload(new).addCallback(done.append))
        time.sleep(0.3)
        latencies = []
        while not done and len(latencies) < 200:
            t0 = time.monotonic()
            assert hello(port, pki, "alice") == "hi alice"
            latencies.append(time.monotonic() - t0)
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done == [True]
        assert len(latencies) >= 5 and max(latencies) < 1.0, latencies
        events.wait_for(mark, "janustls.crl.fetched", "SECURE")
        assert hello(port, pki, "revoked").startswith("refused")  # the new URL's CRL is in force
    finally:
        s.stop()
        in_reactor(listening.stopListening)


def serve_crl(data: bytes) -> tuple[CRLServer, Any, str]:
    from twisted.internet import reactor as r
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.server import Site

    from tests.support import in_reactor

    dp = CRLServer(data)
    listening = in_reactor(lambda: TCP4ServerEndpoint(r, 0, interface="127.0.0.1").listen(Site(dp.resource())))
    return dp, listening, f"http://127.0.0.1:{listening.getHost().port}/inter.crl"


def test_crl_url_without_refresh_is_fetched_at_start(pki, reactor, procs, events):
    """crl_refresh = 0 (never refreshed): a URL with no cached copy is still fetched once at start."""
    from tests.support import in_reactor

    dp, listening, url = serve_crl(pki.inter.crl_pem())
    f = pki.files
    ini = f"""
[janustls]
procs = {procs}
[port:SECURE]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {f["server.pem"]}
private_key = {f["server.key"]}
client_cert = require
addca = {f["root.ca"]}
crl_url = {url}
crl_refresh = 0
handler = h:serve
"""
    try:
        mark = events.mark()
        s = start(ini, procs)
        try:
            events.wait_for(mark, "janustls.crl.fetched", "SECURE")
            events.wait_for(mark, "janustls.crl.reloaded", "SECURE")
            assert hello(s.port("SECURE"), pki, "alice") == "hi alice"
            assert hello(s.port("SECURE"), pki, "revoked").startswith("refused")
            time.sleep(0.5)
            assert len(dp.requests) == 1  # once: crl_refresh = 0 never fetches again
        finally:
            s.stop()
    finally:
        in_reactor(listening.stopListening)


def test_check_reports_an_unreachable_crl_url(pki, reactor, procs, tmp_path):
    """`janustls check` fetches each crl_url once (bounded, nothing written) and says which
    cannot be fetched and what that means; the file is still valid (the port would start,
    failing closed for the clients that need the CRL)."""
    import subprocess
    import sys

    from tests.ocsp_responder import closed_port_url
    from tests.support import in_reactor

    _dp, listening, good = serve_crl(pki.inter.crl_pem())
    down = closed_port_url().replace("/ocsp", "/inter.crl")
    f = pki.files
    ini = tmp_path / "ports.ini"
    ini.write_text(f"""
[janustls]
procs = {procs}
[port:SECURE]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {f["server.pem"]}
private_key = {f["server.key"]}
client_cert = require
addca = {f["root.ca"]}
crl_url = {good} {down}
handler = h:serve
""")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "janustls.cli", "check", str(ini)], capture_output=True, text=True, timeout=60
        )
    finally:
        in_reactor(listening.stopListening)
    assert done.returncode == 0, done.stderr
    assert f"CRL URL      {good}: reachable" in done.stdout, done.stdout
    assert f"WARNING      crl_url {down}: cannot fetch" in done.stdout, done.stdout
    assert "no cached copy" in done.stdout
    assert not (procs / ".crl-cache").exists()  # check writes nothing
