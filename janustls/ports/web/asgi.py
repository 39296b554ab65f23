"""ASGI 3 applications behind `asgi` rules: HTTP requests and the lifespan protocol, run on the
asyncio loop under Twisted's asyncio reactor (see `janustls.ports.web.loop`).

A thin adapter: the scope is built by `janustls.ports.web.scope` (pure); here a twisted.web
request (its body already read and bounded by max_body) is handed to the application, and the
application's messages become the response.  The request's body is one `http.request`
message; later `receive()` calls wait for `http.disconnect` (the response finished or the
client went away).  Writes wait while the client's unsent output is over the port's mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.events import emit
from janustls.ports.web.request import JanusRequest, header_name
from janustls.ports.web.scope import ASGI_VERSION

__all__ = ["AsgiApp", "serve_http"]


class AsgiApp:
    """One ASGI application of a port: its lifespan (startup before requests are served,
    shutdown on stop) and the `state` its startup left for requests."""

    def __init__(self, app: Any, name: str, port: str) -> None:
        self.app = app
        self.name = name
        self.port = port
        self.state: dict[str, Any] = {}
        #: Fires when startup completed (or the app has no lifespan); requests wait for it.
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._shutdown: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.started = False

    def start(self, on_failure: Callable[[str], None]) -> None:
        """Run the lifespan protocol's startup on the running asyncio loop."""
        loop = asyncio.get_running_loop()
        self._shutdown = loop.create_future()
        self._done = loop.create_future()
        startup: asyncio.Future[str | None] = loop.create_future()
        sent_startup = False
        supported = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            assert self._shutdown is not None
            await self._shutdown
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal supported
            supported = True
            kind = message.get("type")
            if kind == "lifespan.startup.complete" and not startup.done():
                startup.set_result(None)
            elif kind == "lifespan.startup.failed" and not startup.done():
                startup.set_result(str(message.get("message") or "startup failed"))
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if kind == "lifespan.shutdown.failed":
                    emit("janustls.asgi.shutdown_failed", "port {port}: ASGI app {app} failed to shut down: {error}", LogLevel.error,
                         port=self.port, app=self.name, error=str(message.get("message") or ""))  # fmt: skip
                if self._done is not None and not self._done.done():
                    self._done.set_result(None)

        async def run() -> None:
            scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
            try:
                await self.app(scope, receive, send)
            except BaseException as e:  # noqa: BLE001  an app without lifespan raises on the scope
                if not startup.done():
                    startup.set_result(f"{type(e).__name__}: {e}" if supported else None)
            finally:
                if not startup.done():
                    startup.set_result(None)
                if self._done is not None and not self._done.done():
                    self._done.set_result(None)

        self._task = loop.create_task(run())  # kept: the loop holds its tasks only weakly

        def started(error: str | None) -> None:
            if error is not None:
                emit("janustls.asgi.startup_failed", "port {port}: ASGI app {app} failed to start: {error}", LogLevel.critical,
                     port=self.port, app=self.name, error=error)  # fmt: skip
                on_failure(error)
                return
            self.started = True
            emit("janustls.asgi.started", "port {port}: ASGI app {app} started", port=self.port, app=self.name)
            self.ready.callback(None)

        defer.Deferred.fromFuture(startup).addCallback(started)

    def stop(self) -> defer.Deferred[None]:
        """The lifespan shutdown: fires when the app has shut down (at most 10 s)."""
        if not self.started or self._shutdown is None or self._done is None:
            return defer.succeed(None)
        if not self._shutdown.done():
            self._shutdown.set_result(None)
        loop = self._done.get_loop()
        return defer.Deferred.fromFuture(
            asyncio.ensure_future(asyncio.wait_for(asyncio.shield(self._done), 10), loop=loop)
        ).addErrback(lambda _: None)


def serve_http(app: AsgiApp, request: JanusRequest, scope: dict[str, Any], on_error: Callable[[Failure], None]) -> None:
    """Run the application for one request; the request is answered from its messages."""
    loop = asyncio.get_running_loop()
    content = request.content
    body = content.read() if content is not None else b""
    body_sent = False
    finished: asyncio.Future[None] | None = None  # made when the app waits for http.disconnect
    response_started = False
    response_done = False
    status = 200
    head: list[tuple[bytes, bytes]] = []

    def ended(_: Any) -> None:
        if finished is not None and not finished.done():
            finished.set_result(None)

    async def receive() -> dict[str, Any]:
        nonlocal body_sent, finished
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if finished is None:
            finished = loop.create_future()
            if request.finished or request.gone:
                finished.set_result(None)
            else:
                request.notifyFinish().addBoth(ended)
        await finished
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal response_started, response_done, status, head
        if request.gone or response_done:
            return  # the client went away (the app hears http.disconnect), or the response ended
        kind = message["type"]
        if kind == "http.response.start":
            if response_started:
                raise RuntimeError("http.response.start sent twice")
            response_started = True
            status = int(message["status"])
            # kept until the first body message: a whole response then leaves as one write
            head = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
            return
        if kind == "http.response.body":
            if not response_started:
                raise RuntimeError("http.response.body before http.response.start")
            data = message.get("body", b"")
            more = message.get("more_body", False)
            if not request.startedWriting:
                if not more:
                    response_done = True
                    request.respond_with(status, head, bytes(data))
                    return
                request.setResponseCode(status)
                headers = request.responseHeaders
                for name, value in head:
                    header_name(name)
                    headers.addRawHeader(name, value)
                request.write(bytes(data))  # the head goes out now (chunked without a Content-Length)
            elif data:
                request.write(bytes(data))
            if not more:
                response_done = True
                request.finish()
                return
            transport = request.channel.transport if request.channel is not None else None
            if transport is not None and getattr(transport, "output_full", False):
                await defer.Deferred.asFuture(transport.drained(), loop)  # type: ignore[attr-defined]  # the TLS protocol (PortTLSProtocol), not a bare ITransport
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r} on an http scope")

    async def run() -> None:
        await app.app(scope, receive, send)
        if not response_done and not request.gone:
            raise RuntimeError("the ASGI app returned without completing its response")

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            on_error(Failure(defer.CancelledError()))
            return
        error = task.exception()
        if error is not None:
            on_error(Failure(error, type(error), error.__traceback__))

    loop.create_task(run()).add_done_callback(done)
