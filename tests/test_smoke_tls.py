"""A first end-to-end check: a require port, a good client, a refused one."""

from __future__ import annotations

import ssl

import pytest

from tests.support import client_context, definitions, install_handlers, secure_port, start, talk


@pytest.fixture
def server(pki, reactor, procs):
    install_handlers(procs, h="cn_levels_version")
    s = start(definitions(procs, secure_port(pki)), procs)
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
