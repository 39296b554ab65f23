"""What the benchmarks share: the PKI, the bare Twisted server, process clocks and the paired runner.

The paired runner measures two servers at the same time (see benchmarks/README.md, "How the
ratios are measured"):

- both servers run as their own processes, pinned to one core; the client processes are
  pinned to the other core(s) when the machine has two or more;
- each round, the same number of client processes load each server, started interleaved
  (A, B, A, B, ... or B, A, B, A, ... swapped every round) and looping on one operation;
- after a short ramp, one window (2 s by default) is measured for both at once: each
  server's CPU from its own process clock (`/proc/PID/stat` utime + stime) and the
  operations its clients completed, read at the same instants;
- the ratio of a round is CPU per operation of A over that of B; the reported ratio is
  the median of the per-round ratios, with its quartiles.

A script supplies a *driver*: how a client connects and what one operation is.
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

#: TLS 1.2 suites of the bare servers; scripts check they equal janustls' default.
BARE_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_TICK = os.sysconf("SC_CLK_TCK")


# -- process clocks and limits -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of the whole line


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- CPU pinning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    servers: frozenset[int] | None
    clients: frozenset[int] | None
    note: str


def plan_pinning(enabled: bool = True) -> Pinning:
    """Servers on the first allowed core, clients on the others; none when not possible."""
    if not enabled:
        return Pinning(None, None, "CPU pinning: off (--no-pin); servers and clients share all cores")
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(
            None, None, "CPU pinning: NOT POSSIBLE (no sched_setaffinity); servers and clients share all cores"
        )
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return Pinning(
            None, None, f"CPU pinning: NOT POSSIBLE ({len(allowed)} core allowed); servers and clients share it"
        )
    servers, clients = frozenset(allowed[:1]), frozenset(allowed[1:])
    return Pinning(
        servers,
        clients,
        f"CPU pinning: servers on core {allowed[0]}, clients on core(s) {','.join(map(str, allowed[1:]))}",
    )


def pin(pid: int, cpus: frozenset[int] | None) -> None:
    if cpus:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


# -- the PKI ----------------------------------------------------------------------------------------


def make_pki(directory: Path, clients: int, intermediate: bool = True) -> None:
    """directory/ca/root.pem, server/server.{pem,key}, clients/client{i}.{pem,key} (CN client{i}); EC P-256."""
    from janustls.pki import CA

    root = CA.create("Bench Root CA")
    issuer = root.intermediate("Bench Intermediate CA") if intermediate else root
    (directory / "ca").mkdir(parents=True, exist_ok=True)
    (directory / "ca" / "root.pem").write_bytes(root.cert_pem)
    issuer.server("localhost", "127.0.0.1").write(directory / "server", "server")
    for i in range(clients):
        issued = issuer.issue(
            f"client{i}", organization="Bench Org", units=["bench"], emails=[f"client{i}@example.test"]
        )
        issued.write(directory / "clients", f"client{i}", p12=False)


def client_context(directory: Path, index: int) -> ssl.SSLContext:
    """Python's ssl, TLS 1.3, with client certificate `index`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(directory / "ca" / "root.pem")
    ctx.load_cert_chain(directory / "clients" / f"client{index}.pem", directory / "clients" / f"client{index}.key")
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)


def recv_exactly(s: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        data = s.recv(n)
        if not data:
            raise ConnectionError("the server closed the connection")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


# -- the servers' side ----------------------------------------------------------------------------


def begin_logging(directory: Path, kind: str, log: str = "discard") -> None:
    """`discard`: events are emitted and published, then dropped; `file`: a text log file, as twistd writes."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    if log == "file":
        out = open(directory / f"{kind}.log", "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
        observer: Any = textFileLogObserver(out)
    else:

        def observer(event: dict[str, Any]) -> None:
            pass

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def bare_context(directory: Path, release_buffers: bool = True) -> Any:
    """A pyOpenSSL Context as a careful Twisted server builds it, with janustls' TLS settings.

    TLS 1.2-1.3, janustls' default ciphers, no compression, server cipher preference, a
    session id context, the root as the client CA (in the CertificateRequest and the
    store), a client certificate required, and a verify callback returning OpenSSL's
    verdict (what Twisted's `CertificateOptions` installs).
    """
    from cryptography import x509
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_cipher_list(BARE_CIPHERS.encode("ascii"))
    if release_buffers:
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate_chain_file(str(directory / "server" / "server.pem"))
    ctx.use_privatekey_file(str(directory / "server" / "server.key"))
    ctx.check_privatekey()
    ctx.set_session_id(hashlib.sha256(b"bare:BENCH").digest()[:32])
    root = directory / "ca" / "root.pem"
    ctx.load_verify_locations(str(root))
    ctx.add_client_ca(x509.load_pem_x509_certificate(root.read_bytes()))

    def verify(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        return bool(ok)

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


def listen_bare(
    reactor: Any, directory: Path, wrapped: Any, release_buffers: bool = True, buffered: bool = False
) -> int:
    """`TLSMemoryBIOFactory` around `bare_context` and the factory `wrapped`; returns the port number.

    The factory's default protocol, `BufferingTLSTransport`, sends small writes on the next
    reactor turn; a TLS 1.3 server's session tickets then leave in one segment and the first
    answer in a second one, which Nagle's algorithm holds until the client's delayed ACK
    (40 ms here): the server idles.  janustls ports use `TLSMemoryBIOProtocol`, which sends at
    once; so does the bare server unless `buffered`.
    """
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
    from zope.interface import implementer

    ctx = bare_context(directory, release_buffers)

    @implementer(IOpenSSLServerConnectionCreator)
    class Creator:
        def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
            return SSL.Connection(ctx, None)

    tls = TLSMemoryBIOFactory(Creator(), False, wrapped)
    if not buffered:
        tls.protocol = TLSMemoryBIOProtocol
    tls.noisy = False
    return int(reactor.listenTCP(0, tls, backlog=1024, interface="127.0.0.1").getHost().port)


def bare_echo_factory() -> Any:
    """The bare line server's protocol: echo in `dataReceived`."""
    from twisted.internet.protocol import Factory, Protocol

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    class EchoFactory(Factory):
        protocol = Echo
        noisy = False

    return EchoFactory()


def run_reactor(start: Callable[[], int], profile_out: Path | None = None) -> None:
    """Run the reactor; print `PORT n` once `start()` listens.

    With `profile_out`, SIGUSR1 starts cProfile and SIGUSR2 stops it and writes the stats,
    so that only the measured handshakes are profiled.  The profiler's clock is the process
    CPU clock: time the server spends descheduled (other processes on its core) or waiting in
    epoll is not counted, so profiles taken at different moments compare.
    """
    raise_nofile()
    from twisted.internet import reactor

    def ready() -> None:
        sys.stdout.write(f"PORT {start()}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(ready)
    if profile_out is not None:
        import cProfile

        profiler = cProfile.Profile(time.process_time)

        def stop(*_: Any) -> None:
            profiler.disable()
            profiler.dump_stats(str(profile_out))
            sys.stdout.write("PROFILED\n")
            sys.stdout.flush()

        signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
        signal.signal(signal.SIGUSR2, stop)
    reactor.run()  # type: ignore[attr-defined]


@dataclass
class ServerProcess:
    kind: str
    proc: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_line(self, expected: str, timeout: float = 30) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(expected):
                return
            if not line:
                break
        raise RuntimeError(f"the {self.kind} server did not say {expected!r}")


def start_server(script: str, kind: str, args: Sequence[str], cpus: frozenset[int] | None = None) -> ServerProcess:
    """Start `script --serve KIND ARGS...`, which prints `PORT n` when it listens."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(script), "--serve", kind, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    pin(proc.pid, cpus)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the {kind} server did not start (said {line!r})")
    return ServerProcess(kind, proc, int(line.split()[1]))


# -- the clients -------------------------------------------------------------------------------------


class Driver:
    """What a client process does; the scripts subclass it.

    `prepare(workload, port)` returns the client's state for a run (connections made,
    a session fetched); `step(state)` does one operation and returns the units it counts
    (1 per handshake or exchange; bytes for a stream); `finish(state)` closes and returns
    a number of failures (e.g. handshakes that did not resume).  `hold(port)` opens one
    connection and returns it (memory figures).
    """

    def __init__(self, directory: Path, index: int) -> None:
        self.directory = directory
        self.index = index

    def prepare(self, workload: str, port: int) -> Any:
        raise NotImplementedError

    def step(self, state: Any) -> int:
        raise NotImplementedError

    def finish(self, state: Any) -> int:
        return 0

    def hold(self, port: int) -> Any:
        raise NotImplementedError


class HandshakeDriver(Driver):
    """A driver of the three usual workloads: `handshake` (a new connection, one exchange, close),
    `resumed` (the same with the newest ticket; `finish` counts those that did not resume) and one
    keep-alive workload on a held connection.  Subclasses say how a connection is opened (with its
    first exchange) and what the keep-alive workload does."""

    def __init__(self, directory: Path, index: int) -> None:
        super().__init__(directory, index)
        self.ctx = client_context(directory, index)

    def _open(self, port: int, session: Any = None) -> Any:
        raise NotImplementedError

    def prepare_exchange(self, workload: str, port: int) -> list[Any]:
        """[connection, what `exchange` needs] for the keep-alive workload; ValueError for another."""
        raise NotImplementedError

    def exchange(self, state: list[Any]) -> None:
        raise NotImplementedError

    def prepare(self, workload: str, port: int) -> Any:
        if workload == "handshake":
            return [workload, port]
        if workload == "resumed":
            s = self._open(port)
            session = s.session
            s.close()
            return [workload, port, session, 0]
        return [workload, *self.prepare_exchange(workload, port)]

    def step(self, state: list[Any]) -> int:
        workload = state[0]
        if workload == "handshake":
            self._open(state[1]).close()
        elif workload == "resumed":
            s = self._open(state[1], state[2])
            if not s.session_reused:
                state[3] += 1
            state[2] = s.session
            s.close()
        else:
            self.exchange(state)
        return 1

    def finish(self, state: list[Any]) -> int:
        if state[0] not in ("handshake", "resumed"):
            state[1].close()
        return int(state[3]) if state[0] == "resumed" else 0

    def hold(self, port: int) -> Any:
        return self._open(port)


def _client_main(
    pipe: Pipe,
    driver_class: type[Driver],
    directory: Path,
    index: int,
    counters: Any,
    stop: Any,
    cpus: frozenset[int] | None,
) -> None:
    pin(0, cpus)
    raise_nofile()
    driver = driver_class(directory, index)
    held: list[Any] = []
    while True:
        cmd, *args = pipe.recv()
        try:
            if cmd == "quit":
                return
            if cmd == "run":
                workload, port, limit = args
                state = driver.prepare(workload, port)
                pipe.send(("ready", None))
                pipe.recv()  # go
                done = 0
                while not stop.is_set() and (limit is None or done < limit):
                    units = driver.step(state)
                    counters[index] += units
                    done += 1
                pipe.send(("ok", driver.finish(state)))
            elif cmd == "hold":
                port, n = args
                for _ in range(n):
                    held.append(driver.hold(port))
                pipe.send(("ok", len(held)))
            elif cmd == "release":
                for s in held:
                    s.close()
                held.clear()
                pipe.send(("ok", 0))
            else:
                pipe.send(("error", f"unknown command {cmd}"))
        except Exception as e:  # reported to the main process, which stops the run
            pipe.send(("error", f"client {index}: {type(e).__name__}: {e}"))


@dataclass
class Window:
    """One server's figures over one measured window."""

    cpu: float  # seconds of server CPU
    units: int  # operations (or bytes) its clients completed
    seconds: float  # wall time of the window

    @property
    def per_unit_us(self) -> float:
        return self.cpu * 1e6 / self.units if self.units else float("nan")

    @property
    def busy(self) -> float:
        """Server CPU / wall time: 1.0 is a core of its own, 0.5 half of one."""
        return self.cpu / self.seconds


class ClientPool:
    """Client processes, forked once, pinned, each with a shared counter of completed units."""

    def __init__(self, driver_class: type[Driver], directory: Path, count: int, cpus: frozenset[int] | None) -> None:
        mp = get_context("fork")
        self.counters = mp.RawArray("q", count)
        self.stop_event = mp.Event()
        self.pipes: list[Pipe] = []
        self.procs = []
        for i in range(count):
            parent, child = mp.Pipe()
            p = mp.Process(
                target=_client_main,
                args=(child, driver_class, directory, i, self.counters, self.stop_event, cpus),
                daemon=True,
            )
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def __len__(self) -> int:
        return len(self.pipes)

    def _reply(self, i: int) -> Any:
        status, value = self.pipes[i].recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def run(self, assignment: Sequence[tuple[int, int]], workload: str, limit: int | None = None) -> None:
        """Start client i on port p for every (i, p), in that order; return once all are looping."""
        self.stop_event.clear()
        for i, port in assignment:
            self.pipes[i].send(("run", workload, port, limit))
        for i, _ in assignment:
            self._reply(i)
        for i, _ in assignment:
            self.pipes[i].send(("go",))

    def wait(self, assignment: Sequence[tuple[int, int]]) -> list[int]:
        """Wait for clients started with a `limit` to reach it; their failure counts."""
        return [self._reply(i) for i, _ in assignment]

    def finish(self, assignment: Sequence[tuple[int, int]]) -> list[int]:
        """Stop the clients of `run` (or wait for them to reach their limit); their failure counts."""
        self.stop_event.set()
        return [self._reply(i) for i, _ in assignment]

    def units(self, indices: Sequence[int]) -> int:
        return sum(self.counters[i] for i in indices)

    def hold(self, port: int, total: int) -> None:
        share = [total // len(self) + (1 if i < total % len(self) else 0) for i in range(len(self))]
        for pipe, n in zip(self.pipes, share, strict=True):
            pipe.send(("hold", port, n))
        for i in range(len(self)):
            self._reply(i)

    def release(self) -> None:
        for pipe in self.pipes:
            pipe.send(("release",))
        for i in range(len(self)):
            self._reply(i)

    def close(self) -> None:
        self.stop_event.set()
        for pipe in self.pipes:
            try:
                pipe.send(("quit",))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


# -- paired windows ----------------------------------------------------------------------------------


def measure_memory(server: ServerProcess, pool: ClientPool, connections: int) -> tuple[float, int, int]:
    """KiB of server RSS per idle connection, with the baseline and loaded RSS."""
    pool.hold(server.port, 30)  # warm-up: a few complete connections
    pool.release()
    time.sleep(0.3)
    base = rss_kib(server.pid)
    pool.hold(server.port, connections)
    time.sleep(0.5)
    loaded = rss_kib(server.pid)
    pool.release()
    return (loaded - base) / connections, base, loaded


def paired_window(
    pool: ClientPool,
    a: ServerProcess,
    b: ServerProcess,
    workload: str,
    per_server: int,
    swap: bool,
    window: float,
    ramp: float,
) -> tuple[Window, Window]:
    """Load `a` and `b` with `per_server` clients each at once; measure both over the same window."""
    if 2 * per_server > len(pool):
        raise ValueError(f"{2 * per_server} clients needed, {len(pool)} started")
    first, second = (b, a) if swap else (a, b)
    assignment: list[tuple[int, int]] = []
    owners: dict[str, list[int]] = {a.kind: [], b.kind: []}
    for k in range(per_server):  # interleaved: first, second, first, second, ...
        for j, server in enumerate((first, second)):
            i = 2 * k + j
            assignment.append((i, server.port))
            owners[server.kind].append(i)
    for i, _ in assignment:
        pool.counters[i] = 0
    pool.run(assignment, workload)
    try:
        time.sleep(ramp)
        t0 = time.monotonic()
        cpu0 = {s.kind: cpu_seconds(s.pid) for s in (first, second)}
        units0 = {kind: pool.units(ix) for kind, ix in owners.items()}
        time.sleep(window)
        cpu1 = {s.kind: cpu_seconds(s.pid) for s in (first, second)}
        units1 = {kind: pool.units(ix) for kind, ix in owners.items()}
        t1 = time.monotonic()
    finally:
        failures = pool.finish(assignment)
    if any(failures):
        raise RuntimeError(
            f"{workload}: {sum(failures)} operations failed their check (e.g. a handshake did not resume)"
        )
    return tuple(  # type: ignore[return-value]
        Window(cpu1[s.kind] - cpu0[s.kind], units1[s.kind] - units0[s.kind], t1 - t0) for s in (a, b)
    )


@dataclass
class Paired:
    """Per-round windows of a pair (a, b) and the ratio a/b of CPU per unit."""

    a: str
    b: str
    windows: list[tuple[Window, Window]] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """a/b per round; NaN for a round in which b's clock did not tick (a tiny --quick window
        on a loaded machine: the process clock counts in 10 ms ticks)."""
        return [wa.per_unit_us / wb.per_unit_us if wb.per_unit_us else math.nan for wa, wb in self.windows]

    def summary(self) -> tuple[float, float, float, float, float]:
        """Median ratio, its first and third quartiles, min, max (rounds without a ratio left out)."""
        r = sorted(x for x in self.ratios if not math.isnan(x)) or [math.nan]
        if len(r) == 1:
            return r[0], r[0], r[0], r[0], r[0]
        q = statistics.quantiles(r, n=4, method="inclusive")
        return statistics.median(r), q[0], q[2], r[0], r[-1]

    def median_us(self, which: int) -> float:
        return statistics.median(w[which].per_unit_us for w in self.windows)

    def median_busy(self, which: int) -> float:
        return statistics.median(w[which].busy for w in self.windows)

    def median_rate(self, which: int) -> float:
        return statistics.median(w[which].units / w[which].seconds for w in self.windows)


RATIO_HEADER = (
    f"{'measurement':<46} {'A us':>9} {'B us':>9} {'A/B':>6}  {'quartiles':>11}  {'min..max':>11}  {'busy A,B':>9}"
)


def ratio_line(label: str, p: Paired, scale: float = 1.0) -> str:
    """One row: medians of A and B per unit (times `scale`), the median ratio, quartiles, extremes, busy."""
    med, q1, q3, lo, hi = p.summary()
    return (
        f"{label:<46} {p.median_us(0) * scale:9.1f} {p.median_us(1) * scale:9.1f} {med:6.3f}  "
        f"{q1:5.3f}-{q3:5.3f}  {lo:5.3f}..{hi:5.3f}  {p.median_busy(0):4.2f},{p.median_busy(1):4.2f}"
    )


def run_pairs(
    pool: ClientPool,
    pairs: Sequence[tuple[ServerProcess, ServerProcess]],
    workload: str,
    per_server: int,
    rounds: int,
    window: float,
    ramp: float,
    progress: Callable[[str], None] | None = None,
) -> list[Paired]:
    """`rounds` rounds; in each, every pair gets one paired window; pair order and start order swap each round."""
    results = [Paired(a.kind, b.kind) for a, b in pairs]
    for r in range(rounds):
        order = list(range(len(pairs)))
        if r % 2:
            order.reverse()
        for k in order:
            a, b = pairs[k]
            results[k].windows.append(paired_window(pool, a, b, workload, per_server, bool(r % 2), window, ramp))
        if progress:
            progress(
                f"  {workload} x{per_server} round {r + 1}/{rounds}: "
                + ", ".join(f"{p.a}/{p.b} {p.ratios[-1]:.3f}" for p in results)
            )
    return results


def machine_line() -> str:
    import platform

    import OpenSSL
    from cryptography.hazmat.backends.openssl.backend import backend

    import twisted

    try:
        load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "load average unknown"
    return (
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, {load}; Python {platform.python_version()}, "
        f"Twisted {twisted.__version__}, pyOpenSSL {OpenSSL.__version__}, {backend.openssl_version_text()}"
    )


# -- profiles -----------------------------------------------------------------------------------------


#: The reactor waiting for events: wall time, not work; left out of every profile figure.
IDLE = ("~", 0, "<method 'poll' of 'select.epoll' objects>")


def profile_rows(path: Path) -> dict[tuple[str, int, str], tuple[int, float, float]]:
    """{(file, line, function): (calls, own seconds, cumulative seconds)} of a cProfile dump.

    The time the reactor spent waiting in epoll is taken out of the row itself and of the
    cumulative time of its callers (the reactor loop), so that shares are of work done.
    """
    import pstats

    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    idle = raw.get(IDLE, (0, 0, 0.0, 0.0, {}))[2]
    rows = {}
    for key, (_cc, nc, tt, ct, _callers) in raw.items():
        if key == IDLE:
            continue
        if ct >= idle and (
            "epollreactor" in key[0] or key[2] in ("run", "mainLoop", "doPoll", "doIteration", "runcall")
        ):
            ct -= idle
        rows[key] = (nc, tt, ct)
    return rows


def short_name(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    parts = Path(filename).parts
    for anchor in ("janustls", "twisted", "OpenSSL", "cryptography", "zope", "constantly", "incremental"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[i:])}:{line}({name})"
    return f"{Path(filename).name}:{line}({name})"


def area(key: tuple[str, int, str]) -> str:
    """A coarse bucket for a function: a janustls module, a Twisted package, pyOpenSSL, C calls, ..."""
    filename, _line, name = key
    if filename == "~":
        if "_openssl" in name or "lib." in name or "ffi" in name:
            return "C: OpenSSL via cffi"
        if "socket" in name or "recv" in name or "send" in name or "epoll" in name or "poll" in name:
            return "C: sockets, epoll"
        return "C: other builtins"
    parts = Path(filename).parts
    if "janustls" in parts:
        i = len(parts) - 1 - parts[::-1].index("janustls")
        return "janustls/" + "/".join(parts[i + 1 :])
    if "twisted" in parts:
        i = len(parts) - 1 - parts[::-1].index("twisted")
        sub = parts[i + 1 : i + 3]
        return "twisted/" + "/".join(sub)
    if "OpenSSL" in parts:
        return "pyOpenSSL"
    if "cryptography" in parts:
        return "cryptography"
    if Path(filename).name.startswith("bench") or "procs" in parts or "janustls-bench" in filename:
        return "benchmark handler"
    return "stdlib/other: " + Path(filename).name


def profile_server(
    kind: str,
    script: str,
    args: Sequence[str],
    directory: Path,
    pin: Pinning,
    pool: ClientPool,
    clients: int,
    handshakes: int,
) -> tuple[Path, int, float]:
    """Run `handshakes` full handshakes (split over `clients` clients) against a fresh `kind` under cProfile."""
    out = directory / f"{kind}.prof"
    server = start_server(script, kind, [*args, "--profile-out", str(out)], pin.servers)
    try:
        assignment = [(i, server.port) for i in range(clients)]
        pool.run(assignment, "handshake", limit=5)  # warm-up, not profiled
        pool.wait(assignment)
        per_client = max(handshakes // clients, 1)
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.1)
        cpu0 = cpu_seconds(server.pid)
        pool.run(assignment, "handshake", limit=per_client)
        pool.wait(assignment)
        time.sleep(0.3)  # the last closes reach the server
        cpu = cpu_seconds(server.pid) - cpu0
        os.kill(server.pid, signal.SIGUSR2)
        server.wait_line("PROFILED")
    finally:
        server.stop()
    total = per_client * clients
    return out, total, cpu * 1e6 / total


def profile_report(
    janus: tuple[Path, int, float],
    bare: tuple[Path, int, float],
    unprofiled: dict[str, float],
    suspects: Sequence[tuple[str, str, str]] = (),
) -> str:
    rows = {"janustls": profile_rows(janus[0]), "bare": profile_rows(bare[0])}
    n = {"janustls": janus[1], "bare": bare[1]}
    own = {k: sum(tt for _nc, tt, _ct in r.values()) * 1e6 / n[k] for k, r in rows.items()}
    out = []
    out.append(
        f"cProfile, full handshakes (TLS 1.3, mutual): janustls {n['janustls']}, bare {n['bare']}, "
        "each server alone and loaded the same way; figures are profiled CPU us per handshake "
        "(cProfile inflates Python code more than C: compare shares and differences)"
    )
    out.append(
        f"  profiled time per handshake: janustls {own['janustls']:.0f} us, bare {own['bare']:.0f} us, "
        f"difference {own['janustls'] - own['bare']:.0f} us ({own['janustls'] / own['bare']:.3f}x); "
        f"process CPU while profiled: janustls {janus[2]:.0f} us, bare {bare[2]:.0f} us"
    )
    if unprofiled:
        out.append("  unprofiled (paired run above): " + ", ".join(f"{k} {v:.0f} us" for k, v in unprofiled.items()))

    def by_area(r: dict[Any, tuple[int, float, float]], total: int) -> dict[str, float]:
        acc: dict[str, float] = {}
        for key, (_nc, tt, _ct) in r.items():
            acc[area(key)] = acc.get(area(key), 0.0) + tt * 1e6 / total
        return acc

    areas = {k: by_area(rows[k], n[k]) for k in rows}
    names = sorted(
        set(areas["janustls"]) | set(areas["bare"]),
        key=lambda a: -(areas["janustls"].get(a, 0) - areas["bare"].get(a, 0)),
    )
    out.append("")
    out.append(
        f"  {'own time by area':<44} {'janustls us':>11} {'share':>6} {'bare us':>9} {'share':>6} {'extra us':>9}"
    )
    for a in names:
        j, b = areas["janustls"].get(a, 0.0), areas["bare"].get(a, 0.0)
        if max(j, b) < 1.0:
            continue
        out.append(
            f"  {a[:44]:<44} {j:11.1f} {100 * j / own['janustls']:5.1f}% {b:9.1f} {100 * b / own['bare']:5.1f}% {j - b:9.1f}"
        )

    keys = set(rows["janustls"]) | set(rows["bare"])

    def per(k: str, key: Any, col: int) -> float:
        v = rows[k].get(key)
        return v[col] * 1e6 / n[k] if v else 0.0

    diffs = sorted(keys, key=lambda key: -(per("janustls", key, 1) - per("bare", key, 1)))
    out.append("")
    out.append(
        f"  {'own time by function, largest extra first':<64} {'janustls':>9} {'bare':>8} {'extra':>8} {'calls/hs':>9}"
    )
    for key in diffs[:30]:
        j, b = per("janustls", key, 1), per("bare", key, 1)
        calls = rows["janustls"].get(key, (0,))[0] / n["janustls"]
        out.append(f"  {short_name(key)[:64]:<64} {j:9.1f} {b:8.1f} {j - b:8.1f} {calls:9.2f}")

    out.append("")
    out.append(f"  {'janustls code, inclusive time per handshake':<64} {'cum us':>8} {'share':>6} {'calls/hs':>9}")
    janus_keys = [k for k in rows["janustls"] if "janustls" in Path(k[0]).parts]
    for key in sorted(janus_keys, key=lambda k: -rows["janustls"][k][2])[:30]:
        ct = per("janustls", key, 2)
        if ct < 0.5:
            break
        calls = rows["janustls"][key][0] / n["janustls"]
        out.append(f"  {short_name(key)[:64]:<64} {ct:8.1f} {100 * ct / own['janustls']:5.1f}% {calls:9.2f}")

    out.append("")
    out.append(
        f"  {'named per-handshake work (inclusive; nested rows overlap)':<58} {'cum us':>8} {'share':>6} {'calls/hs':>9}  function"
    )
    for label, suffix, name in suspects:
        found = [k for k in rows["janustls"] if k[0].endswith(suffix) and k[2] == name]
        if not found:
            out.append(f"  {label:<58} {'-':>8} {'':>6} {'':>9}  {suffix}:{name} (not called)")
            continue
        ct = sum(per("janustls", k, 2) for k in found)
        calls = sum(rows["janustls"][k][0] for k in found) / n["janustls"]
        out.append(f"  {label:<58} {ct:8.1f} {100 * ct / own['janustls']:5.1f}% {calls:9.2f}  {suffix}:{name}")
    return "\n".join(out)
