"""OCSP stapling of a port's own certificate (`ocsp_staple = yes`).

The response is fetched in the background from the certificate's responder (its
Authority Information Access, or `ocsp_responder`), verified like any OCSP answer
(`janustls.core.ocsp.judge_response`), stapled only while it is current and says "good", and
fetched again halfway to its nextUpdate.  While there is none the port serves without a
staple and asks again after 1, 2, 4 ... seconds, never more than 30 s apart.  One
stapler per port and certificate survives the port's rebuilds (a CRL change, a reload);
a rotated certificate gets its own, which starts only when the rebuilt port is adopted
(a refused reload or rotation leaves the live port's stapler running).
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.core.config import PortDefinition
from janustls.core.ocsp import Status, build_request, judge_response, new_nonce, responder_url
from janustls.events import emit
from janustls.ops import httpfetch

__all__ = ["Stapler", "stapler_for", "swap", "MAX_RETRY"]

#: Longest wait between attempts while no usable response is at hand.
MAX_RETRY = 30.0
MAX_RESPONSE_BYTES = 64 * 1024

_STAPLERS: dict[tuple[str, bytes], Stapler] = {}


class Stapler:
    """Keeps a current, verified OCSP response for one certificate."""

    def __init__(
        self, port: PortDefinition, leaf: x509.Certificate, issuer: x509.Certificate | None, reactor: Any
    ) -> None:
        self.port = port
        self.leaf = leaf
        self.issuer = issuer
        self.reactor = reactor
        self.url = port.ocsp_responder or responder_url(leaf)
        self.response: bytes = b""
        self.expires: datetime.datetime | None = None
        self.last_error: str | None = None
        self._retry = 1.0
        self._timer: IDelayedCall | None = None
        self._stopped = False
        #: Started and not stopped since (a built port's stapler runs only once the port serves).
        self.running = False

    def current(self) -> bytes:
        """The DER response to staple now, or b"" (no staple)."""
        if self.expires is None or self.expires <= datetime.datetime.now(datetime.UTC):
            return b""
        return self.response

    def start(self) -> None:
        self._stopped = False
        self.running = True
        if self._timer is None:
            self._timer = self.reactor.callLater(0, self._fetch)

    def stop(self) -> None:
        self._stopped = True
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._timer = self.reactor.callLater(delay, self._fetch)

    def _failed(self, cause: str) -> None:
        self.last_error = cause
        delay, self._retry = self._retry, min(self._retry * 2, MAX_RETRY)
        emit(
            "janustls.staple.failed",
            "port {port}: no OCSP response to staple from {url}: {cause}; serving without, next try in {retry:g}s",
            LogLevel.warn,
            port=self.port.name,
            url=self.url,
            cause=cause,
            retry=delay,
        )
        self._schedule(delay)

    def _fetch(self) -> None:
        self._timer = None
        if self._stopped:
            return
        if self.url is None or self.issuer is None:
            why = (
                "the certificate names no OCSP responder"
                if self.url is None
                else "the certificate file holds no issuer"
            )
            self._failed(f"{why} (set ocsp_responder, or give the chain)")
            return
        nonce = new_nonce()
        d = httpfetch.fetch(
            self.reactor,
            self.url,
            method=b"POST",
            body=build_request(self.leaf, self.issuer, nonce),
            headers={"Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"},
            timeout=self.port.ocsp_timeout,
            max_size=MAX_RESPONSE_BYTES,
        )
        d.addCallbacks(lambda answer: self._got(answer, nonce), self._unreachable)

    def _unreachable(self, failure: Failure) -> None:
        self._failed(failure.getErrorMessage())

    def _got(self, answer: httpfetch.Fetched, nonce: bytes) -> None:
        if answer.code != 200:
            self._failed(f"the responder answered HTTP {answer.code}")
            return
        assert self.issuer is not None
        verdict = judge_response(answer.body, self.leaf, self.issuer, nonce=nonce)
        if verdict.status is not Status.GOOD or verdict.expires is None:
            self._failed(
                verdict.cause if verdict.status is Status.UNAVAILABLE else f"the certificate is {verdict.status.value}"
            )
            return
        self.response, self.expires, self.last_error = answer.body, verdict.expires, None
        self._retry = 1.0
        now = datetime.datetime.now(datetime.UTC)
        # Halfway to nextUpdate: a fresh one is at hand well before this one expires.
        delay = max(1.0, min((verdict.expires - now).total_seconds() / 2, 12 * 3600.0))
        emit(
            "janustls.staple.fetched",
            "port {port}: stapling an OCSP response from {url}, valid until {next_update}",
            port=self.port.name,
            url=self.url,
            next_update=verdict.expires.isoformat(),
        )
        self._schedule(delay)

    def state(self) -> dict[str, Any]:
        """For /status."""
        return {
            "url": self.url,
            "stapled": bool(self.current()),
            "next_update": self.expires.isoformat() if self.expires else None,
            "last_error": self.last_error,
        }


def stapler_for(port: PortDefinition, chain: tuple[x509.Certificate, ...], reactor: Any) -> Stapler:
    """The port's stapler for this certificate (made once; kept across rebuilds).

    Building never starts or stops a stapler: a build may still be refused (a reload with
    an error, a rotation that fails), and the live port must keep stapling.  The port's
    service starts it as it listens, and `swap` passes the duty on when a rebuilt port is
    adopted.
    """
    leaf = chain[0]
    key = (port.name, leaf.fingerprint(hashes.SHA256()))
    stapler = _STAPLERS.get(key)
    if stapler is None:
        issuer = next((c for c in chain[1:] if c.subject == leaf.issuer), None)
        for other_key in [k for k, s in _STAPLERS.items() if k[0] == port.name and not s.running]:
            del _STAPLERS[other_key]  # a certificate the port no longer uses, or a refused build's
        stapler = _STAPLERS[key] = Stapler(port, leaf, issuer, reactor)
    else:
        stapler.port = port  # a rebuild may change ocsp_responder or ocsp_timeout
        stapler.url = port.ocsp_responder or responder_url(leaf)
    return stapler


def swap(old: Stapler | None, new: Stapler | None) -> None:
    """A rebuilt port was adopted: its stapler runs, the one it replaces (if another) stops."""
    if old is not None and old is not new:
        old.stop()
    if new is not None:
        new.start()
