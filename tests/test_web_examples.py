"""The web examples of procs/ (procs/web.ini, procs/web/) run as the README shows them."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from janustls.pki import write_dev_pki
from tests.support import start

PROCS = Path(__file__).resolve().parent.parent / "procs"


@pytest.fixture(scope="module")
def demo(reactor, tmp_path_factory):
    top = tmp_path_factory.mktemp("webdemo")
    d = top / "procs"  # the layout of the checkout: procs/ and, beside it, pki/
    shutil.copytree(PROCS / "web", d / "web", ignore=shutil.ignore_patterns("__pycache__"))
    pki = write_dev_pki(top / "pki", clients=("alice",))
    ini = (PROCS / "web.ini").read_text()
    (d / "web.ini").write_text(ini)
    text = ini.replace("tcp:8445:", "tcp:0:").replace("tcp:8446:", "tcp:0:")
    s = start(text, d)
    yield s, d, pki
    s.stop()


def client(pki, cert: bool, tls: str = "1.2") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.root)
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        alice = pki.clients["alice"]
        ctx.load_cert_chain(alice["chain"], alice["key"])
    return ctx


def get(port: int, ctx: ssl.SSLContext, path: str, accept: str | None = None):
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    c.request("GET", path, headers={"Accept": accept} if accept else {})
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


def test_whoami_page(demo):
    s, _, pki = demo
    status, body = get(s.port("WEB"), client(pki, False), "/whoami")
    assert status == 200 and b"hello anonymous" in body
    status, body = get(s.port("SECURE"), client(pki, True, "1.3"), "/whoami")
    assert status == 200 and b"hello alice" in body


def test_nocert_page(demo):
    s, _, pki = demo
    status, body = get(s.port("SECURE"), client(pki, False, "1.3"), "/whoami")
    assert status == 403 and b"This page needs a client certificate" in body


def test_path_that_requires_a_certificate(demo):
    s, _, pki = demo
    status, body = get(s.port("WEB"), client(pki, True), "/admin/")
    assert status == 200 and b"signed in as alice" in body
    status, body = get(s.port("WEB"), client(pki, False), "/admin/")
    assert status == 403 and b"needs a client certificate" in body


def test_wsgi_app_reads_ssl_client_s_dn_cn(demo):
    s, _, pki = demo
    status, body = get(s.port("SECURE"), client(pki, True, "1.3"), "/app/x")
    assert status == 200 and body.startswith(b"hello alice\nverify: SUCCESS\npath: /app|/x\n")


def test_janustls_check_accepts_the_example(demo):
    _, d, _ = demo
    out = subprocess.run(
        [sys.executable, "-m", "janustls.cli", "check", str(d / "web.ini")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
