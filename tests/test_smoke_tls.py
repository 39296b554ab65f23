"""A first end-to-end check: a require port, a good client, a refused one."""

from __future__ import annotations

import ssl

import pytest

from tests.support import client_context, start, talk

ECHO = '''
async def serve(sock):
    sock.write(("%s|%d|%s\\n" % (sock.cert_info("CN"), sock.cert_levels(), sock.tls_version)).encode())
'''


@pytest.fixture
def server(pki, reactor, procs):
    (procs / "h.py").write_text(ECHO)
    s = start(
        f"""
[janustls]
procs = {procs}
[port:SECURE]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {pki.files['server.pem']}
private_key = {pki.files['server.key']}
client_cert = require
addca = {pki.files['root.ca']}
handler = h:serve
""",
        procs,
    )
    yield s
    s.stop()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_good_client(server, pki, version):
    out = talk(server.port("SECURE"), client_context(pki, "alice", tls=version))
    assert out == f"alice|3|TLSv{version}\n".encode()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_no_certificate_refused(server, pki, events, version):
    mark = events.mark()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        talk(server.port("SECURE"), client_context(pki, None, tls=version))
    e = events.wait_for(mark, "janustls.refused", "SECURE")
    assert e["reason"] == "no_certificate"
