"""Asking for a client certificate in the middle of a connection, whatever the TLS version.

TLS 1.2: a server-initiated renegotiation forced to a full handshake.  TLS 1.3:
post-handshake authentication, when the client offered it.  Both end the same way:
a Deferred firing with the verified chain ([] without a certificate), after the
port's own trust decided; a client that cannot be asked, ignores the request, or
never answers gets a clean outcome instead of a hung connection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.core.reasons import Reason, Refusal
from janustls.errors import CertificateRequestTimeout
from janustls.events import emit
from janustls.tls import _openssl
from janustls.tls.policy import PortTLS
from janustls.tls.protocol import PortTLSProtocol, refusal_for_failure

#: The port's OCSP verdict on a chain (`ops.ocspcheck.OCSPChecker.judge`): a refusal, None, or a Deferred of either.
Judge = Callable[[list[x509.Certificate]], Any]

__all__ = ["Outcome", "CertificateRequest", "can_request"]


class Outcome(str, enum.Enum):
    """How a mid-connection request ended; each has the event id `janustls.request.<value>`."""

    CERTIFICATE = "certificate"
    NO_CERTIFICATE = "no_certificate"
    REFUSED = "refused"
    UNSUPPORTED = "unsupported"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    CLOSED = "closed"

    @property
    def event_id(self) -> str:
        return f"janustls.request.{self.value}"


def can_request(tls: PortTLSProtocol, connection: SSL.Connection) -> tuple[bool, str]:
    """Whether this connection can be asked for a certificate now, and if not why."""
    version = connection.get_protocol_version_name()
    hello = tls.client_hello()
    if version == "TLSv1.3":
        if not _openssl.HAS_POST_HANDSHAKE_AUTH:
            return False, "the installed OpenSSL bindings lack post-handshake authentication"
        if hello is not None and not hello.post_handshake_auth:
            return False, "the client did not offer post-handshake authentication (TLS 1.3)"
        return True, "post-handshake authentication"
    if version == "TLSv1.2":
        if hello is not None and not hello.secure_renegotiation:
            return False, "the client does not support secure renegotiation"
        return True, "renegotiation"
    return False, f"{version} cannot be asked"


class CertificateRequest:
    """One mid-connection request on one connection (Janus: at most one per TLS session)."""

    def __init__(self, tls: PortTLSProtocol, policy: PortTLS, *, require: bool, timeout: float, reactor: Any,
                 judge: Judge | None, port: str, peer: str) -> None:  # fmt: skip
        """`tls`: the connection's TLS protocol; `policy`: the port's TLS policy it was accepted
        with (its trust judges the answer); `judge`: the port's OCSP verdict, if it checks OCSP."""
        self.require = require
        self.timeout = timeout
        self.result: defer.Deferred[list[x509.Certificate]] = defer.Deferred()
        self._timer: IDelayedCall | None = None
        self._tls = tls
        self._policy = policy
        self._reactor = reactor
        self._judge = judge
        self._port = port
        self._peer = peer
        self._conn: SSL.Connection = self._tls.getHandle()
        self._version = self._conn.get_protocol_version_name()
        self._done = False
        self._finished_read = False

    def _client_finished(self) -> None:
        self._finished_read = True

    def start(self) -> defer.Deferred[list[x509.Certificate]]:
        ok, why = can_request(self._tls, self._conn)
        if not ok:
            self._finish(Outcome.UNSUPPORTED, [], why)
            return self.result
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if self.require else 0)
        try:
            if self._version == "TLSv1.3":
                # Keeps the context's verify callback (a None callback leaves it in place).
                self._conn.set_verify(mode | _openssl.VERIFY_POST_HANDSHAKE)
                _openssl.watch_client_finished(self._conn, self._client_finished)
                if not _openssl.verify_client_post_handshake(self._conn):
                    self._conn.set_verify(SSL.VERIFY_NONE)
                    self._finish(Outcome.UNSUPPORTED, [], "the client did not offer post-handshake authentication")
                    return self.result
            else:
                self._conn.set_verify(mode)
                self._conn.renegotiate()
            _openssl.drive_handshake(self._tls)
        except SSL.Error as e:
            self._finish(Outcome.UNSUPPORTED, [], f"OpenSSL refused to ask: {e}")
            return self.result
        self._tls.after_receive = self.check
        self._timer = self._reactor.callLater(self.timeout, self._expired)
        return self.result

    def check(self) -> None:
        """After each batch of bytes OpenSSL processed: has the client answered?"""
        if self._done:
            return
        if self._version == "TLSv1.3":
            answered = self._finished_read
        else:
            answered = not self._conn.renegotiate_pending()
        if not answered:
            return
        chain = self._policy.verified_chain(self._conn)
        if not chain:
            self._finish(Outcome.NO_CERTIFICATE, [], "the client sent no certificate")
            return
        verdict = self._judge(chain) if self._judge is not None else None
        if isinstance(verdict, defer.Deferred):
            self._tls.after_receive = None  # answered; the OCSP verdict decides
            verdict.addCallback(self._judged, chain)
            return
        self._judged(verdict, chain)

    def _judged(self, refusal: Refusal | None, chain: list[x509.Certificate]) -> None:
        """The OCSP verdict on a certificate given mid-connection, as at the handshake."""
        if self._done:
            return
        if refusal is None:
            self._finish(Outcome.CERTIFICATE, chain, chain[0].subject.rfc4514_string())
            return
        self._tls.refusal = refusal
        self._finish(Outcome.REFUSED, [], str(refusal), refusal.reason)
        if not self._policy.tolerate_refused:  # else the web layer answers SSLCERTERR, as for any refused certificate
            self._tls.abortConnection()

    def _expired(self) -> None:
        self._timer = None
        if not self._done:
            self._finish(Outcome.TIMEOUT, [], f"no answer within {self.timeout:g}s")

    def lost(self, reason: Failure | None) -> None:
        """The connection ended while the request was under way."""
        if self._done:
            return
        refusal = refusal_for_failure(self._tls, reason)
        if refusal is not None:
            self._finish(Outcome.REFUSED, [], str(refusal), refusal.reason)
        elif reason is not None and "no_renegotiation" in str(reason.value).lower():
            self._finish(Outcome.DECLINED, [], "the client refused to renegotiate")
        else:
            self._finish(Outcome.CLOSED, [], "the connection closed before the client answered")

    def _finish(
        self, outcome: Outcome, chain: list[x509.Certificate], detail: str, reason: Reason | None = None
    ) -> None:
        self._done = True
        if self._tls.after_receive == self.check:
            self._tls.after_receive = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        emit(
            outcome.event_id,
            "port {port}: certificate request to {peer} ({version}): {outcome}: {detail}",
            LogLevel.warn if outcome in (Outcome.REFUSED, Outcome.TIMEOUT) else LogLevel.info,
            port=self._port,
            peer=self._peer,
            version=self._version,
            outcome=outcome.value,
            detail=detail,
            reason=reason.value if reason else None,
        )
        if outcome is Outcome.TIMEOUT:
            self.result.errback(CertificateRequestTimeout(f"the client did not answer within {self.timeout:g}s"))
        else:
            self.result.callback(chain)
