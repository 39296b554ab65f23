"""A real OCSP responder for the tests: stdlib HTTP server in a thread on 127.0.0.1, answers
built with cryptography's OCSP builder; every way a responder can be wrong is a setting."""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from janustls.pki import CA, Issued, make_key
from tests.support import free_port


@dataclass
class Responder:
    """Answers for one CA.  `status`: serial -> good | revoked | unknown (default `default`).

    `signer`: issuer | wrong_key | delegated | delegated_noeku; `stale`: nextUpdate in the
    past; `delay`: seconds before answering; `garbage`: not an OCSP response at all.
    """

    ca: CA
    default: str = "good"
    status: dict[int, str] = field(default_factory=dict)
    signer: str = "issuer"
    stale: bool = False
    delay: float = 0.0
    garbage: bool = False
    validity: float = 3600.0
    requests: int = 0
    port: int = 0
    nonces: list[bytes | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The issuer's name with another key: a response "from the issuer" that its key did not sign.
        self._wrong = make_key()
        now = datetime.datetime.now(datetime.UTC)
        self._impostor = (
            x509.CertificateBuilder().subject_name(self.ca.cert.subject).issuer_name(self.ca.cert.subject)
            .public_key(self._wrong.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._wrong, hashes.SHA256())
        )  # fmt: skip
        self._delegated = self.ca.issue("OCSP responder", usage="ocsp")
        self._noeku = self.ca.issue("not an OCSP responder", usage="client")
        self._lock = threading.Lock()
        handler = _handler(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="ocsp-responder")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ocsp"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request_der: bytes) -> bytes:
        with self._lock:
            self.requests += 1
        if self.garbage:
            return b"this is not an OCSP response"
        req = ocsp.load_der_ocsp_request(request_der)
        try:
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            nonce = None
        self.nonces.append(nonce)
        now = datetime.datetime.now(datetime.UTC)
        if self.stale:
            this_update, next_update = now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)
        else:
            this_update, next_update = (
                now - datetime.timedelta(minutes=1),
                now + datetime.timedelta(seconds=self.validity),
            )
        state = self.status.get(req.serial_number, self.default)
        cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                       "unknown": ocsp.OCSPCertStatus.UNKNOWN}[state]  # fmt: skip
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=req.issuer_name_hash,
            issuer_key_hash=req.issuer_key_hash,
            serial_number=req.serial_number,
            algorithm=req.hash_algorithm,
            cert_status=cert_status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=now - datetime.timedelta(hours=1) if state == "revoked" else None,
            revocation_reason=x509.ReasonFlags.key_compromise if state == "revoked" else None,
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        key: Any = self.ca.key
        if self.signer == "issuer":
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca.cert)
        elif self.signer == "wrong_key":
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, self._impostor)
            key = self._wrong
        else:
            delegate: Issued = self._delegated if self.signer == "delegated" else self._noeku
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, delegate.cert).certificates([delegate.cert])
            key = delegate.key
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _handler(responder: Responder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if responder.delay:
                time.sleep(responder.delay)
            data = responder.answer(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a responder that is down)."""
    return f"http://127.0.0.1:{free_port()}/ocsp"
