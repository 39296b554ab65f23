"""A refusal names the client's certificate: the leaf's serial, SHA-256 fingerprint and issuer,
in the text and as JSON fields, whichever certificate of the chain was at fault."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from janustls.core.reasons import Reason
from janustls.events import CATALOGUE
from janustls.ops.logs import json_lines_observer
from tests.support import EVENTS, client_context, definitions, install_handlers, secure_port, start, tls_connect


@pytest.fixture(scope="module")
def server(pki, reactor, tmp_path_factory):
    procs = tmp_path_factory.mktemp("procs_refusal_logs")
    install_handlers(procs, ok="ok")
    f = pki.files
    s = start(
        definitions(
            procs,
            secure_port(pki, "SECURE", handler="ok:serve", crl=f["inter.crl"], verify_depth=2),
            secure_port(pki, "ALLOW", handler="ok:serve", allow="cn:bob"),
        ),
        procs,
    )
    yield s
    s.stop()


def refusal_event(port: int, pki: Any, cert: str, port_name: str) -> dict[str, Any]:
    mark = EVENTS.mark()
    try:
        with tls_connect(port, client_context(pki, cert, tls="1.3")) as s:
            s.recv(100)
    except (ssl.SSLError, ConnectionError):
        pass
    return EVENTS.wait_for(mark, "janustls.refused", port=port_name)


@pytest.mark.parametrize(
    "cert, port_name, reason",
    [
        ("revoked", "SECURE", "revoked"),  # the leaf itself at fault
        ("othera", "SECURE", "unknown_ca"),
        ("deep", "SECURE", "chain_too_long"),  # a CA of the chain at fault, above the leaf
        ("expired", "SECURE", "expired"),
        ("alice", "ALLOW", "not_allowed"),  # an identity rule, after the handshake
    ],
)
def test_refusals_name_the_leaf(server, pki, cert, port_name, reason):
    event = refusal_event(server.port(port_name), pki, cert, port_name)
    leaf = pki.issued[cert].cert
    assert event["reason"] == reason
    assert event["serial"] == format(leaf.serial_number, "X")
    assert event["fingerprint"] == leaf.fingerprint(hashes.SHA256()).hex()
    assert event["issuer"] == leaf.issuer.rfc4514_string()
    out = io.StringIO()
    json_lines_observer(out)(event)
    line = json.loads(out.getvalue())
    assert (
        line["serial"] == event["serial"]
        and line["fingerprint"] == event["fingerprint"]
        and line["issuer"] == event["issuer"]
    )
    assert (
        event["serial"] in line["message"]
        and event["fingerprint"] in line["message"]
        and event["issuer"] in line["message"]
    )


def test_a_refusal_without_a_certificate_has_no_leaf_fields(server, pki):
    mark = EVENTS.mark()
    try:
        with tls_connect(server.port("SECURE"), client_context(pki, None, tls="1.3")) as s:
            s.recv(100)
    except (ssl.SSLError, ConnectionError):
        pass
    event = EVENTS.wait_for(mark, "janustls.refused", port="SECURE")
    assert event["reason"] == "no_certificate" and event.get("serial") is None


def test_the_catalogue_says_so():
    for reason in Reason:
        assert "serial" in CATALOGUE[reason.event_id] and "fingerprint" in CATALOGUE[reason.event_id]
    assert "serial" in (Path(__file__).parents[1] / "docs" / "events.md").read_text()
