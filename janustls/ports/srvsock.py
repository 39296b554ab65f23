"""srvsock ports: a handler from the procedure library reads and writes the client's bytes.

The handler is `async def serve(sock)` (or any callable returning a Deferred or None);
when it returns the connection is closed; when it raises, the error is logged, the
connection closed, and the port keeps serving.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import Any, Union

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.events import emit
from janustls.ports.base import PortFactory, PortProtocol, PortRuntime
from janustls.ports.connection import Connection, ReadDeferred

__all__ = ["Handler", "SrvsockFactory", "SrvsockProtocol"]

Handler = Callable[[Connection], Union[Awaitable[Any], "defer.Deferred[Any]", None]]


class HandlerRun:
    """Drives an `async def serve(sock)` coroutine on the reactor.

    A read the coroutine awaits resumes it directly when the bytes come (see
    `ReadDeferred`); any other Deferred it awaits resumes it through a callback, as
    `ensureDeferred` would.  When it returns the connection is closed; when it raises,
    the error is logged and the connection closed.
    """

    __slots__ = ("coro", "protocol")

    def __init__(self, coro: Coroutine[Any, Any, Any], protocol: SrvsockProtocol) -> None:
        self.coro = coro
        self.protocol = protocol

    def resume(self, value: object) -> None:
        self._step(value, None)

    def resume_failure(self, failure: Failure) -> None:
        self._step(None, failure)

    def _on_result(self, result: object) -> None:
        if isinstance(result, Failure):
            self._step(None, result)
        else:
            self._step(result, None)

    def _step(self, value: object, failure: Failure | None) -> None:
        coro = self.coro
        while True:
            try:
                if failure is not None:
                    yielded = failure.throwExceptionIntoGenerator(coro)
                    failure = None
                else:
                    yielded = coro.send(value)
            except StopIteration:
                self.protocol._handler_returned(None)
                return
            except Exception:
                self.protocol._handler_failed(Failure())
                return
            if type(yielded) is ReadDeferred and not yielded.called:
                yielded.runner = self
                return
            if isinstance(yielded, defer.Deferred):
                if not yielded.called:
                    yielded.addBoth(self._on_result)
                    return
                # Already fired: take its result here, in this loop, not by recursion.
                box: list[object] = []
                yielded.addBoth(box.append)
                if not box:  # paused inside its own callbacks
                    yielded.addBoth(self._on_result)
                    return
                value = box[0]
                if isinstance(value, Failure):
                    failure, value = value, None
                continue
            failure = Failure(
                TypeError(f"a srvsock handler awaited {yielded!r}; await Deferreds or the connection's reads")
            )


class SrvsockProtocol(PortProtocol):
    factory: SrvsockFactory
    #: idle_timeout counts from the handler's last completed read or write (`Connection`).
    bytes_are_progress = False

    def connection_ready(self, connection: Connection) -> None:
        handler = self.factory.handler
        try:
            result = handler(connection)
        except Exception:
            self._handler_failed(Failure())
            return
        if type(result) is CoroutineType or inspect.iscoroutine(result):
            HandlerRun(result, self)._step(None, None)
            return
        d: defer.Deferred[object]
        if inspect.isawaitable(result):
            d = defer.ensureDeferred(result)  # type: ignore[arg-type]  # a handler's awaitable; the stub names coroutines only
        elif isinstance(result, defer.Deferred):
            d = result
        else:
            self.close()
            return
        d.addCallbacks(self._handler_returned, self._handler_failed)

    def _handler_returned(self, result: object) -> None:
        if not self._gone:  # a handler that ends because its client left has nothing to close
            self.close()

    def _handler_failed(self, failure: Failure) -> None:
        emit(
            "janustls.handler.error",
            "port {port}: handler {handler} raised for {peer}: {error}",
            LogLevel.error,
            port=self.factory.runtime.port.name,
            handler=self.factory.runtime.port.handler,
            peer=self.peer_text(),
            error=failure.getErrorMessage(),
            log_failure=failure,
        )
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """`PortProtocol.dataReceived` and `bytes_received` in one call: the client's bytes
        go to the connection (idle_timeout counts the handler's reads, not bytes)."""
        connection = self.connection
        if connection is None or self._held is not None:
            PortProtocol.dataReceived(self, data)
            return
        self._bytes_in += len(data)
        connection.feed(data)

    def bytes_received(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.feed(data)

    def connection_ended(self, reason: Failure | None) -> None:
        if self.connection is not None:
            self.connection.end_of_input()


class SrvsockFactory(PortFactory):
    protocol = SrvsockProtocol

    def __init__(self, runtime: PortRuntime, handler: Handler) -> None:
        super().__init__(runtime)
        self.handler = handler
