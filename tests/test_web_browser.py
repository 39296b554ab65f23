"""A real browser against webserv ports: headless Chromium with a client certificate (../shared/BROWSER.md).

Each run gets its own HOME (Chromium reads identities and trust only from $HOME/.pki/nssdb)
and a profile whose Preferences auto-select the certificate for the test origins (without
that, headless Chromium hangs on a certificate request).  Assertions are on the DOM,
never on the exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import start
from tests.test_web import free_port, make_procs, port_ini

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Skipped where the tools are missing, except in CI (CI=true), where .ci/run installs
# them: there a missing browser must fail, not pass silently.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI")
    and (CHROMIUM is None or shutil.which("certutil") is None or shutil.which("pk12util") is None),
    reason="needs chromium and libnss3-tools (apt-get install chromium chromium-driver libnss3-tools)",
)

PAGE = """
import html

def whoami(request):
    cn = request.cert_info("CN")
    return "<!DOCTYPE html><html><body><p id=cn>CN=%s</p><p id=version>%s</p></body></html>" % (
        html.escape(cn or "none"), request.tls_version)
"""


class Browser:
    """One Chromium identity: an NSS database (CA, maybe a client identity) and a profile."""

    def __init__(self, root: Path, pki, client: str | None, origins: list[str]) -> None:
        self.home = root / "home"
        db = self.home / ".pki" / "nssdb"
        db.mkdir(parents=True)
        self.profile = root / "profile"
        (self.profile / "Default").mkdir(parents=True)
        self._run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"])
        self._run(["certutil", "-A", "-d", f"sql:{db}", "-n", "Test CA", "-t", "C,,", "-i", str(pki.files["root.ca"])])
        if client is not None:
            p12 = root / f"{client}.p12"
            p12.write_bytes(pki.issued[client].pkcs12())
            self._run(["pk12util", "-i", str(p12), "-d", f"sql:{db}", "-W", ""])
        auto = {f"{o},*": {"setting": {"filters": [{}]}} for o in origins}
        prefs = {"profile": {"content_settings": {"exceptions": {"auto_select_certificate": auto}}}}
        (self.profile / "Default" / "Preferences").write_text(json.dumps(prefs))

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HOME": str(self.home)}, timeout=60)

    def dom(self, url: str, timeout: float = 40) -> tuple[str, str]:
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--timeout=20000", "--dump-dom", url,
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, timeout=timeout, env={**os.environ, "HOME": str(self.home)})
        return out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def web(pki, reactor, tmp_path_factory):
    procs = make_procs(tmp_path_factory.mktemp("browserprocs"))
    (procs / "page.py").write_text(PAGE)
    ports = {name: free_port() for name in ("REQ", "PP12", "PP13", "STRICT")}
    listen = {name: f"tcp:{p}:interface=127.0.0.1" for name, p in ports.items()}
    text = f"""
[janustls]
procs = {procs}
{port_ini(pki, "REQ", "require", listen=listen["REQ"])}
[web:REQ]
ON /who = call page:whoami
ON SSLNOCERTERR = page pages/nocert.html status=403
{port_ini(pki, "PP12", "none", tls_max="1.2", listen=listen["PP12"])}
[web:PP12]
ON /open = call page:whoami
ON /need = call page:whoami client_cert=require
ON SSLNOCERTERR = page pages/nocert.html status=403
{port_ini(pki, "PP13", "none", tls_min="1.3", listen=listen["PP13"])}
[web:PP13]
ON /need = call page:whoami client_cert=require fallback=https://127.0.0.1:{ports["STRICT"]}/who
{port_ini(pki, "STRICT", "require", listen=listen["STRICT"])}
[web:STRICT]
ON /who = call page:whoami
"""
    s = start(text, procs)
    s.urls = {name: f"https://127.0.0.1:{p}" for name, p in ports.items()}  # type: ignore[attr-defined]
    yield s
    s.stop()


def browser(tmp_path, pki, web, client):
    return Browser(tmp_path, pki, client, list(web.urls.values()))


def test_require_port_shows_the_cn(web, pki, tmp_path):
    dom, err = browser(tmp_path, pki, web, "alice").dom(web.urls["REQ"] + "/who")
    assert "CN=alice" in dom, err[-2000:]


def test_without_certificate_the_browser_gets_the_sslnocerterr_page(web, pki, tmp_path):
    dom, err = browser(tmp_path, pki, web, None).dom(web.urls["REQ"] + "/who")
    assert "no certificate page" in dom, err[-2000:]


def test_per_path_renegotiation_on_a_tls12_port(web, pki, tmp_path, events):
    mark = events.mark()
    b = browser(tmp_path, pki, web, "alice")
    dom, err = b.dom(web.urls["PP12"] + "/need")
    assert "CN=alice" in dom and "TLSv1.2" in dom, err[-2000:]
    assert events.since(mark, "janustls.request.certificate", "PP12")


def test_per_path_on_tls13_port_falls_back_to_the_handshake_port(web, pki, tmp_path, events):
    mark = events.mark()
    dom, err = browser(tmp_path, pki, web, "alice").dom(web.urls["PP13"] + "/need")
    assert "CN=alice" in dom, err[-2000:]
    assert events.since(mark, "janustls.web.fallback", "PP13")
