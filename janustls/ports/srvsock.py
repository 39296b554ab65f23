"""srvsock ports: a handler from the procedure library reads and writes the client's bytes.

The handler is `async def serve(sock)` (or any callable returning a Deferred or None);
when it returns the connection is closed; when it raises, the error is logged, the
connection closed, and the port keeps serving.
"""

from __future__ import annotations

import inspect
from typing import Any, Awaitable, Callable, Union

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from janustls.connection import Connection
from janustls.events import emit
from janustls.ports.base import PortFactory, PortProtocol, PortRuntime

__all__ = ["Handler", "SrvsockFactory", "SrvsockProtocol"]

Handler = Callable[[Connection], Union[Awaitable[Any], "defer.Deferred[Any]", None]]


class SrvsockProtocol(PortProtocol):
    factory: SrvsockFactory

    def connection_ready(self, connection: Connection) -> None:
        handler = self.factory.handler
        try:
            result = handler(connection)
        except Exception:
            self._handler_failed(Failure())
            return
        if inspect.isawaitable(result):
            d = defer.ensureDeferred(result)  # type: ignore[arg-type]
        elif isinstance(result, defer.Deferred):
            d = result
        else:
            self.close()
            return
        d.addCallbacks(self._handler_returned, self._handler_failed)

    def _handler_returned(self, result: object) -> None:
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

    def bytes_received(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection._feed(data)

    def connection_ended(self, reason: Failure | None) -> None:
        if self.connection is not None:
            self.connection._end()


class SrvsockFactory(PortFactory):
    protocol = SrvsockProtocol

    def __init__(self, runtime: PortRuntime, handler: Handler) -> None:
        super().__init__(runtime)
        self.handler = handler
