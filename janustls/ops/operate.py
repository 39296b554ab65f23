"""Running a server in production: JSON logs for twistd, SIGHUP reload, graceful shutdown.

`twistd janustls` wraps its JanusService (or its worker supervisor) in `ServerRoot`,
which is where process-wide concerns live so that the services themselves stay
embeddable: a log observer for the twistd application, the SIGHUP handler, and the
drain of open connections on shutdown.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver
from twisted.python.logfile import LogFile

from janustls._reactor import reactor_or_global
from janustls.events import emit
from janustls.ops.logs import log_observer

__all__ = ["exit_status_at_end", "ServerRoot", "install_sighup", "twistd_log_file", "drain", "DEFAULT_DRAIN_TIMEOUT"]

#: Seconds open connections get to finish after a shutdown starts.
DEFAULT_DRAIN_TIMEOUT = 10.0


def _open_protocols(ports: Iterable[Any]) -> list[Any]:
    return [p for b in ports for p in list(getattr(b.factory, "protocols", {}))]


@defer.inlineCallbacks
def drain(ports: Iterable[Any], seconds: float, reactor: Any) -> Any:
    """After the ports stopped listening: wait for their connections to end, at most `seconds`,
    then close what is left.  Fires with the number of connections that had to be closed."""
    ports = list(ports)
    still = _open_protocols(ports)
    emit("janustls.shutdown.draining", "shutting down: {open} connection(s) get up to {seconds}s to finish",
         open=len(still), seconds=seconds)  # fmt: skip
    deadline = reactor.seconds() + seconds
    while still and reactor.seconds() < deadline:
        yield deferLater(reactor, min(0.05, max(0.0, deadline - reactor.seconds())), lambda: None)
        still = _open_protocols(ports)
    for protocol in still:
        protocol.abortConnection()
    emit("janustls.shutdown.done", "shutdown: done; {left} connection(s) closed at the deadline", left=len(still))
    return len(still)


def exit_status_at_end(code: int) -> None:
    """End the process with `code` once twistd has finished (it removed its pidfile); twistd
    itself ends with 0 after any reactor stop, which a service manager takes for success."""

    def end() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream: nothing more to say
                pass
        os._exit(code)

    atexit.register(end)


def install_sighup(reload: Callable[[], Any], reactor: Any) -> bool:
    """Reload on SIGHUP (only possible from the main thread; False elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return False

    def handler(signum: int, frame: Any) -> None:
        # Nothing may run inside a signal handler: hand the reload to the reactor.
        reactor.callFromThread(reload)

    signal.signal(signal.SIGHUP, handler)
    return True


def twistd_log_path(options: Any) -> str | None:
    """The file twistd logs to (its --logfile and --nodaemon); None for standard output."""
    parent = getattr(options, "parent", None) or {}
    name = parent.get("logfile") if hasattr(parent, "get") else None
    nodaemon = bool(parent.get("nodaemon")) if hasattr(parent, "get") else True
    if name == "-" or (not name and nodaemon):
        return None
    return os.path.abspath(name or "twistd.log")


def twistd_log_file(options: Any) -> IO[str]:
    """Where twistd would log, for the JSON observer."""
    path = twistd_log_path(options)
    if path is None:
        return sys.stdout
    log: IO[str] = LogFile.fromFullPath(path)  # a LogFile writes and flushes as a text stream does
    return log


class ServerRoot(service.MultiService):
    """The service twistd runs: `inner` plus logging format, SIGHUP and drain-on-stop."""

    def __init__(self, inner: Any, *, log_format: str = "text", log_file: Callable[[], IO[str]] | None = None,
                 reactor: Any = None, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:  # fmt: skip
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        self.inner = inner
        self.drain_timeout = drain_timeout
        self.log_format = log_format
        self._log_file = log_file
        self._reactor = reactor
        inner.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd starts logging after makeService with the application's ILogObserver
        # component when there is one: that is how --log-format json takes over.
        if self.log_format == "json" and hasattr(parent, "setComponent") and self._log_file is not None:
            parent.setComponent(ILogObserver, log_observer("json", self._log_file()))
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    def privilegedStartService(self) -> None:
        """Ports bind here; one that cannot listen ends twistd with its error, not a traceback."""
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        except CannotListenError as e:
            raise SystemExit(f"janustls: {e}") from None
        except Exception as e:  # any listener that cannot be bound, the status listener included
            raise SystemExit(f"janustls: cannot start: {type(e).__name__}: {e}") from None

    def startService(self) -> None:
        self._reactor = reactor_or_global(self._reactor)
        if self.log_format == "json":
            emit("janustls.log.json", "JSON log lines begin", log_format_name="json")
        install_sighup(self.reload, self._reactor)
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated

    def reload(self) -> Any:
        return self.inner.reload(why="signal")

    def stopService(self) -> Any:
        """Stop listening, then let open connections finish within drain_timeout."""
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(
            lambda _: drain(getattr(self.inner, "ports", ()), self.drain_timeout, reactor_or_global(self._reactor))
        )
        return d
