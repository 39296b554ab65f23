"""OCSP for client certificates: a real responder on 127.0.0.1, real TLS 1.2 and 1.3 clients."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from janustls.core import ocsp
from janustls.pki import CA, Issued
from tests.ocsp_responder import Responder, closed_port_url
from tests.support import EVENTS, start

HANDLER = """
def serve(sock):
    sock.write(("hi %s\\n" % sock.cert_info("CN")).encode())
"""


@pytest.fixture(scope="module")
def cas() -> tuple[CA, CA]:
    root = CA.create("OCSP Test Root")
    return root, root.intermediate("OCSP Test Intermediate")


@pytest.fixture
def procs(tmp_path: Path) -> Path:
    d = tmp_path / "procs"
    d.mkdir()
    (d / "h.py").write_text(HANDLER)
    return d


class Setup:
    def __init__(self, tmp: Path, cas: tuple[CA, CA], responder: Responder) -> None:
        self.tmp, self.root, self.inter, self.responder = tmp, cas[0], cas[1], responder
        (tmp / "root.pem").write_bytes(self.root.cert_pem)
        server = self.inter.server("localhost", "127.0.0.1")
        self.server_files = server.write(tmp / "server", "server")

    def client(self, name: str, url: str | None = None) -> tuple[Path, Path, Issued]:
        issued = self.inter.issue(name, ocsp_url=url or self.responder.url)
        paths = issued.write(self.tmp / "clients", name)
        return paths["chain"], paths["key"], issued

    def ini(self, procs: Path, extra: str = "") -> str:
        return f"""
[janustls]
procs = {procs}
[port:OC]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {self.server_files["chain"]}
private_key = {self.server_files["key"]}
client_cert = require
addca = {self.tmp / "root.pem"}
handler = h:serve
ocsp = leaf
{extra or "ocsp_timeout = 2"}
"""


@pytest.fixture
def setup(tmp_path: Path, cas: tuple[CA, CA]) -> Any:
    responder = Responder(cas[1])
    yield Setup(tmp_path, cas, responder)
    responder.stop()


def hello(port: int, cert: Path, key: Path, tls: str = "1.3", timeout: float = 10.0) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    try:
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=timeout), server_hostname="localhost"
        ) as s:
            return s.recv(100).decode().strip() or "closed"
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {e}"


def refusal(mark: int, reason: str) -> dict[str, Any]:
    return EVENTS.wait_for(mark, f"janustls.refused.{reason}", "OC", timeout=10)


# -- the pure module, without I/O -------------------------------------------------------


def test_judge_response_rules(cas: tuple[CA, CA]) -> None:
    _root, inter = cas
    r = Responder(inter)
    try:
        leaf = inter.issue("unit")
        nonce = ocsp.new_nonce()
        req = ocsp.build_request(leaf.cert, inter.cert, nonce)
        good = ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce)
        assert good.status is ocsp.Status.GOOD and good.expires is not None
        wrong_nonce = ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=b"x" * 16)
        assert wrong_nonce.status is ocsp.Status.UNAVAILABLE and "nonce" in wrong_nonce.cause
        other = inter.issue("other")
        assert "another certificate" in ocsp.judge_response(r.answer(req), other.cert, inter.cert).cause
        r.status[leaf.cert.serial_number] = "revoked"
        assert ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce).status is ocsp.Status.REVOKED
        r.status.clear()
        r.default = "unknown"
        assert "unknown" in ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce).cause
        r.default = "good"
        r.signer = "wrong_key"
        assert "signature" in ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce).cause
        r.signer = "delegated"
        assert ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce).status is ocsp.Status.GOOD
        r.signer = "delegated_noeku"
        assert "OCSP-signing" in ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce).cause
        r.signer = "issuer"
        r.stale = True
        assert "stale" in ocsp.judge_response(r.answer(req), leaf.cert, inter.cert, nonce=nonce).cause
        # Within the skew, a response just past nextUpdate still counts; past it, not.
        r.stale = False
        answer = r.answer(req)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3600 + 100)
        assert ocsp.judge_response(answer, leaf.cert, inter.cert, now=later).status is ocsp.Status.GOOD
        much_later = later + datetime.timedelta(seconds=600)
        assert ocsp.judge_response(answer, leaf.cert, inter.cert, now=much_later).status is ocsp.Status.UNAVAILABLE
        assert "not an OCSP response" in ocsp.judge_response(b"garbage", leaf.cert, inter.cert).cause
    finally:
        r.stop()


def test_cache_is_bounded_and_expires() -> None:
    cache = ocsp.OCSPCache(max_entries=3)
    now = datetime.datetime.now(datetime.UTC)
    soon = now + datetime.timedelta(seconds=60)
    for i in range(5):
        cache.put(("u", b"k", i), ocsp.Verdict(ocsp.Status.GOOD, expires=soon))
    assert len(cache) == 3 and cache.get(("u", b"k", 0), now) is None and cache.get(("u", b"k", 4), now) is not None
    assert cache.get(("u", b"k", 4), soon + datetime.timedelta(seconds=1)) is None
    cache.put(("u", b"k", 9), ocsp.Verdict(ocsp.Status.UNAVAILABLE, "down"))
    assert cache.get(("u", b"k", 9), now) is None  # no answer is never cached


def test_cert_id_matches_cryptography(cas: tuple[CA, CA]) -> None:
    from cryptography.x509 import ocsp as x509_ocsp

    leaf = cas[1].issue("id")
    req = x509_ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, cas[1].cert, hashes.SHA1()).build()
    assert ocsp.cert_id(leaf.cert, cas[1].cert) == (req.issuer_key_hash, leaf.cert.serial_number)


# -- real responder, real TLS ---------------------------------------------------------------


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_good_is_accepted_and_cached(setup: Setup, procs: Path, tls: str) -> None:
    cert, key, _ = setup.client(f"good{tls}")
    server = start(setup.ini(procs), setup.tmp)
    try:
        port = server.port("OC")
        assert hello(port, cert, key, tls) == f"hi good{tls}"
        assert setup.responder.requests == 1
        assert setup.responder.nonces[-1] is not None
        assert hello(port, cert, key, tls) == f"hi good{tls}"
        assert setup.responder.requests == 1  # the cache answered the second connection
    finally:
        server.stop()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_revoked_is_refused_and_logged(setup: Setup, procs: Path, tls: str) -> None:
    cert, key, issued = setup.client(f"revoked{tls}")
    setup.responder.status[issued.cert.serial_number] = "revoked"
    server = start(setup.ini(procs), setup.tmp)
    try:
        mark = EVENTS.mark()
        result = hello(server.port("OC"), cert, key, tls)
        assert not result.startswith("hi"), result
        event = refusal(mark, "revoked")
        assert "by OCSP" in event["detail"] and event["depth"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    "setting, cause",
    [
        ("unknown", "unknown"),
        ("wrong_key", "signature does not verify"),
        ("stale", "stale"),
        ("delegated_noeku", "OCSP-signing"),
        ("garbage", "not an OCSP response"),
    ],
)
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_no_usable_answer_is_refused(setup: Setup, procs: Path, tls: str, setting: str, cause: str) -> None:
    cert, key, _ = setup.client(f"{setting}{tls}")
    r = setup.responder
    if setting == "unknown":
        r.default = "unknown"
    elif setting == "stale":
        r.stale = True
    elif setting == "garbage":
        r.garbage = True
    else:
        r.signer = setting
    server = start(setup.ini(procs), setup.tmp)
    try:
        mark = EVENTS.mark()
        assert not hello(server.port("OC"), cert, key, tls).startswith("hi")
        event = refusal(mark, "ocsp_unavailable")
        assert cause in event["detail"], event["detail"]
    finally:
        server.stop()


def test_delegated_responder_with_the_usage_is_accepted(setup: Setup, procs: Path) -> None:
    cert, key, _ = setup.client("delegated")
    setup.responder.signer = "delegated"
    server = start(setup.ini(procs), setup.tmp)
    try:
        assert hello(server.port("OC"), cert, key) == "hi delegated"
    finally:
        server.stop()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_responder_down_refuse_or_tolerate(setup: Setup, procs: Path, tls: str) -> None:
    down = closed_port_url()
    cert, key, _ = setup.client(f"down{tls}", url=down)
    server = start(setup.ini(procs, "ocsp_fail = refuse\nocsp_timeout = 2"), setup.tmp)
    try:
        mark = EVENTS.mark()
        assert not hello(server.port("OC"), cert, key, tls).startswith("hi")
        assert down in refusal(mark, "ocsp_unavailable")["detail"]
    finally:
        server.stop()
    server = start(setup.ini(procs, "ocsp_fail = tolerate\nocsp_timeout = 2"), setup.tmp)
    try:
        mark = EVENTS.mark()
        assert hello(server.port("OC"), cert, key, tls) == f"hi down{tls}"
        assert EVENTS.wait_for(mark, "janustls.ocsp.tolerated", "OC")["url"] == down
    finally:
        server.stop()


def test_down_responder_costs_one_timeout_per_interval(setup: Setup, procs: Path) -> None:
    """ocsp_fail = tolerate with a responder that never answers in time: the failure is cached
    briefly (negative cache), so only the first connection waits ocsp_timeout."""
    from janustls.ops.ocspcheck import STATS

    cert, key, _ = setup.client("stalled")
    setup.responder.delay = 3.0
    asked = STATS["requests"]
    server = start(setup.ini(procs, "ocsp_fail = tolerate\nocsp_timeout = 1"), setup.tmp)
    try:
        port = server.port("OC")
        t0 = time.monotonic()
        assert hello(port, cert, key) == "hi stalled"
        assert time.monotonic() - t0 >= 0.9  # the first one waited for the timeout
        for _ in range(3):
            t0 = time.monotonic()
            assert hello(port, cert, key) == "hi stalled"
            assert time.monotonic() - t0 < 0.5  # the cached failure answered at once
        assert STATS["requests"] - asked == 1  # the responder was asked once
    finally:
        server.stop()
    from janustls.ops.ocspcheck import negative_ttl

    assert negative_ttl(1.0) == 10.0 and negative_ttl(5.0) == 30.0


def test_ocsp_responder_key_overrides_the_certificate(setup: Setup, procs: Path) -> None:
    cert, key, _ = setup.client("override", url=closed_port_url())
    server = start(setup.ini(procs, f"ocsp_responder = {setup.responder.url}"), setup.tmp)
    try:
        assert hello(server.port("OC"), cert, key) == "hi override"
        assert setup.responder.requests == 1
    finally:
        server.stop()


def test_chain_asks_about_the_intermediate_too(tmp_path: Path, procs: Path) -> None:
    root = CA.create("Chain OCSP Root")
    root_responder = Responder(root)
    inter = root.intermediate("Chain OCSP Intermediate", ocsp_url=root_responder.url)
    responder = Responder(inter)
    try:
        s = Setup(tmp_path, (root, inter), responder)
        cert, key, _ = s.client("chained")
        server = start(s.ini(procs).replace("ocsp = leaf", "ocsp = chain"), tmp_path)
        try:
            assert hello(server.port("OC"), cert, key) == "hi chained"
            assert responder.requests == 1 and root_responder.requests == 1  # the root itself is never asked
            root_responder.status[inter.cert.serial_number] = "revoked"
            from janustls.ops.ocspcheck import CACHE

            CACHE.clear()
            mark = EVENTS.mark()
            assert not hello(server.port("OC"), cert, key).startswith("hi")
            assert refusal(mark, "revoked")["depth"] == 1
        finally:
            server.stop()
    finally:
        responder.stop()
        root_responder.stop()


def test_concurrent_lookups_share_one_request(setup: Setup, procs: Path) -> None:
    cert, key, _ = setup.client("together")
    setup.responder.delay = 1.0
    server = start(setup.ini(procs), setup.tmp)
    try:
        port = server.port("OC")
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(hello(port, cert, key))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert results == ["hi together"] * 4
        assert setup.responder.requests == 1
    finally:
        server.stop()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_slow_responder_costs_only_its_client(setup: Setup, procs: Path, tls: str) -> None:
    slow_cert, slow_key, _ = setup.client(f"slow{tls}")
    fast_cert, fast_key, _ = setup.client(f"fast{tls}")
    server = start(setup.ini(procs, "ocsp_timeout = 10"), setup.tmp)
    try:
        port = server.port("OC")
        assert hello(port, fast_cert, fast_key, tls) == f"hi fast{tls}"  # its answer is cached now
        setup.responder.delay = 3.0
        slow: list[tuple[str, float]] = []

        def slow_client() -> None:
            t0 = time.monotonic()
            slow.append((hello(port, slow_cert, slow_key, tls), time.monotonic() - t0))

        t = threading.Thread(target=slow_client)
        t.start()
        time.sleep(0.3)
        latencies = []
        while t.is_alive() and len(latencies) < 50:
            t0 = time.monotonic()
            assert hello(port, fast_cert, fast_key, tls) == f"hi fast{tls}"
            latencies.append(time.monotonic() - t0)
        t.join(15)
        assert slow and slow[0][0] == f"hi slow{tls}" and slow[0][1] >= 2.5, slow
        assert len(latencies) >= 5, latencies
        assert max(latencies) < 1.0, latencies  # never waited for the stalled responder
        print(f"TLS {tls}: {len(latencies)} handshakes during the 3 s stall, max {max(latencies) * 1000:.1f} ms, "
              f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")  # fmt: skip
    finally:
        server.stop()


def test_status_metrics_and_check_show_ocsp(setup: Setup, procs: Path, tmp_path: Path) -> None:
    import json
    import urllib.request

    from tests.ocsp_responder import free_port

    cert, key, _ = setup.client("shown")
    status_port = free_port()
    ini = setup.ini(procs) + f"[status]\nlisten = tcp:{status_port}:interface=127.0.0.1\n"
    server = start(ini, setup.tmp)
    try:
        assert hello(server.port("OC"), cert, key) == "hi shown"
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=5).read())
        oc = next(p for p in doc["ports"] if p["name"] == "OC")
        assert oc["ocsp"]["scope"] == "leaf" and oc["ocsp"]["cache"]["cache_entries"] >= 1
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5).read().decode()
        assert 'janustls_ocsp_answers_total{port="OC",status="good"}' in metrics
        assert "janustls_ocsp_cache_entries" in metrics
    finally:
        server.stop()
    # janustls check: no responder to ask for the stapled certificate.
    import subprocess
    import sys

    path = tmp_path / "check.ini"
    path.write_text(setup.ini(procs) + "ocsp_staple = yes\n")
    done = subprocess.run(
        [sys.executable, "-m", "janustls.cli", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "OCSP         leaf" in done.stdout, done.stdout + done.stderr
    assert "server certificate names no OCSP responder" in done.stdout


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_resumed_session_is_judged_again(setup: Setup, procs: Path, tls: str) -> None:
    from janustls.ops.ocspcheck import CACHE

    cert, key, issued = setup.client(f"resumed{tls}")
    server = start(setup.ini(procs), setup.tmp)
    try:
        port = server.port("OC")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if tls == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        ) as s:
            assert s.recv(100) == f"hi resumed{tls}\n".encode()
            session = s.session
        setup.responder.status[issued.cert.serial_number] = "revoked"
        CACHE.clear()  # as when the cached answer reaches its nextUpdate
        mark = EVENTS.mark()
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost",
                             session=session) as s:  # fmt: skip
            try:
                data = s.recv(100)
            except (ssl.SSLError, ConnectionError):
                data = b""
            assert s.session_reused
        assert data == b""
        assert "by OCSP" in refusal(mark, "revoked")["detail"]
    finally:
        server.stop()


MIDCONN_HANDLER = """
async def serve(sock):
    sock.write(b"hello\\n")
    while True:
        line = await sock.readline()
        if not line:
            return
        cert = await sock.request_certificate()
        sock.write(("got %s\\n" % sock.cert_info("CN")).encode())
"""


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_mid_connection_certificate_is_judged_by_ocsp(setup: Setup, procs: Path, tls: str) -> None:
    (procs / "m.py").write_text(MIDCONN_HANDLER)
    good, good_key, _ = setup.client(f"midgood{tls}")
    bad, bad_key, issued = setup.client(f"midbad{tls}")
    setup.responder.status[issued.cert.serial_number] = "revoked"
    ini = setup.ini(procs).replace("client_cert = require", "client_cert = none").replace("h:serve", "m:serve")
    server = start(ini, setup.tmp)
    try:
        for cert, key, expected in ((good, good_key, f"got midgood{tls}"), (bad, bad_key, "")):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if tls == "1.2":
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            else:
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
                ctx.post_handshake_auth = True
            ctx.load_cert_chain(cert, key)
            mark = EVENTS.mark()
            with ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", server.port("OC")), timeout=10), server_hostname="localhost"
            ) as s:
                f = s.makefile("rb", buffering=0)
                assert f.readline() == b"hello\n"
                s.sendall(b"ask\n")
                try:
                    answer = f.readline().decode().strip()
                except (ssl.SSLError, ConnectionError):
                    answer = ""
            assert answer == expected
            if not expected:
                event = EVENTS.wait_for(mark, "janustls.request.refused", "OC", timeout=10)
                assert event["reason"] == "revoked" and "by OCSP" in event["detail"]
    finally:
        server.stop()


WEB_VIEWS = """
def who(request):
    return "hi %s" % request.connection.cert_info("CN")

def certerr(request):
    return "certerr: %s" % request.refusal.reason.value
"""


def https_get(port: int, path: str, cert: Path, key: Path, tls: str, pha: bool = False) -> tuple[int, bytes]:
    import http.client

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.post_handshake_auth = pha
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_web_port_sslcerterr_answers_an_ocsp_refusal(setup: Setup, procs: Path, tls: str) -> None:
    """On a web port with ON SSLCERTERR, a certificate refused by OCSP goes to the handler
    (with the typed reason), as any other refused certificate does, at the handshake and
    when asked for mid-connection; the refusal is logged."""
    (procs / "views.py").write_text(WEB_VIEWS)
    cert, key, issued = setup.client(f"webrevoked{tls}")
    good_cert, good_key, _ = setup.client(f"webgood{tls}")
    setup.responder.status[issued.cert.serial_number] = "revoked"
    common = f"""
type = webserv
listen = tcp:0:interface=127.0.0.1
certificate = {setup.server_files["chain"]}
private_key = {setup.server_files["key"]}
addca = {setup.tmp / "root.pem"}
ocsp = leaf
ocsp_timeout = 2
request_timeout = 3
"""
    text = f"""
[janustls]
procs = {procs}
[port:OCWEB]
client_cert = require
{common}
[web:OCWEB]
ON /* = call views:who
ON SSLCERTERR = call views:certerr status=495
[port:OCMID]
client_cert = none
{common}
[web:OCMID]
ON /need = call views:who client_cert=require
ON SSLCERTERR = call views:certerr status=495
"""
    server = start(text, setup.tmp)
    try:
        for name in ("OCWEB", "OCMID"):
            port = server.port(name)
            mark = EVENTS.mark()
            assert https_get(port, "/need", good_cert, good_key, tls, pha=True) == (200, f"hi webgood{tls}".encode())
            assert https_get(port, "/need", cert, key, tls, pha=True) == (495, b"certerr: revoked"), name
            if name == "OCWEB":
                assert "by OCSP" in EVENTS.wait_for(mark, "janustls.refused.revoked", name)["detail"]
            else:  # asked mid-connection: the request's outcome, as for any refused certificate
                event = EVENTS.wait_for(mark, "janustls.request.refused", name)
                assert event["reason"] == "revoked" and "by OCSP" in event["detail"], event
    finally:
        server.stop()


def test_explain_shows_ocsp_and_asks_with_the_flag(setup: Setup, procs: Path) -> None:
    """`janustls explain` says which responder a port would ask about which certificate (no
    network by default), and with --ocsp asks it and lets the answer decide."""
    import subprocess
    import sys

    good, _, _ = setup.client("explaingood")
    revoked, _, issued = setup.client("explainrevoked")
    setup.responder.status[issued.cert.serial_number] = "revoked"
    plain = setup.inter.issue("explainnoaia").write(setup.tmp / "clients", "explainnoaia")["chain"]
    ini = setup.tmp / "ports.ini"
    ini.write_text(setup.ini(procs))

    def explain(chain: Path, *flags: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "janustls.cli", "explain", str(ini), "OC", str(chain), *flags],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    code, out = explain(revoked)
    assert code == 0 and f"[0] would be asked of {setup.responder.url}" in out and "not asked" in out, out
    assert setup.responder.requests == 0  # nothing fetched without --ocsp
    code, out = explain(revoked, "--ocsp")
    assert code == 2 and "REFUSED (revoked" in out and "OCSP answer: [0] revoked" in out, out
    code, out = explain(good, "--ocsp")
    assert code == 0 and "ACCEPTED" in out and "OCSP answer: [0] good" in out, out
    code, out = explain(plain, "--ocsp")
    assert code == 2 and "names no responder" in out and "REFUSED (ocsp_unavailable" in out, out
