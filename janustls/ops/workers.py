"""`--workers N`: N processes serving the same listening sockets, one reload for all.

The parent validates the definition file, opens every port's listening socket
itself and never accepts on it; each worker is a fresh Python process that adopts
the sockets (`reactor.adoptStreamPort`) and serves them, so the kernel spreads
connections across the workers.  Session tickets are encrypted with keys derived
from one key file (`janustls.tls.tickets`; the parent makes a private one when the
operator gives none), so any worker resumes any other's sessions.

A reload (SIGHUP to the parent) validates the new file in the parent; only then
does it open added ports' sockets, start a new generation of workers on them and,
once they are serving, stop the old generation gracefully (they stop accepting and
drain).  The listening sockets stay open in the parent throughout, so no connection
attempt is refused.  A worker that dies is replaced.  Counters are prometheus-client
multi-process values, which the parent's /metrics adds up; /status takes its live
numbers from them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogLevel, globalLogBeginner
from twisted.python.failure import Failure

from janustls._reactor import reactor_or_global
from janustls.core.config import Definitions, load_definitions, split_endpoint
from janustls.core.trust import fingerprint
from janustls.errors import ConfigError, ConfigErrors, MaterialError
from janustls.events import emit
from janustls.ops import logs
from janustls.ops import reload as planner
from janustls.ops.build import BuiltPort, build_ports, server_endpoint
from janustls.ops.certwatch import ensure_cert_watcher
from janustls.ops.crlwatch import ensure_watcher
from janustls.ops.operate import drain, exit_status_at_end
from janustls.ops.service import JanusService
from janustls.ports.accept_proxy import ProxyHeaderEndpoint
from janustls.tls import _hidden, tickets

__all__ = ["WorkersService", "worker_main", "ENV_WORKER"]

#: Set in a worker's environment: its index (0..N-1).
ENV_WORKER = "JANUSTLS_WORKER"
_READY_FD = 3
_FIRST_SOCKET_FD = 4
_READY_TIMEOUT = 60.0
_RESPAWN_DELAY = 0.5
#: A worker that keeps dying before it serves is started again after 0.5, 1, 2, 4... seconds (at most this).
_RESPAWN_MAX_DELAY = 30.0
#: When every worker has died this many times in a row before serving, and none serves, the parent gives up.
CRASH_LIMIT = 5
#: The parent's exit status when it gives up.
EXIT_CRASH_LOOP = 3


def _tcp_address(description: str) -> tuple[int, str, int, int] | None:
    """(family, interface, port, backlog) of a tcp/tcp6 endpoint description; None for other kinds."""
    kind, args, kwargs = split_endpoint(description)
    if kind not in ("tcp", "tcp6"):
        return None
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = kwargs.get("interface", "").replace("\\:", ":") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    port = int(kwargs.get("port") or args[0])
    return family, interface, port, int(kwargs.get("backlog", "50"))


class _ReusePortSockets:
    """One listening socket per worker index on the same address (SO_REUSEPORT).

    The kernel spreads new connections over the sockets, so an idle worker is not
    woken for a connection another takes (no thundering herd).  The parent holds them
    all: a restarted worker, or the next generation after a reload, adopts socket i
    again and finds the connections that queued meanwhile.
    """

    def __init__(self, family: int, interface: str, port: int, backlog: int, count: int) -> None:
        self.family = family
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                s = socket.socket(family, socket.SOCK_STREAM)
                self.sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((interface, port))
                port = s.getsockname()[1]  # port 0: the others join the one the first got
                s.listen(backlog)
                s.setblocking(False)  # the workers' reactors accept until EAGAIN
        except OSError:
            self.stopListening()
            raise

    def fileno_for(self, index: int) -> int:
        return self.sockets[index % len(self.sockets)].fileno()

    def getHost(self) -> Any:
        host, port = self.sockets[0].getsockname()[:2]
        return (IPv6Address if self.family == socket.AF_INET6 else IPv4Address)("TCP", host, port)

    def stopListening(self) -> defer.Deferred[None]:
        for s in self.sockets:
            s.close()
        return defer.succeed(None)


class _SharedSocket:
    """One listening socket all workers accept on (unix sockets, and systems without SO_REUSEPORT)."""

    def __init__(self, listening: Any) -> None:
        self.listening = listening
        self.family = listening.socket.family

    def fileno_for(self, index: int) -> int:
        return int(self.listening.fileno())

    def getHost(self) -> Any:
        return self.listening.getHost()

    def stopListening(self) -> Any:
        return self.listening.stopListening()


class _NoConnections(protocol.Factory):
    """The parent's listening sockets never accept (it stops reading them at once)."""

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Worker(protocol.ProcessProtocol):
    def __init__(self, parent: WorkersService, index: int, generation: int) -> None:
        self.parent = parent
        self.index = index
        self.generation = generation
        self.pid: int | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        #: Fires when the worker no longer accepts (it said so, or it ended).
        self.draining: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        #: It said it serves (a worker that dies before that is a failed start).
        self.served = False
        self.alive = True
        self._buffer = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]  # a process transport, set before this runs

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == _READY_FD:
            self._buffer += data
            if b"ready" in self._buffer and not self.ready.called:
                self.served = True
                self.parent._served(self)  # noqa: SLF001
                self.ready.callback(None)
            if b"draining" in self._buffer and not self.draining.called:
                self.draining.callback(None)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]  # a process transport, set before this runs
        except Exception:  # already gone
            pass

    def processEnded(self, reason: Failure) -> None:
        self.alive = False
        status = getattr(reason.value, "status", None)
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"worker {self.index} ended before serving (status {status})"))
            self.ready.addErrback(lambda _: None)
        self.parent._ended(self, status)  # noqa: SLF001
        if not self.draining.called:
            self.draining.callback(None)
        self.ended.callback(None)


class WorkersService(service.MultiService):
    """The parent of `--workers N`: sockets, worker processes, reloads, /status and /metrics."""

    def __init__(self, definitions: Definitions, workers: int, *, log_format: str = "text",
                 drain_timeout: float = 10.0, ticket_key: str | None = None, log_path: str | None = None,
                 reactor: Any = None) -> None:  # fmt: skip
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's method is unannotated
        if workers < 1:
            raise ValueError("workers must be at least 1")
        # Counters become multi-process values: set before prometheus-client is first imported.
        self._runtime_dir = tempfile.mkdtemp(prefix="janustls-workers-")
        os.chmod(self._runtime_dir, 0o700)
        metrics_dir = os.path.join(self._runtime_dir, "metrics")
        os.mkdir(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        self.definitions = definitions
        self.count = workers
        self.log_format = log_format
        self.drain_timeout = drain_timeout
        self.log_path = log_path
        self._reactor = reactor
        self.ports: list[BuiltPort] = build_ports(definitions, reactor)  # validates everything
        self.ticket_key: str | None = None
        if ticket_key is not None or _hidden.ticket_keys_supported():
            # Without a way to set ticket keys here, workers resume only their own sessions.
            self.ticket_key = ticket_key or self._private_ticket_key()
            try:
                tickets.load_master(self.ticket_key)
                if not _hidden.ticket_keys_supported():
                    raise MaterialError("this OpenSSL build gives no way to set session ticket keys")
            except MaterialError as e:
                raise ConfigErrors([ConfigError(definitions.source, None, None, f"--ticket-key: {e}")])
        self._sockets: dict[str, Any] = {}
        self._current: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._generation = 0
        self._stopping = False
        self._failed_starts: dict[int, int] = {}
        self._add_status(definitions)
        ensure_watcher(self, reactor, quiet=True)  # the workers watch and log; this keeps /status current
        ensure_cert_watcher(self, reactor, quiet=True)  # likewise for rotated certificates (their expiry in /status)

    def _status_service(self, definitions: Definitions) -> Any:
        from janustls.ops.status import StatusService

        assert definitions.status is not None
        return StatusService(definitions.status.listen, lambda: self.ports, self._reactor,
                             extra=lambda: {"workers": [w.pid for w in self._current]})  # fmt: skip

    def _add_status(self, definitions: Definitions) -> None:
        if definitions.status is not None:
            self._status_service(definitions).setServiceParent(self)

    def _private_ticket_key(self) -> str:
        path = os.path.join(self._runtime_dir, "ticket.key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(80))
        return path

    @property
    def reactor(self) -> Any:
        self._reactor = reactor_or_global(self._reactor)
        return self._reactor

    # -- sockets -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _open(self, ports: Sequence[BuiltPort]) -> Any:
        """Open the listening sockets of `ports` (all or none); a dict name -> sockets."""
        opened: dict[str, Any] = {}
        errors: list[ConfigError] = []
        for b in ports:
            p = b.definition
            try:
                tcp = _tcp_address(p.listen)
                if tcp is not None and hasattr(socket, "SO_REUSEPORT"):
                    opened[p.name] = _ReusePortSockets(*tcp, count=self.count)
                    continue
                listening = yield server_endpoint(self.reactor, p.listen).listen(_NoConnections())
                if not hasattr(listening, "fileno") or not hasattr(listening, "stopReading"):
                    yield listening.stopListening()
                    raise ValueError("--workers needs a tcp, tcp6 or unix listen address")
                listening.stopReading()  # the workers accept, never the parent
                opened[p.name] = _SharedSocket(listening)
            except Exception as e:
                errors.append(ConfigError(p.source, p.section, "listen", f"cannot listen: {e}"))
        if errors:
            for sockets in opened.values():
                yield sockets.stopListening()
            raise ConfigErrors(errors)
        return opened

    # -- workers -------------------------------------------------------------------------

    def _spawn(self, index: int, generation: int) -> _Worker:
        worker = _Worker(self, index, generation)
        # -P: the working directory is not put on sys.path, so a stray (or planted) module
        # there cannot shadow the standard library in a worker; the package's own root is
        # given explicitly below.
        args = [sys.executable, "-P", "-m", "janustls.ops.workers", "--port-def", self.definitions.source, "--index", str(index),
                "--log-format", self.log_format, "--drain-timeout", str(self.drain_timeout)]  # fmt: skip
        if self.log_path:
            args += ["--logfile", self.log_path]
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, _READY_FD: "r"}
        for n, (name, sockets) in enumerate(sorted(self._sockets.items()), start=_FIRST_SOCKET_FD):
            fds[n] = sockets.fileno_for(index)
            family = sockets.family
            args += ["--listen", f"{name}={n}:{int(family)}"]
        package_root = str(Path(__file__).resolve().parents[2])  # the directory holding janustls/
        env = dict(os.environ)
        env[ENV_WORKER] = str(index)
        if self.ticket_key is not None:
            env[tickets.ENV_KEY_FILE] = self.ticket_key
        env["PYTHONPATH"] = os.pathsep.join(
            [package_root] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x]
        )
        self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=fds)
        self._all.add(worker)
        emit("janustls.workers.started", "worker {worker} started (pid {pid}, generation {generation})",
             worker=index, pid=worker.pid, generation=generation)  # fmt: skip
        return worker

    def _spawn_generation(self) -> list[_Worker]:
        self._generation += 1
        return [self._spawn(i, self._generation) for i in range(self.count)]

    def _ended(self, worker: _Worker, status: int | None) -> None:
        self._all.discard(worker)
        emit("janustls.workers.exited", "worker {worker} (pid {pid}) ended with status {status}",
             LogLevel.info if self._stopping or worker not in self._current else LogLevel.error,
             worker=worker.index, pid=worker.pid, status=status)  # fmt: skip
        if worker.pid is not None:
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(worker.pid)
            except Exception:  # metrics are best effort
                pass
        if worker in self._current and not self._stopping:
            fails = 0 if worker.served else self._failed_starts.get(worker.index, 0) + 1
            self._failed_starts[worker.index] = fails
            if self._crash_loop():
                self._give_up()
                return
            # A crash: replace it in its generation after a pause that grows while it keeps
            # failing to start (no busy loop).
            delay = min(_RESPAWN_DELAY * 2 ** max(fails - 1, 0), _RESPAWN_MAX_DELAY)
            if fails >= 2:
                emit("janustls.workers.crash_loop",
                     "worker {worker} ended before serving {fails} times in a row; next start in {delay:g}s",
                     LogLevel.error, worker=worker.index, fails=fails, delay=delay, status=status)  # fmt: skip

            def respawn() -> None:
                if worker in self._current and not self._stopping:
                    self._current[self._current.index(worker)] = self._spawn(worker.index, worker.generation)

            self.reactor.callLater(delay, respawn)

    def _served(self, worker: _Worker) -> None:
        self._failed_starts[worker.index] = 0

    def _crash_loop(self) -> bool:
        """Every worker slot failed CRASH_LIMIT starts in a row, and no worker process serves."""
        if any(w.served and w.alive for w in self._all):
            return False
        return all(self._failed_starts.get(i, 0) >= CRASH_LIMIT for i in range(self.count))

    def _give_up(self) -> None:
        emit("janustls.workers.gave_up",
             "no worker stays up: each ended before serving {limit} times in a row; stopping (exit status {code})",
             LogLevel.critical, limit=CRASH_LIMIT, code=EXIT_CRASH_LOOP)  # fmt: skip
        exit_status_at_end(EXIT_CRASH_LOOP)
        self.reactor.stop()

    # -- service -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def startService(self) -> Any:
        service.MultiService.startService(self)
        from janustls.ops import metrics

        metrics.install_observer()
        try:
            self._sockets = yield self._open(self.ports)
        except ConfigErrors as e:
            emit(
                "janustls.port.failed",
                "cannot listen: {error}",
                LogLevel.critical,
                port=None,
                listen=None,
                error=str(e),
            )
            self.reactor.stop()
            return
        for b in self.ports:
            b.listening = self._sockets[b.definition.name]
            if b.runtime.stapler is not None:
                b.runtime.stapler.start()  # the workers staple; the parent's copy keeps /status current
            emit("janustls.port.listening", "port {port}: {type} listening on {address} for {workers} workers",
                 port=b.definition.name, type=b.definition.type.value, address=str(b.listening.getHost()),
                 workers=self.count, mode=b.definition.client_cert.value)  # fmt: skip
        self._current = self._spawn_generation()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Workers stop accepting and drain (drain_timeout); the stragglers are killed."""
        self._stopping = True
        yield defer.maybeDeferred(service.MultiService.stopService, self)
        workers = list(self._all)
        for w in workers:
            w.signal("TERM")
        if workers:
            done = defer.DeferredList([w.ended for w in workers])

            def kill_all() -> None:
                for w in workers:
                    w.signal("KILL")

            timer = self.reactor.callLater(self.drain_timeout + 5, kill_all)
            yield done
            if timer.active():
                timer.cancel()
        for listening in self._sockets.values():
            yield listening.stopListening()
        self._sockets = {}
        shutil.rmtree(self._runtime_dir, ignore_errors=True)

    # -- reload --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def reload(self, definitions: Definitions | None = None, why: str = "call") -> Any:
        """Validate the new file here, then replace the workers by a generation that serves it."""
        source = self.definitions.source
        planner.started(source, why)
        try:
            new_defs = planner.read_again(source, definitions)  # validate the handler files as they are now
            built = build_ports(new_defs, self._reactor)
            if self.ticket_key is not None:
                tickets.load_master(self.ticket_key)  # the operator may have rotated it: it must still be usable
        except (ConfigErrors, MaterialError) as e:
            return planner.failed(source, planner.error_texts(e, source))
        plan = planner.plan_reload({b.definition.name: b.definition for b in self.ports}, [b.definition for b in built],
                                   shared_socket=True)  # fmt: skip
        kept, removed = plan.kept, plan.removed
        added = [b for b in built if b.definition.name not in kept]
        try:
            opened = yield self._open(added)
        except ConfigErrors as e:
            return planner.failed(source, [str(x) for x in e.errors])
        status_moved = new_defs.status != self.definitions.status
        new_status: Any = None
        if status_moved and new_defs.status is not None:
            new_status = self._status_service(new_defs)
            try:
                new_status.adopt((yield new_status.open()))
            except Exception as e:  # refused as a whole: the old listener and sockets stay
                yield planner.stop_listening(opened)
                return planner.failed(
                    source, [str(ConfigError(new_defs.source, "status", "listen", f"cannot listen: {e}"))]
                )
        closing = {n: self._sockets.pop(n) for n in removed}
        self._sockets.update(opened)
        for b in built:
            b.listening = self._sockets[b.definition.name]
        for b in self.ports:
            if b.runtime.stapler is not None:
                b.runtime.stapler.stop()
        for b in built:
            if b.runtime.stapler is not None:
                b.runtime.stapler.start()
        self.definitions, self.ports = new_defs, built
        if status_moved:
            try:
                yield defer.maybeDeferred(self.removeService, self.getServiceNamed("status"))
            except KeyError:
                pass
            if new_status is not None:
                new_status.setServiceParent(self)
        ensure_watcher(self, self._reactor, quiet=True)
        ensure_cert_watcher(self, self._reactor, quiet=True)
        old, self._current = self._current, self._spawn_generation()
        try:
            yield defer.gatherResults([w.ready for w in self._current], consumeErrors=True)
        except Exception as e:  # the new generation is not serving: keep the old one too
            emit("janustls.reload.failed", "reload of {source}: new workers did not start ({error}); old workers keep serving",
                 LogLevel.error, source=source, errors=[str(e)], error=str(e))  # fmt: skip
            return False
        for w in old:
            w.signal("TERM")
        # Done only when the old generation no longer accepts: from then on every new
        # connection meets the new definitions.
        stopped = defer.DeferredList([w.draining for w in old])
        stopped.addTimeout(_READY_TIMEOUT, self.reactor)
        try:
            yield stopped
        except defer.TimeoutError:
            for w in old:
                w.signal("KILL")
        for listening in closing.values():
            yield listening.stopListening()
        planner.done(source, "reloaded {source}: {workers} new workers serve it; kept {kept}, added {added}, removed {removed}",
             kept=kept, added=[b.definition.name for b in added], removed=removed,
             workers=self.count)  # fmt: skip
        return True


# -- the worker process ------------------------------------------------------------------


def _signed_gauge() -> Any:
    from prometheus_client import Gauge

    return Gauge("janustls_ca_signed", "Accepted client chains per trust anchor (Janus STATUSCA NumSigned)",
                 ["port", "ca"], registry=None, multiprocess_mode="sum")  # fmt: skip


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A worker: serve the inherited sockets until SIGTERM, then drain."""
    parser = argparse.ArgumentParser(prog="janustls-worker")
    parser.add_argument("--port-def", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--listen", action="append", default=[], metavar="NAME=FD:FAMILY")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--logfile", help="append the log here (the parent's twistd --logfile); default stdout")
    args = parser.parse_args(argv)

    reactor = reactor_or_global()
    from janustls.ops import metrics  # after the parent set PROMETHEUS_MULTIPROC_DIR (see `metrics`)

    out = open(args.logfile, "a", buffering=1, encoding="utf-8") if args.logfile else sys.stdout  # noqa: SIM115
    base = logs.log_observer(args.log_format, out)
    pid = os.getpid()

    def observer(event: dict[str, Any]) -> None:
        event.setdefault("worker", args.index)
        event.setdefault("pid", pid)
        base(event)

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent reloads by replacing workers
    fds: dict[str, tuple[int, int]] = {}
    for item in args.listen:
        name, _, rest = item.partition("=")
        fd, _, family = rest.partition(":")
        fds[name] = (int(fd), int(family or socket.AF_INET))
    try:
        tickets.configure_from_env()
    except MaterialError as e:  # serve anyway: only resumption across workers is lost
        emit("janustls.tickets.unavailable", "worker {worker}: no shared session tickets: {error}", LogLevel.error,
             worker=args.index, error=str(e))  # fmt: skip
    definitions = load_definitions(args.port_def)
    definitions = replace(definitions, status=None, ports=tuple(p for p in definitions.ports if p.name in fds))
    svc = JanusService(definitions, reactor)
    for b in svc.ports:
        fd, family = fds[b.definition.name]
        endpoint: IStreamServerEndpoint = AdoptedStreamServerEndpoint(reactor, fd, family)
        if b.definition.proxy_protocol:
            endpoint = ProxyHeaderEndpoint(endpoint)
        b.endpoint = endpoint
    metrics.install_observer()
    signed = _signed_gauge()

    def publish_signed() -> None:
        for b in svc.ports:
            counts = b.runtime.tls.trust.signed
            for ca in b.runtime.tls.trust.cas:
                signed.labels(b.definition.name, ca.subject.rfc4514_string()).set(counts.get(fingerprint(ca), 0))

    LoopingCall(publish_signed).start(1.0)
    svc.startService()
    for b in svc.ports:
        # Inherited copies: the parent keeps the originals open across reloads.
        os.close(fds[b.definition.name][0])
    os.write(_READY_FD, b"ready\n")

    @defer.inlineCallbacks
    def stop() -> Any:
        yield defer.maybeDeferred(svc.stopService)
        try:
            os.write(_READY_FD, b"draining\n")  # the parent's reload waits for this
            os.close(_READY_FD)
        except OSError:
            pass
        yield drain(svc.ports, args.drain_timeout, reactor)
        publish_signed()

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
