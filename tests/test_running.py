"""Running janustls for real: twistd, the endpoint string plugin, the embedding API,
`janustls check`, an encrypted server key, and a packaging check in a fresh virtualenv.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

import janustls
from janustls.core.config import parse_definitions, port_from_options
from janustls.errors import ConfigErrors
from janustls.plugin import connection_of
from tests.support import client_context, definitions, free_port, in_reactor, install_handlers, secure_port, start, talk

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def who_port(pki, name: str = "WHO", **keys: str) -> str:
    """The usual port (tests.support.secure_port) running who:serve; `keys` add or replace lines."""
    return secure_port(pki, name, **{"handler": "who:serve", **keys})


@pytest.fixture
def lib(tmp_path, pki):
    return install_handlers(tmp_path / "lib", who="who")


def write_ini(lib: Path, text: str) -> Path:
    f = lib.parent / "ports.ini"
    f.write_text(definitions(lib.name, text))
    return f


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"exited early: {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# -- twistd ------------------------------------------------------------------------------------------


def test_twistd_runs_a_port_definition_file(pki, lib, tmp_path):
    """`twistd -n janustls --port-def FILE` serves the file's ports until it is told to stop."""
    number = free_port()
    ini = write_ini(lib, who_port(pki, listen=f"tcp:{number}:interface=127.0.0.1"))
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log), "janustls", "--port-def", str(ini)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_listening(number, proc)
        for version in ("1.2", "1.3"):
            assert (
                talk(number, client_context(pki, "alice", tls=version), b"hi\n")
                == f"alice|3|TLSv{version}|hi\n".encode()
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    # Twisted 26 ends a clean SIGTERM shutdown by re-raising the signal on itself.
    assert proc.returncode in (0, -signal.SIGTERM), proc.stderr.read().decode()
    text = log.read_text()
    assert "port WHO: srvsock listening on" in text
    assert "connected with TLSv1.3" in text
    assert "port WHO: stopped" in text and "Server Shut Down." in text


def test_twistd_refuses_a_bad_file(pki, lib, tmp_path):
    """A bad definition file: twistd exits non-zero and says which file, section and key are wrong."""
    number = free_port()
    ini = write_ini(lib, who_port(pki, listen=f"tcp:{number}:interface=127.0.0.1", tls_min="1.3", tls_max="1.2"))
    r = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "janustls", "--port-def", str(ini)],
        cwd=tmp_path, capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert f"{ini}: [port:WHO] tls_max: is 1.2, below tls_min = 1.3" in r.stderr.decode()
    assert refused(number)


def test_twistd_stops_when_a_port_cannot_listen(pki, lib, tmp_path):
    """An address already taken: twistd exits non-zero with the port's error, and the
    file's other port does not keep running without it."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    other = free_port()
    ini = write_ini(
        lib,
        who_port(pki, "FREE", listen=f"tcp:{other}:interface=127.0.0.1")
        + who_port(pki, "BUSY", listen=f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"),
    )
    try:
        r = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "janustls", "--port-def", str(ini)],
            cwd=tmp_path, capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        busy.close()
    assert r.returncode != 0
    assert "janustls: Couldn't listen on 127.0.0.1:" in (r.stdout + r.stderr).decode()  # twistd logs stderr
    assert refused(other)


def test_twistd_help_lists_port_def():
    """`twistd janustls --help` documents --port-def, and it is required."""
    r = subprocess.run([str(BIN / "twistd"), "janustls", "--help"], capture_output=True, timeout=60, cwd=REPO)
    assert r.returncode == 0
    assert "--port-def" in r.stdout.decode()
    r = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "janustls"], capture_output=True, timeout=60, cwd=REPO)
    assert r.returncode != 0
    assert "--port-def FILE is required" in (r.stdout + r.stderr).decode()


# -- janustls check -------------------------------------------------------------------------------------


def test_check_good_file(pki, lib):
    """`janustls check` on a good file: what it would run, exit 0, nothing started."""
    number = free_port()
    ini = write_ini(lib, who_port(pki, listen=f"tcp:{number}:interface=127.0.0.1", max_connections="7"))
    r = subprocess.run([str(BIN / "janustls"), "check", str(ini)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert f"[port:WHO] srvsock on tcp:{number}:interface=127.0.0.1" in out
    assert "client_cert = require" in out
    assert "trusts       CN=Test Root CA,O=janustls development" in out
    assert "handler      who:serve" in out
    assert "max_connections 7" in out
    assert out.rstrip().endswith("OK")


def test_check_bad_file_lists_every_error(pki, lib):
    """Every mistake of a file at once, each located; exit 1."""
    text = who_port(pki, "A", listen="tcp:9:interface=127.0.0.1", type="websocket", unknown_key="1")
    text += who_port(pki, "B", listen="tcp:9:interface=127.0.0.1", max_connections="lots")
    ini = write_ini(lib, text)
    r = subprocess.run([str(BIN / "janustls"), "check", str(ini)], capture_output=True, timeout=60)
    assert r.returncode == 1
    err = r.stderr.decode()
    for expected in (
        f"{ini}: [port:A] type: is 'websocket'",
        f"{ini}: [port:A] unknown_key: is not a port key",
        f"{ini}: [port:B] max_connections: is 'lots'",
        f"{ini}: [port:B] listen: uses the same address as [port:A]",
    ):
        assert expected in err, err
    assert "4 errors" in err
    assert r.stdout == b""


def test_check_bad_material(pki, lib):
    """File problems (missing PEM, handler) are found by check too, without starting anything."""
    ini = write_ini(lib, who_port(pki, certificate="missing.pem", handler="nothere:serve"))
    r = subprocess.run([str(BIN / "janustls"), "check", str(ini)], capture_output=True, timeout=60)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{ini}: [port:WHO] certificate: file {lib / 'missing.pem'} does not exist" in err
    assert f"{ini}: [port:WHO] handler:" in err and "nothere.py does not exist" in err


def test_check_reports_file_mistakes_and_material_problems_in_one_run(pki, lib):
    """A mistake in one port's section, and a missing PEM in another's: both at once."""
    text = who_port(pki, "A", tls_min="1.4") + who_port(pki, "B", certificate="missing.pem")
    ini = write_ini(lib, text)
    r = subprocess.run([str(BIN / "janustls"), "check", str(ini)], capture_output=True, timeout=60)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{ini}: [port:A] tls_min: is '1.4'" in err
    assert f"{ini}: [port:B] certificate: file {lib / 'missing.pem'} does not exist" in err
    assert "2 errors" in err


# -- an encrypted server key -------------------------------------------------------------------------------


def test_encrypted_key_with_right_password_serves(pki, lib, monkeypatch, reactor):
    """private_key_password_env with the right password: the port starts and serves."""
    key = pki.issued["server"].key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open sesame"),
    )
    (lib / "enc.key").write_bytes(key)
    monkeypatch.setenv("JANUSTLS_TEST_KEY_PW", "open sesame")
    s = start(
        definitions(lib, who_port(pki, private_key="enc.key", private_key_password_env="JANUSTLS_TEST_KEY_PW")), lib
    )
    try:
        assert talk(s.port("WHO"), client_context(pki, "alice"), b"x\n") == b"alice|3|TLSv1.3|x\n"
    finally:
        s.stop()


# -- the endpoint string plugin ------------------------------------------------------------------------------


class Recorder(Protocol):
    """An ordinary Twisted protocol: records what it sees and answers with who the client is."""

    seen: list

    def connectionMade(self) -> None:
        conn = connection_of(self)
        self.factory.seen.append(("made", conn.cert_levels() if conn else None, conn.tls_version if conn else None))

    def dataReceived(self, data: bytes) -> None:
        conn = connection_of(self)
        self.factory.seen.append(("data", data))
        self.transport.write(b"%s:%s" % (str(conn.cert_info("CN")).encode(), data))
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.factory.seen.append(("lost",))


def wait_seen(factory, n: int) -> list:
    deadline = time.monotonic() + 5
    while len(factory.seen) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return factory.seen


def _listen_endpoint(description: str):
    from twisted.internet import reactor

    factory = Factory.forProtocol(Recorder)
    factory.seen = []

    def go():
        return serverFromString(reactor, description).listen(factory)

    return in_reactor(go), factory


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_endpoint_string_plugin(pki, reactor, events, version):
    """`janustls:0:...` listens with any protocol factory; the protocol starts after the handshake."""
    f = pki.files
    description = (
        f"janustls:0:interface=127.0.0.1:certificate={f['server.pem']}:private_key={f['server.key']}"
        f":client_cert=require:addca={f['root.ca']}"
    )
    listening, factory = _listen_endpoint(description)
    try:
        number = listening.getHost().port
        assert talk(number, client_context(pki, "alice", tls=version), b"ping") == b"alice:ping"
        assert wait_seen(factory, 3) == [("made", 3, f"TLSv{version}"), ("data", b"ping"), ("lost",)]
        # The port's trust applies: no certificate, no protocol.
        mark = events.mark()
        with pytest.raises((OSError,)):
            talk(number, client_context(pki, None, tls=version), b"ping")
        assert events.wait_for(mark, "janustls.refused")["reason"] == "no_certificate"
        assert len(factory.seen) == 3  # the refused client never reached the protocol
    finally:
        in_reactor(listening.stopListening)


def test_endpoint_string_plugin_bad_options(pki, reactor):
    """Endpoint options are port keys, checked the same way."""
    from twisted.internet import reactor as r

    with pytest.raises(ConfigErrors) as info:
        serverFromString(r, f"janustls:0:certificate={pki.files['server.pem']}:client_cert=require")
    assert info.value.errors[0].key == "client_cert"


def test_endpoint_string_from_port_def(pki, lib, reactor):
    """`janustls:port_def=FILE:name=NAME` takes one port of a definition file, with its address and trust."""
    ini = write_ini(lib, who_port(pki, "ONE") + who_port(pki, "TWO", client_cert="none"))
    listening, factory = _listen_endpoint(f"janustls:port_def={ini}:name=two")
    try:
        out = talk(listening.getHost().port, client_context(pki, None), b"hey")
        assert out == b"None:hey"
        assert factory.seen[0] == ("made", 0, "TLSv1.3")
    finally:
        in_reactor(listening.stopListening)


# -- the Python embedding API --------------------------------------------------------------------------------


def test_listen_api(pki, lib, reactor):
    """`janustls.listen(definition, procs)` builds one port and listens: the shortest embedding."""
    definition = port_from_options(
        "embedded",
        {"type": "srvsock", "listen": "tcp:0:interface=127.0.0.1", "certificate": str(pki.files["server.pem"]),
         "private_key": str(pki.files["server.key"]), "client_cert": "request", "addca": str(pki.files["root.ca"]),
         "handler": "who:serve"},
        procs=lib,
    )  # fmt: skip
    listening = in_reactor(janustls.listen, definition, lib)
    try:
        number = listening.getHost().port
        assert talk(number, client_context(pki, "bob"), b"1\n") == b"bob|3|TLSv1.3|1\n"
        assert talk(number, client_context(pki, None), b"2\n") == b"None|0|TLSv1.3|2\n"
    finally:
        in_reactor(listening.stopListening)


def test_janus_service_api(pki, lib, reactor):
    """`JanusService(definitions)` is a Twisted MultiService of every port (and the watcher of their certificate files)."""
    definitions = parse_definitions(
        f"[janustls]\nprocs = {lib}\n" + who_port(pki, "A") + who_port(pki, "B", client_cert="none"), base=lib
    )
    service = janustls.JanusService(definitions)
    assert sorted(s.name for s in service) == ["A", "B", "cert-watch"]
    in_reactor(service.startService)
    try:
        a = service.listening_port("a").getHost().port
        b = service.listening_port("B").getHost().port
        assert talk(a, client_context(pki, "alice"), b"\n") == b"alice|3|TLSv1.3|\n"
        assert talk(b, client_context(pki, "alice"), b"\n") == b"None|0|TLSv1.3|\n"
    finally:
        in_reactor(service.stopService)
    assert refused(a) and refused(b)


def test_janus_service_with_a_bad_port_starts_nothing(pki, lib, reactor):
    """One bad port: JanusService raises before anything listens, the good port included."""
    number = free_port()
    definitions = parse_definitions(
        f"[janustls]\nprocs = {lib}\n"
        + who_port(pki, "GOOD", listen=f"tcp:{number}:interface=127.0.0.1")
        + who_port(pki, "BAD", private_key=str(pki.key("alice"))),
        source="embedded.ini", base=lib,
    )  # fmt: skip
    with pytest.raises(ConfigErrors) as info:
        janustls.JanusService(definitions)
    [e] = info.value.errors
    assert (e.file, e.section, e.key) == ("embedded.ini", "port:BAD", "private_key")
    assert refused(number)


# -- packaging -------------------------------------------------------------------------------------------------


def _venv(tmp: Path, name: str) -> Path:
    env = tmp / name
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True, timeout=120)
    return env


def _pip_install(env: Path, *args: str) -> None:
    r = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True, timeout=600, cwd=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()[-3000:]


def _check_installed(env: Path) -> str:
    bindir = env / "bin"
    r = subprocess.run([str(bindir / "twistd"), "janustls", "--help"], capture_output=True, timeout=120, cwd=env)
    assert r.returncode == 0, r.stderr.decode()
    assert "--port-def" in r.stdout.decode()
    r = subprocess.run([str(bindir / "janustls"), "--help"], capture_output=True, timeout=60, cwd=env)
    assert r.returncode == 0 and b"check" in r.stdout
    code = (
        "import importlib.resources, janustls, twisted.plugins.janustls_plugin as p;"
        "assert importlib.resources.files('janustls').joinpath('py.typed').is_file();"
        "print(janustls.__file__)"
    )
    r = subprocess.run([str(bindir / "python"), "-c", code], capture_output=True, timeout=60, cwd=env)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


@pytest.mark.packaging
def test_pip_install_and_editable_install(tmp_path):
    """The checkout installs into a fresh virtualenv, normally and editable, with its twistd plugin,
    its command and its py.typed marker."""
    env = _venv(tmp_path, "plain")
    _pip_install(env, str(REPO))
    where = Path(_check_installed(env)).resolve()
    assert where.is_relative_to(env.resolve()), where  # a copy in site-packages, not the checkout
    env = _venv(tmp_path, "editable")
    _pip_install(env, "-e", str(REPO))
    where = Path(_check_installed(env)).resolve()
    assert where == REPO / "janustls" / "__init__.py", where
