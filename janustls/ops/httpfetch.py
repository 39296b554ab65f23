"""HTTP GET and POST on Twisted's client, bounded in time and size: CRL and OCSP fetching.

Nothing here blocks the reactor: a fetch is a Deferred firing with (status, headers,
body).  The body is read with a size cap (a responder cannot make us buffer without
limit) and the whole exchange with a timeout (connect, send, read).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.internet import defer, protocol, threads
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from janustls._reactor import reactor_or_global

__all__ = ["FetchError", "Fetched", "fetch", "run_to_completion"]


class FetchError(Exception):
    """The server could not be reached, timed out, or sent too much."""


@dataclass(frozen=True)
class Fetched:
    code: int
    headers: Mapping[str, str]
    body: bytes


class _Collect(protocol.Protocol):
    def __init__(self, done: defer.Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.called:
                self.done.errback(FetchError(f"the answer is larger than {self.limit} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]  # connected: the transport is set
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # Twisted's own default is None
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


_pools: dict[int, HTTPConnectionPool] = {}


def _agent(reactor: Any, timeout: float) -> Agent:
    pool = _pools.get(id(reactor))
    if pool is None:
        pool = _pools[id(reactor)] = HTTPConnectionPool(reactor, persistent=False)
    return Agent(reactor, connectTimeout=timeout, pool=pool)


def fetch(
    reactor: Any,
    url: str,
    *,
    method: bytes = b"GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    max_size: int = 1 << 20,
) -> defer.Deferred[Fetched]:
    """One HTTP exchange; fires with `Fetched` or fails with FetchError (the cause in words)."""
    h = Headers({b"User-Agent": [b"janustls"]})
    for k, v in (headers or {}).items():
        h.setRawHeaders(k.encode("latin-1"), [v.encode("latin-1")])
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    try:
        d: defer.Deferred[Any] = _agent(reactor, timeout).request(method, url.encode("ascii"), h, producer)
    except Exception as e:  # noqa: BLE001  a malformed URL
        return defer.fail(FetchError(f"cannot fetch {url}: {e}"))

    def got(response: Any) -> defer.Deferred[Fetched]:
        done: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Collect(done, max_size))
        found = {k.decode("latin-1").lower(): v[-1].decode("latin-1") for k, v in response.headers.getAllRawHeaders()}
        return done.addCallback(lambda data: Fetched(response.code, found, data))

    d.addCallback(got)
    d.addTimeout(timeout, reactor)

    def failed(failure: Failure) -> Failure:
        if failure.check(FetchError):
            return failure
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise FetchError(f"no answer from {url} within {timeout:g}s")
        value = failure.value
        reasons = getattr(value, "reasons", None)  # twisted.web's ResponseFailed and friends
        text = "; ".join(r.getErrorMessage() for r in reasons) if reasons else failure.getErrorMessage()
        raise FetchError(f"cannot fetch {url}: {text or type(value).__name__}")

    return d.addErrback(failed)


def run_to_completion(make: Callable[[Any], defer.Deferred[Any]], reactor: Any = None) -> Any:
    """For the offline commands (`janustls check`, `janustls explain`): run `make(reactor)`
    on Twisted's client and wait for its result, never with a blocking HTTP library.

    When the reactor already runs in another thread (an embedding program, the tests), the
    work is handed to it; otherwise the reactor runs until the Deferred fires (once: a
    stopped reactor cannot start again, which an offline command never needs).  Every
    fetch `make` starts must be bounded (`fetch` has a timeout), so this returns.
    """
    reactor = reactor_or_global(reactor)
    if reactor.running:
        if threading.current_thread().name == "reactor":
            raise RuntimeError("run_to_completion() called from the reactor thread")
        return threads.blockingCallFromThread(reactor, lambda: make(reactor))
    outcome: list[Any] = []

    def go() -> None:
        d = defer.maybeDeferred(make, reactor)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    result = outcome[0] if outcome else Failure(RuntimeError("the reactor stopped before the work was done"))
    if isinstance(result, Failure):
        result.raiseException()
    return result
