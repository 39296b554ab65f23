"""OCSP stapling of the port's own certificate, seen by `openssl s_client -status`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from janustls.pki import CA
from tests.ocsp_responder import Responder, free_port
from tests.support import EVENTS, start

HANDLER = """
def serve(sock):
    sock.write(b"hi\\n")
"""


def s_client_status(port: int, tls: str) -> str:
    # -ign_eof: s_client otherwise ends the connection as soon as it reads the end of its
    # (empty) standard input, which races the handler's first line: in TLS 1.3 the server
    # writes only after the client's Finished, so s_client usually closes first.  With it,
    # s_client reads until the port closes (the handler returns).
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-status", "-ign_eof",
           f"-tls{tls.replace('.', '_')}"]  # fmt: skip
    done = subprocess.run(cmd, input=b"", capture_output=True, timeout=20)
    return done.stdout.decode(errors="replace")


def ini(tmp: Path, server: dict[str, Path]) -> str:
    procs = tmp / "procs"
    procs.mkdir(exist_ok=True)
    (procs / "h.py").write_text(HANDLER)
    return f"""
[janustls]
procs = {procs}
[port:STAPLE]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {server["chain"]}
private_key = {server["key"]}
handler = h:serve
ocsp_staple = yes
ocsp_timeout = 2
"""


def test_staple_seen_by_openssl(tmp_path: Path) -> None:
    root = CA.create("Staple Root")
    inter = root.intermediate("Staple Intermediate")
    responder = Responder(inter)
    try:
        files = inter.server("localhost", "127.0.0.1", ocsp_url=responder.url).write(tmp_path / "server", "server")
        mark = EVENTS.mark()
        server = start(ini(tmp_path, files), tmp_path)
        try:
            EVENTS.wait_for(mark, "janustls.staple.fetched", "STAPLE", timeout=10)
            for tls in ("1.2", "1.3"):
                out = s_client_status(server.port("STAPLE"), tls)
                assert "OCSP Response Status: successful" in out, out
                assert "Cert Status: good" in out, out
        finally:
            server.stop()
    finally:
        responder.stop()


def test_responder_down_at_start_then_up(tmp_path: Path) -> None:
    root = CA.create("Staple Root 2")
    inter = root.intermediate("Staple Intermediate 2")
    port = free_port()
    url = f"http://127.0.0.1:{port}/ocsp"
    files = inter.server("localhost", "127.0.0.1", ocsp_url=url).write(tmp_path / "server", "server")
    mark = EVENTS.mark()
    server = start(ini(tmp_path, files), tmp_path)
    responder = None
    try:
        EVENTS.wait_for(mark, "janustls.staple.failed", "STAPLE", timeout=10)
        out = s_client_status(server.port("STAPLE"), "1.3")
        assert "no response sent" in out, out  # the port serves, without a staple
        assert "hi" in out.splitlines(), out  # the handler's line (not "hi" within "lifetime hint")
        responder = Responder(inter, port=port)
        mark = EVENTS.mark()
        EVENTS.wait_for(mark, "janustls.staple.fetched", "STAPLE", timeout=35)
        out = s_client_status(server.port("STAPLE"), "1.3")
        assert "OCSP Response Status: successful" in out, out
    finally:
        server.stop()
        if responder is not None:
            responder.stop()


def test_failed_reload_with_a_new_certificate_keeps_the_old_stapler(tmp_path: Path) -> None:
    """A reload that names a new certificate but fails leaves the live port stapling (its
    stapler keeps refreshing), and the stapler of the refused certificate never runs."""
    from janustls.core.config import parse_definitions
    from tests.support import in_reactor

    root = CA.create("Staple Root 3")
    inter = root.intermediate("Staple Intermediate 3")
    responder = Responder(inter, validity=4.0)  # short-lived answers: refreshed every ~2 s
    try:
        files = inter.server("localhost", "127.0.0.1", ocsp_url=responder.url).write(tmp_path / "server", "server")
        new_files = inter.server("localhost", "127.0.0.1", ocsp_url=responder.url).write(tmp_path / "server2", "server")
        text = ini(tmp_path, files)
        mark = EVENTS.mark()
        server = start(text, tmp_path)
        try:
            EVENTS.wait_for(mark, "janustls.staple.fetched", "STAPLE", timeout=10)
            broken = text.replace(str(files["chain"]), str(new_files["chain"])).replace(
                str(files["key"]), str(new_files["key"])).replace("handler = h:serve", "handler = nosuch:serve")  # fmt: skip
            mark = EVENTS.mark()
            new = parse_definitions(broken, source="test.ini", base=tmp_path)
            assert in_reactor(lambda: server.service.reload(new)) is False
            EVENTS.wait_for(mark, "janustls.reload.failed")
            time.sleep(6.0)  # past the nextUpdate of the response fetched before the reload
            fetched = EVENTS.since(mark, "janustls.staple.fetched", "STAPLE")
            assert fetched, "the live port's stapler stopped refreshing"
            out = s_client_status(server.port("STAPLE"), "1.3")
            assert "OCSP Response Status: successful" in out, out
            assert "Cert Status: good" in out, out
        finally:
            server.stop()
    finally:
        responder.stop()
