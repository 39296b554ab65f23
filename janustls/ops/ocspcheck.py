"""Asking OCSP responders about client chains, without blocking the reactor.

`OCSPChecker.judge` answers at once from the process-wide cache (the warm path costs
a dictionary look-up per certificate), or returns a Deferred when a responder must be
asked; the port protocol holds the connection (no application data, no handler) until
it fires.  Concurrent look-ups of one certificate share one request.  Verification
rules live in `janustls.core.ocsp`; the HTTP exchange in `janustls.ops.httpfetch`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.core.config import OCSPFail, OCSPScope, PortDefinition
from janustls.core.ocsp import (
    OCSPCache,
    Status,
    Verdict,
    asked_about,
    build_request,
    cert_id,
    judge_response,
    new_nonce,
    responder_url,
)
from janustls.core.reasons import Reason, Refusal
from janustls.events import emit
from janustls.ops import httpfetch

__all__ = [
    "OCSPChecker",
    "CACHE",
    "STATS",
    "ask",
    "ocsp_state",
    "MAX_RESPONSE_BYTES",
    "negative_ttl",
    "NEGATIVE_TTL_MAX",
]

#: Verified answers shared by every port and connection of the process.
CACHE = OCSPCache()
#: Counters for /status and /metrics: requests sent, and answers by status.
STATS: collections.Counter[str] = collections.Counter()
MAX_RESPONSE_BYTES = 64 * 1024

#: The longest a "no usable answer" is remembered (negative cache), in seconds.
NEGATIVE_TTL_MAX = 30.0


def negative_ttl(timeout: float) -> float:
    """How long a failed look-up (unreachable, timed out, garbage, unknown ...) is cached:
    min(30 s, 10 x ocsp_timeout).  A down responder then costs one timeout per interval, not
    one per connection, and at most a tenth of the time is spent waiting for it; a responder
    that comes back is asked again within 30 s."""
    return min(NEGATIVE_TTL_MAX, 10.0 * timeout)


_Key = tuple[str, bytes, int]
_INFLIGHT: dict[_Key, list[defer.Deferred[Verdict]]] = {}
_KEY_HASHES: dict[x509.Certificate, bytes] = {}


def _key(url: str, cert: x509.Certificate, issuer: x509.Certificate) -> _Key:
    h = _KEY_HASHES.get(issuer)
    if h is None:
        if len(_KEY_HASHES) > 4096:
            _KEY_HASHES.clear()
        h = _KEY_HASHES[issuer] = cert_id(cert, issuer)[0]
    return (url, h, cert.serial_number)


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "<unparsable subject>"


def ask(
    reactor: Any,
    url: str,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    timeout: float,
    port: str = "",
    fetch: Callable[..., defer.Deferred[httpfetch.Fetched]] = httpfetch.fetch,
) -> defer.Deferred[Verdict]:
    """Ask `url` about `cert` (POST, with a nonce); fires with a Verdict, never fails.

    A second ask for the same certificate while one is under way waits for the same answer.
    """
    key = _key(url, cert, issuer)
    waiter: defer.Deferred[Verdict] = defer.Deferred()
    if key in _INFLIGHT:
        _INFLIGHT[key].append(waiter)
        return waiter
    _INFLIGHT[key] = [waiter]
    nonce = new_nonce()
    STATS["requests"] += 1
    d = fetch(
        reactor,
        url,
        method=b"POST",
        body=build_request(cert, issuer, nonce),
        headers={"Content-Type": "application/ocsp-request", "Accept": "application/ocsp-response"},
        timeout=timeout,
        max_size=MAX_RESPONSE_BYTES,
    )

    def got(answer: httpfetch.Fetched) -> Verdict:
        if answer.code != 200:
            return Verdict(Status.UNAVAILABLE, f"the responder answered HTTP {answer.code}")
        return judge_response(answer.body, cert, issuer, nonce=nonce)

    def failed(failure: Failure) -> Verdict:
        return Verdict(Status.UNAVAILABLE, failure.getErrorMessage())

    def deliver(verdict: Verdict) -> None:
        STATS[verdict.status.value] += 1
        if verdict.status is Status.UNAVAILABLE:
            ttl = negative_ttl(timeout)
            until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
            CACHE.put(
                key, dataclasses.replace(verdict, cause=f"{verdict.cause} (remembered for {ttl:g}s)", expires=until)
            )
        else:
            CACHE.put(key, verdict)
        emit(
            "janustls.ocsp.answer",
            "port {port}: OCSP {url} about {subject} (serial {serial}): {status}{cause}",
            LogLevel.debug if verdict.status is Status.GOOD else LogLevel.info,
            port=port,
            url=url,
            subject=_subject(cert),
            serial=format(cert.serial_number, "x"),
            status=verdict.status.value,
            cause=f" ({verdict.cause})" if verdict.status is not Status.GOOD else "",
            next_update=verdict.expires.isoformat() if verdict.expires else None,
        )
        for w in _INFLIGHT.pop(key, []):
            w.callback(verdict)

    d.addCallbacks(got, failed).addCallback(deliver)
    return waiter


def ocsp_state() -> dict[str, Any]:
    """The cache and counters, for /status."""
    expiry = CACHE.earliest_expiry()
    return {
        "cache_entries": len(CACHE),
        "cache_hits": CACHE.hits,
        "cache_misses": CACHE.misses,
        "requests": STATS["requests"],
        "in_flight": len(_INFLIGHT),
        "answers": {s.value: STATS[s.value] for s in Status},
        "earliest_expiry": expiry.isoformat() if expiry else None,
    }


class OCSPChecker:
    """One port's OCSP policy (`ocsp`, `ocsp_responder`, `ocsp_timeout`, `ocsp_fail`)."""

    def __init__(self, port: PortDefinition, reactor: Any) -> None:
        self.port = port
        self.reactor = reactor
        self.scope = port.ocsp.value
        self.refused = collections.Counter[str]()

    def url_for(self, cert: x509.Certificate) -> str | None:
        return self.port.ocsp_responder or responder_url(cert)

    def judge(self, chain: Sequence[x509.Certificate]) -> Refusal | defer.Deferred[Refusal | None] | None:
        """None (admit), a Refusal, or a Deferred of either when a responder must be asked."""
        if self.port.ocsp is OCSPScope.NONE or len(chain) < 2:
            return None
        now = datetime.datetime.now(datetime.UTC)
        known: list[tuple[int, str, Verdict | None]] = []
        waiting: list[defer.Deferred[Verdict]] = []
        for depth, (cert, issuer) in enumerate(asked_about(chain, self.scope)):
            url = self.url_for(cert)
            if url is None:
                known.append(
                    (
                        depth,
                        "",
                        Verdict(
                            Status.UNAVAILABLE, "the certificate names no OCSP responder and ocsp_responder is not set"
                        ),
                    )
                )
                continue
            verdict = CACHE.get(_key(url, cert, issuer), now)
            if verdict is None:
                waiting.append(
                    ask(self.reactor, url, cert, issuer, timeout=self.port.ocsp_timeout, port=self.port.name)
                )
            known.append((depth, url, verdict))
        if not waiting:
            return self._decide(chain, [(d, u, v) for d, u, v in known if v is not None])

        def all_in(answers: list[Verdict]) -> Refusal | None:
            it = iter(answers)
            return self._decide(chain, [(d, u, v if v is not None else next(it)) for d, u, v in known])

        return defer.gatherResults(waiting).addCallback(all_in)

    def ask_all(self, chain: Sequence[x509.Certificate]) -> defer.Deferred[list[tuple[int, str, Verdict]]]:
        """For `janustls explain --ocsp`: (depth, url, verdict) for every certificate the port
        would ask about, from the cache or the responder ("" and UNAVAILABLE without a responder)."""
        now = datetime.datetime.now(datetime.UTC)
        pending: list[defer.Deferred[tuple[int, str, Verdict]]] = []
        for depth, (cert, issuer) in enumerate(asked_about(chain, self.scope)):
            url = self.url_for(cert)
            if url is None:
                none = Verdict(
                    Status.UNAVAILABLE, "the certificate names no OCSP responder and ocsp_responder is not set"
                )
                pending.append(defer.succeed((depth, "", none)))
                continue
            cached = CACHE.get(_key(url, cert, issuer), now)
            if cached is not None:
                pending.append(defer.succeed((depth, url, cached)))
            else:
                d = ask(self.reactor, url, cert, issuer, timeout=self.port.ocsp_timeout, port=self.port.name)

                def tagged(v: Verdict, depth: int = depth, url: str = url) -> tuple[int, str, Verdict]:
                    return (depth, url, v)

                pending.append(d.addCallback(tagged))
        return defer.gatherResults(pending)

    def decide(self, chain: Sequence[x509.Certificate], verdicts: list[tuple[int, str, Verdict]]) -> Refusal | None:
        """The port's refusal (or None) given every certificate's verdict, as `judge` decides."""
        return self._decide(chain, verdicts)

    def _decide(self, chain: Sequence[x509.Certificate], verdicts: list[tuple[int, str, Verdict]]) -> Refusal | None:
        for depth, url, v in verdicts:
            if v.status is Status.REVOKED:
                self.refused["revoked"] += 1
                return Refusal(Reason.REVOKED, depth, _subject(chain[depth]), f"revoked by OCSP ({url}): {v.cause}")
        for depth, url, v in verdicts:
            if v.status is Status.UNAVAILABLE:
                where = f" from {url}" if url else ""
                if self.port.ocsp_fail is OCSPFail.TOLERATE:
                    emit(
                        "janustls.ocsp.tolerated",
                        "port {port}: no usable OCSP answer{where} about {subject}: {cause}; admitted (ocsp_fail = tolerate)",
                        LogLevel.warn,
                        port=self.port.name,
                        where=where,
                        url=url,
                        subject=_subject(chain[depth]),
                        depth=depth,
                        cause=v.cause,
                    )
                    continue
                self.refused["ocsp_unavailable"] += 1
                return Refusal(
                    Reason.OCSP_UNAVAILABLE, depth, _subject(chain[depth]), f"no usable OCSP answer{where}: {v.cause}"
                )
        return None
