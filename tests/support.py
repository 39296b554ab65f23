"""Test support: a reactor in a background thread, real ports on 127.0.0.1:0, real clients.

The reactor runs once per test session in a daemon thread; tests start ports through
`blockingCallFromThread`, then talk to them from the test thread with blocking clients
(Python's ssl, `openssl s_client`, `curl`).  Log events are captured in memory.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import globalLogPublisher

from janustls.core.config import Definitions, parse_definitions
from janustls.ops.service import JanusService
from janustls.pki import CA, Issued, self_signed

_reactor_started = threading.Event()

ROOT = Path(__file__).parents[1]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def reactor_thread() -> Any:
    """Start the global reactor in a daemon thread (once) and return it."""
    from twisted.internet import reactor

    if not _reactor_started.is_set():
        t = threading.Thread(target=lambda: reactor.run(installSignalHandlers=False), daemon=True, name="reactor")
        t.start()
        reactor.callFromThread(_reactor_started.set)
        if not _reactor_started.wait(10):
            raise RuntimeError("the reactor did not start")
    return reactor


def in_reactor(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run f in the reactor thread and wait for its (possibly Deferred) result."""
    reactor_thread()
    from twisted.internet import reactor

    if threading.current_thread().name == "reactor":
        raise RuntimeError("in_reactor() called from the reactor thread: it would wait for itself")
    return threads.blockingCallFromThread(reactor, lambda: defer.maybeDeferred(f, *args, **kwargs))


class EventLog:
    """Captured janustls log events (dicts), shared across tests; filter by time or port."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        globalLogPublisher.addObserver(self)

    def __call__(self, event: dict[str, Any]) -> None:
        if "event_id" in event:
            with self._lock:
                self.events.append(dict(event))

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def since(self, mark: int, event_id: str | None = None, port: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = self.events[mark:]
        return [
            e
            for e in found
            if (event_id is None or e["event_id"] == event_id or e["event_id"].startswith(event_id + "."))
            and (port is None or e.get("port") == port)
        ]

    def wait_for(self, mark: int, event_id: str, port: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.since(mark, event_id, port)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(
            f"no {event_id} event for port {port} within {timeout}s; saw {[e['event_id'] for e in self.since(mark)]}"
        )


EVENTS = EventLog()

#: Connection objects that test handlers hand over (`hand_over(sock)`), for the test thread to inspect.
HANDED: queue.Queue[Any] = queue.Queue()


def hand_over(sock: Any) -> None:
    """Called by a test handler in the reactor thread: give its connection to the test."""
    HANDED.put(sock)


def handed(timeout: float = 5.0) -> Any:
    """The next connection a test handler handed over."""
    return HANDED.get(timeout=timeout)


@dataclass
class TestPKI:
    """Every certificate the tests use, good and bad, made by janustls.pki, written to disk."""

    dir: Path
    root: CA
    inter: CA
    other_root: CA
    files: dict[str, Path] = field(default_factory=dict)
    issued: dict[str, Issued] = field(default_factory=dict)

    def write_client(self, name: str, issued: Issued) -> None:
        paths = issued.write(self.dir / "clients", name, p12=False)
        self.files[f"{name}.pem"] = paths["chain"]
        self.files[f"{name}.key"] = paths["key"]
        self.issued[name] = issued

    def cert(self, name: str) -> Path:
        return self.files[f"{name}.pem"]

    def key(self, name: str) -> Path:
        return self.files[f"{name}.key"]


def make_test_pki(directory: Path) -> TestPKI:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    root = CA.create("Test Root CA")
    inter = root.intermediate("Test Intermediate CA")
    other = CA.create("Other Root CA")
    pki = TestPKI(directory, root, inter, other)
    ca_dir = directory / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    for name, ca in (("root", root), ("inter", inter), ("other", other)):
        (ca_dir / f"{name}.pem").write_bytes(ca.cert_pem)
        pki.files[f"{name}.ca"] = ca_dir / f"{name}.pem"
    server = inter.server("localhost", "127.0.0.1")
    server.write(directory / "server", "server")
    pki.files["server.pem"] = directory / "server" / "server.pem"
    pki.files["server.key"] = directory / "server" / "server.key"
    pki.issued["server"] = server
    pki.write_client("alice", inter.issue("alice", organization="Example Org", units=["eng", "ops"],
                                          emails=["alice@example.test"], dns=["alice.example.test"],
                                          uris=["spiffe://example.test/alice"], ips=["127.0.0.1"]))  # fmt: skip
    pki.write_client("bob", inter.issue("bob", organization="Example Org"))
    pki.write_client("direct", root.issue("direct", organization="Example Org"))
    pki.write_client("expired", inter.issue("expired", not_before=now - 30 * day, not_after=now - day))
    pki.write_client("notyet", inter.issue("notyet", not_before=now + day, not_after=now + 30 * day))
    revoked = inter.issue("revoked")
    inter.revoke(revoked)
    pki.write_client("revoked", revoked)
    pki.write_client("othera", other.issue("othera"))
    pki.write_client("serveronly", inter.issue("serveronly", usage="server"))
    pki.write_client("selfsigned", self_signed("selfsigned"))
    pki.write_client("weakrsa", inter.issue("weakrsa", key_type="rsa1024"))
    deep = inter.intermediate("Deep CA 1").intermediate("Deep CA 2")
    pki.write_client("deep", deep.issue("deep"))
    pki.write_client("large", inter.issue("large", dns=[f"host{i}.{'x' * 40}.example.test" for i in range(400)]))
    (ca_dir / "inter.crl").write_bytes(inter.crl_pem())
    (ca_dir / "root.crl").write_bytes(root.crl_pem())
    pki.files["inter.crl"] = ca_dir / "inter.crl"
    pki.files["root.crl"] = ca_dir / "root.crl"
    # The server's own certificate, presented by a client (replay).  It allows both
    # serverAuth and clientAuth, so only the replay check can refuse it, not the usage check;
    # a port that proves the check uses it as its own certificate.
    pki.write_client("servercert", inter.issue("localhost", usage="both", dns=["localhost"], ips=["127.0.0.1"]))
    return pki


#: Handler modules the tests' ports run, kept as files (copied into a procedure library).
HANDLERS = Path(__file__).parent / "handlers"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port number nothing listens on right now (for processes that need a fixed one)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def install_handlers(procs: Path, **modules: str) -> Path:
    """Copy handler modules from tests/handlers/ into the procedure library `procs` (made if
    missing): `h="echo"` writes procs/h.py from tests/handlers/echo.py.  Returns `procs`."""
    procs.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        shutil.copyfile(HANDLERS / f"{source}.py", procs / f"{module}.py")
    return procs


def port_section(pki: TestPKI | None, name: str = "SECURE", **keys: object) -> str:
    """One `[port:NAME]` section: a srvsock port on 127.0.0.1:0 with the test server's
    certificate and key (none without a `pki`), then `keys` in order, one `key = value` line
    each; a key given again replaces the default in place, a value of None leaves it out."""
    lines: dict[str, object] = {"type": "srvsock", "listen": "tcp:0:interface=127.0.0.1"}
    if pki is not None:
        lines.update(certificate=pki.files["server.pem"], private_key=pki.files["server.key"])
    lines.update(keys)
    return f"[port:{name}]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items() if v is not None)


def secure_port(pki: TestPKI, name: str = "SECURE", port: int = 0, cas: object = None, **keys: object) -> str:
    """The tests' usual port: srvsock on 127.0.0.1:`port` requiring a client certificate
    from `cas` (the test root CA by default), handler `h:serve`; `keys` add or replace lines."""
    usual = {"listen": f"tcp:{port}:interface=127.0.0.1", "client_cert": "require",
             "addca": pki.files["root.ca"] if cas is None else cas, "handler": "h:serve"}  # fmt: skip
    return port_section(pki, name, **{**usual, **keys})


def status_section(port: int | None) -> str:
    """The `[status]` listener on 127.0.0.1:`port` (nothing for None)."""
    return "" if port is None else f"[status]\nlisten = tcp:{port}:interface=127.0.0.1\n"


def definitions(procs: Path | str, *sections: str) -> str:
    """A whole port-definition file: `[janustls]` naming the procedure library, then `sections`."""
    return f"[janustls]\nprocs = {procs}\n" + "".join(sections)


class Server:
    """Running ports from definition text; `port(name)` is the bound TCP port number."""

    def __init__(self, definitions: Definitions) -> None:
        self.service = JanusService(definitions)
        in_reactor(self.service.startService)
        self.mark = EVENTS.mark()

    def port(self, name: str) -> int:
        listening = self.service.listening_port(name)
        assert listening is not None
        return int(listening.getHost().port)

    def stop(self) -> None:
        in_reactor(self.service.stopService)


def start(ini: str, base: Path) -> Server:
    """Start ports from INI text; relative paths resolve against `base`."""
    return Server(parse_definitions(ini, source="test.ini", base=base))


def client_context(
    pki: TestPKI | None,
    cert: str | None = None,
    *,
    tls: str | None = None,
    post_handshake_auth: bool = False,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if pki is not None:
        ctx.load_verify_locations(pki.files["root.ca"])
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None and pki is not None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.load_cert_chain(pki.cert(cert), pki.key(cert))
    ctx.post_handshake_auth = post_handshake_auth
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def talk(port: int, ctx: ssl.SSLContext, send: bytes = b"", timeout: float = 5.0) -> bytes:
    """Connect, send, read until the server closes; raises ssl errors as they come."""
    with tls_connect(port, ctx, timeout) as s:
        if send:
            s.sendall(send)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def openssl_client(
    port: int, args: Iterable[str], stdin: bytes = b"", timeout: float = 10.0
) -> subprocess.CompletedProcess[bytes]:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-quiet", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)


class Twistd:
    """twistd in the foreground with JSON logs on stdout, read line by line."""

    def __init__(self, args: list[str], cwd: Path, python_flags: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, *python_flags, "-c", TWISTD, *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, event_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}")
            if record.get("event_id") == event_id:
                return record  # type: ignore[no-any-return]
        raise AssertionError(f"no {event_id}; saw:\n{''.join(self.seen[-30:])}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
