"""Embedding: a web rule's action given as the Python callable itself, served to a real client."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import Any

import pytest

from janustls.core.config import WebRuleLine, port_from_options
from janustls.errors import ConfigErrors
from janustls.ops.build import build_port, listen
from tests.support import client_context, in_reactor


def hello(request: Any) -> str:
    return "hello %s" % request.connection.cert_info("CN")


def get(port: int, path: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_callable_action_targets(pki: Any, reactor: Any, tmp_path: Path) -> None:
    f = pki.files
    port = port_from_options("EMB", {
        "type": "webserv", "listen": "tcp:0:interface=127.0.0.1", "certificate": str(f["server.pem"]),
        "private_key": str(f["server.key"]), "client_cert": "request", "addca": str(f["root.ca"]),
    }, procs=tmp_path)  # fmt: skip
    created = {}

    def make(request: Any) -> dict[str, str]:
        created["by"] = request.connection.cert_info("CN")
        return {"created": "yes"}

    def certerr(request: Any) -> str:
        return "certerr: %s" % request.refusal.reason.value

    rules = [
        WebRuleLine("ON /hello", hello),  # the callable alone: `call`
        WebRuleLine("ON /make", (make, "allow=cn:alice")),  # with the rule's options
        WebRuleLine("ON /lambda", lambda request: b"bytes"),
        WebRuleLine("ON FORBIDDEN", (certerr, "status=403")),
    ]
    listening = in_reactor(lambda: listen(port, tmp_path, web=rules))
    try:
        n = listening.getHost().port
        assert get(n, "/hello", client_context(pki, "alice")) == (200, b"hello alice")
        status, body = get(n, "/make", client_context(pki, "alice"))
        assert status == 200 and b'"created"' in body and created == {"by": "alice"}
        assert get(n, "/make", client_context(pki, "bob")) == (403, b"certerr: not_allowed")
        assert get(n, "/lambda", client_context(pki, "alice")) == (200, b"bytes")
    finally:
        in_reactor(listening.stopListening)


def test_a_callable_where_none_fits_is_a_located_error(pki: Any, tmp_path: Path) -> None:
    f = pki.files
    port = port_from_options("EMB", {
        "type": "webserv", "listen": "tcp:0:interface=127.0.0.1", "certificate": str(f["server.pem"]),
        "private_key": str(f["server.key"]),
    }, procs=tmp_path)  # fmt: skip
    with pytest.raises(ConfigErrors) as e:
        build_port(port, tmp_path, web=[WebRuleLine("REDIRECT /x", hello), WebRuleLine("ON /y", (hello, 3))])
    text = str(e.value)
    assert "REDIRECT /x" in text and "ON /y" in text, text
