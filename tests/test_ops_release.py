"""A release that installs: sdist and wheel that `twine check` accepts, the wheel in a fresh
virtualenv outside the checkout running `twistd janustls`, the endpoint plugin and `janustls demo`;
`janustls --version`; socket activation by systemd; what the checkout ignores."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from janustls.cli import main
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("janustls 0.") and "Twisted" in out and "OpenSSL" in out


def test_files_the_docs_make_are_ignored():
    """The README's twistd line leaves twistd.pid (and the demo pki/) in the checkout: ignored, not untracked."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "twistd.pid", "twistd.log", "pki/server/key.pem"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.stdout.split() == ["twistd.pid", "twistd.log", "pki/server/key.pem"], r


def test_demo_keeps_private_keys_out_of_the_procedure_library():
    """procs/ is served by page rules: the demo and the examples name their keys outside it."""
    from janustls.core.config import load_definitions

    for ini in ("demo.ini", "web.ini"):
        definitions = load_definitions(REPO / "procs" / ini)
        procs = definitions.procs.resolve()
        for port in definitions.ports:
            key = Path(os.path.normpath(port.private_key))
            assert not key.is_relative_to(procs), (ini, port.name, key)
            assert key.parent.parent.name == "pki"


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate(timeout=10)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    out, _ = proc.communicate(timeout=20)
    return out or ""


SOCKET_INI = """
[janustls]
procs = {procs}
[port:ACTIVATED]
type = srvsock
listen = systemd:domain=INET:index=0
certificate = {pki}/server/chain.pem
private_key = {pki}/server/key.pem
client_cert = require
addca = {pki}/ca/root.pem
handler = whoami:serve
"""


def test_socket_activation(tmp_path):
    """The docs' socket-activation example: systemd opens the port, twistd janustls serves it."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian: apt-get install systemd)")
    from janustls.pki import write_dev_pki

    pki = write_dev_pki(tmp_path / "pki", clients=("alice",))
    ini = tmp_path / "ports.ini"
    ini.write_text(SOCKET_INI.format(procs=REPO / "procs", pki=pki.directory))
    port = free_port()
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", "--fdname=janustls", "-E", "PYTHONPATH", sys.executable, "-c", twistd, "-n",
                             "--pidfile", "", "janustls", "--port-def", str(ini)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        time.sleep(0.5)
        alice = pki.clients["alice"]
        r = subprocess.run(["curl", "-sS", "--max-time", "30", "--cacert", str(pki.root), "--cert", str(alice["chain"]),
                            "--key", str(alice["key"]), f"https://127.0.0.1:{port}/"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        out = stop(proc)
    assert "hello alice" in r.stdout, (r.stdout, r.stderr, out)
    assert "ACTIVATED" in out, out


def test_containerfile_is_documented_and_consistent():
    text = (REPO / "Containerfile").read_text()
    assert "pip install" in text and "twistd" in text and "janustls" in text
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src
    assert "Containerfile" in (REPO / "docs" / "operations.md").read_text()


# -- the wheel, installed where no checkout is ------------------------------------------------------


def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r


ENDPOINT = """
import sys
from twisted.internet import reactor, protocol
from twisted.internet.endpoints import serverFromString
pki = sys.argv[1]
ep = serverFromString(reactor, f"janustls:0:interface=127.0.0.1:certificate={pki}/server/chain.pem:private_key={pki}/server/key.pem")
def up(port):
    print("listening", port.getHost().port, flush=True)
    reactor.callLater(0.2, reactor.stop)
ep.listen(protocol.Factory.forProtocol(protocol.Protocol)).addCallbacks(up, lambda f: (print(f), reactor.stop()))
reactor.run()
"""


@pytest.mark.packaging
@pytest.mark.timeout(900)
def test_wheel_installs_and_runs_without_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], cwd=tmp_path, timeout=600)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])], cwd=tmp_path)
    env = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(env)], cwd=tmp_path)
    bindir = env / "bin"
    run(
        [str(bindir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheels[0])],
        cwd=tmp_path,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(bindir / "python"), "-c", "import janustls; print(janustls.__file__)"], cwd=empty).stdout.strip()
    assert Path(where).resolve().is_relative_to(env.resolve()) and not Path(where).resolve().is_relative_to(REPO)
    assert "--port-def" in run([str(bindir / "twistd"), "janustls", "--help"], cwd=empty).stdout
    assert run([str(bindir / "janustls"), "--version"], cwd=empty).stdout.startswith("janustls 0.")

    demo = subprocess.Popen([str(bindir / "janustls"), "demo"], cwd=empty, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    try:
        wait_for_port(8443, demo)
        pki = empty / "pki"
        assert (pki / "server" / "key.pem").is_file() and not (empty / "procs").exists()
        r = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(pki / "ca" / "root.pem"),
                            "--cert", str(pki / "client" / "alice.pem"), "--key", str(pki / "client" / "alice.key"),
                            "https://127.0.0.1:8443/"], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "hello alice" in r.stdout, (r.stdout, r.stderr)
    finally:
        out = stop(demo)
    assert "pki/client/alice.pem" in out  # the hint names the files it made, where they are

    r = run([str(bindir / "python"), "-c", ENDPOINT, str(empty / "pki")], cwd=empty)
    assert r.stdout.startswith("listening "), r.stdout
