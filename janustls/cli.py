"""The `janustls` command: check a definition file, make a development PKI, run the demo."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import OpenSSL
from twisted.logger import globalLogBeginner

import janustls
import twisted
from janustls._reactor import reactor_or_global
from janustls.core.config import (
    PortDefinition,
    crl_cache_path,
    listen_address,
    load_definitions,
    load_partially,
    parse_definitions,
)
from janustls.core.ocsp import ocsp_warnings
from janustls.core.trust import port_trust_warnings
from janustls.errors import ConfigErrors, MaterialError
from janustls.explain import explain, format_verdict
from janustls.ops import crlfetch
from janustls.ops.build import build_ports
from janustls.ops.httpfetch import run_to_completion
from janustls.ops.logs import log_observer
from janustls.ops.operate import install_sighup
from janustls.ops.service import JanusService
from janustls.pki import DevCA, PKIError, write_dev_pki
from janustls.ports.web.loop import AsyncioReactorNeeded, ensure_asyncio_reactor, uses_asgi
from janustls.ports.web.port import WebFactory, page_exposures

__all__ = ["main"]

DEMO_FILE = Path("procs") / "demo.ini"


def _http_versions(port: PortDefinition, factory: WebFactory) -> str:
    """What `check` says of a webserv port's HTTP versions (and the per-path retry over HTTP/2)."""
    if not port.http2:
        return "HTTP/1.1 (http2 = no)"
    text = f"HTTP/1.1 and HTTP/2 (ALPN h2; h2_max_streams {port.h2_max_streams}, h2_window {port.h2_window})"
    per_path = sum(1 for r in factory.table.rules if r.client_cert)
    if per_path and not port.asks_at_handshake:
        text += f"; {per_path} rule(s) asking for a certificate per path answer HTTP/2 with HTTP_1_1_REQUIRED"
    return text


def describe(file: str, out: TextIO) -> int:
    """Validate a file completely (certificates, keys, handlers) and say what would run."""
    reactor = reactor_or_global()

    try:
        # The file's own mistakes, then the files its sound ports name: all in one run.
        definitions, errors = load_partially(file)
        try:
            built = build_ports(definitions, reactor)
        except ConfigErrors as e:
            errors = [*errors, *e.errors]
        if errors:
            raise ConfigErrors(errors)
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        return 1
    out.write(f"{file}: {len(built)} port(s), procedure library {definitions.procs}\n")
    warnings: list[str] = []
    crl_urls = _probe_crl_urls(definitions)
    for b in built:
        p = b.definition
        tls = b.runtime.tls
        leaf = tls.material.leaf
        out.write(f"\n[port:{p.name}] {p.type.value} on {p.listen}\n")
        out.write(f"  certificate  {leaf.subject.rfc4514_string()}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}\n")
        out.write(f"  TLS          {p.tls_min} to {p.tls_max}; client_cert = {p.client_cert.value}\n")
        for ca in tls.trust.cas:
            out.write(f"  trusts       {ca.subject.rfc4514_string()}\n")
        if tls.trust.crls:
            out.write(f"  CRLs         {len(tls.trust.crls)} ({p.crl_check.value})\n")
        for url, problem in crl_urls.get(p.name, []):
            if problem is None:
                out.write(f"  CRL URL      {url}: reachable, a usable CRL\n")
                continue
            cached = crl_cache_path(definitions.procs, url).exists()
            effect = ("the cached copy stays in use until it can be fetched" if cached else
                      "no cached copy: the port starts, and the clients whose chain needs this CRL are refused "
                      "(crl_unavailable) until it can be fetched")  # fmt: skip
            out.write(f"  WARNING      crl_url {url}: {problem}; {effect}\n")
            warnings.append(f"[port:{p.name}] crl_url {url}: {problem}")
        if p.verify_depth is not None:
            out.write(f"  verify_depth {p.verify_depth}\n")
        if p.handler:
            out.write(f"  handler      {p.handler}\n")
        limits = [f"max_connections {p.max_connections}" if p.max_connections else "",
                  f"idle_timeout {p.idle_timeout:g}s" if p.idle_timeout else "",
                  f"handshake_timeout {p.handshake_timeout:g}s"]  # fmt: skip
        out.write(f"  limits       {', '.join(x for x in limits if x)}\n")
        for warning in port_trust_warnings(p, tls.trust):
            out.write(f"  WARNING      {warning}\n")
        if p.ocsp.value != "none":
            out.write(
                f"  OCSP         {p.ocsp.value}, ocsp_fail = {p.ocsp_fail.value}, responder {p.ocsp_responder or 'from each certificate'}\n"
            )
        for warning in ocsp_warnings(p.ocsp.value, p.ocsp_responder, p.ocsp_staple, tls.trust.cas, tls.material.chain):
            out.write(f"  WARNING      {warning}\n")
        warnings += _page_warnings(b, definitions)
        inner = getattr(b.factory, "wrappedFactory", None)
        if isinstance(inner, WebFactory):
            out.write(f"  HTTP         {_http_versions(p, inner)}\n")
        if isinstance(inner, WebFactory) and not inner.table.rules and not inner.table.exceptions:
            warnings.append(
                f"[port:{p.name}] is a webserv port with no [{inner.table.section}] table: it answers every request 404"
            )
    for w in warnings:
        out.write(f"\nwarning: {w}\n")
    out.write("\nOK\n")
    return 0


def _probe_crl_urls(definitions: Any) -> dict[str, list[tuple[str, str | None]]]:
    """Every crl_url fetched once (Twisted's client, each bounded by the fetch timeout, nothing
    written): by port name, (url, None) when usable, else (url, the problem)."""
    if not any(p.crl_url for p in definitions.ports):
        return {}
    found: dict[str, list[tuple[str, str | None]]] = {}
    for port, url, problem in run_to_completion(lambda reactor: crlfetch.probe(definitions, reactor)):
        found.setdefault(port.name, []).append((url, problem))
    return found


def _page_warnings(built: Any, definitions: Any) -> list[str]:
    """Page rules whose directory holds key material or the port-definition file."""
    inner = getattr(built.factory, "wrappedFactory", None)
    if not isinstance(inner, WebFactory):
        return []
    return [f"{rule.describe(inner.table.section)} could serve {path} (key material or the port-definition file); "
            "janustls refuses it, but move it out of the served directory"
            for rule, path in page_exposures(inner, definitions.key_material())]  # fmt: skip


#: The subcommands of `janustls pki`; anything else after `pki` is the directory of the older form.
PKI_COMMANDS = ("init", "issue", "revoke", "list")
PKI_WARNING = "Development only: every key is written unencrypted; never use these certificates in production."


def make_pki(directory: str, clients: Sequence[str], out: TextIO) -> int:
    """`janustls pki DIR [--client NAME ...]`: a new PKI, or the missing clients of an existing one."""
    path = Path(directory)
    try:
        existed = DevCA.exists(path)
        before = {c["name"] for c in DevCA.open(path).certificates} if existed else set()
        pki = write_dev_pki(path, clients=clients or ("alice",))
    except (PKIError, OSError) as e:
        print(f"janustls pki: {e}", file=sys.stderr)
        return 1
    if existed:
        out.write(f"{pki.directory} already holds a development CA: kept as it is (see janustls pki --help)\n")
    else:
        out.write(f"development PKI in {pki.directory}:\n")
        out.write(f"  root CA        {pki.root}\n  intermediate   {pki.intermediate} (CRL {pki.crl})\n")
        out.write(f"  server         {pki.server_chain} + {pki.server_key} (localhost, 127.0.0.1)\n")
    for name, paths in pki.clients.items():
        state = "already issued" if name in before else "(no password)"
        out.write(f"  client {name:<8}{paths['chain']} + {paths['key']}, {paths['p12']} {state}\n")
    out.write(PKI_WARNING + "\n")
    return 0


def run_pki(args: argparse.Namespace, out: TextIO) -> int:
    """`janustls pki init|issue|revoke|list`: a development CA whose state lives in DIR."""
    path = Path(args.directory)
    try:
        if args.pki_command == "init":
            dev = DevCA.init(path, args.name, force=args.force)
            out.write(f"development CA {dev.name!r} in {path}:\n")
            out.write(f"  root CA        {path / 'ca' / 'root.pem'}\n")
            out.write(f"  intermediate   {path / 'ca' / 'intermediate.pem'} (CRL {path / 'ca' / 'intermediate.crl'})\n")
            out.write(
                f"  server         {path / 'server' / 'chain.pem'} + {path / 'server' / 'key.pem'} (localhost, 127.0.0.1)\n"
            )
            out.write(f"next: janustls pki issue {path} NAME\n{PKI_WARNING}\n")
            return 0
        dev = DevCA.open(path)
        if args.pki_command == "issue":
            password = b""
            if args.p12_password_env:
                value = os.environ.get(args.p12_password_env)
                if not value:
                    raise PKIError(
                        f"--p12-password-env: the environment variable {args.p12_password_env} is not set or empty"
                    )
                password = value.encode()
            paths = dev.issue(
                args.name, emails=args.email, dns=args.dns, uris=args.uri, days=args.days, p12_password=password
            )
            entry = dev.find(args.name)
            assert entry is not None
            out.write(f"issued {args.name} (serial {entry['serial']}, until {entry['not_after'][:10]}):\n")
            out.write(f"  {paths['chain']} (certificate and intermediate) + {paths['key']}\n")
            out.write(f"  {paths['p12']} ({'password from ' + args.p12_password_env if password else 'no password'})\n")
            return 0
        if args.pki_command == "revoke":
            entry = dev.revoke(args.target)
            out.write(
                f"revoked {entry['name']} (serial {entry['serial']}); {path / 'ca' / 'intermediate.crl'} now lists "
                f"{len(dev.inter.revoked)} revocation(s), CRL number {dev.state['crl_number']}\n"
                "ports that name this CRL (crl =) pick it up on reload, or at once when they watch it\n"
            )
            return 0
        rows = dev.listing()
        out.write(f"development CA {dev.name!r} in {path}; CRL number {dev.state['crl_number']}\n")
        width = max([len(c["name"]) for c, _ in rows] + [4])
        out.write(f"{'NAME':<{width}}  {'KIND':<6}  {'SERIAL':<40}  {'NOT AFTER':<10}  STATUS\n")
        for c, status in rows:
            out.write(f"{c['name']:<{width}}  {c['kind']:<6}  {c['serial']:<40}  {c['not_after'][:10]}  {status}\n")
        return 0
    except (PKIError, OSError) as e:
        print(f"janustls pki {args.pki_command}: {e}", file=sys.stderr)
        return 1


def pki_parsers(sub: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """`janustls pki` with its subcommands, and the older `janustls pki DIR [--client NAME]` form."""
    text = (
        "A small development CA: a root, an intermediate with its CRL, a server certificate for localhost, "
        "and client certificates, kept in DIR so the commands compose across runs. " + PKI_WARNING
    )
    pki = sub.add_parser(
        "pki",
        help="a development CA: init, issue, revoke, list (keys unencrypted: development only)",
        description=text,
        usage="janustls pki {init,issue,revoke,list} DIR ...\n       janustls pki DIR [--client NAME ...]",
        epilog="janustls pki DIR [--client NAME ...]: makes a PKI in a new DIR with those clients (default alice); "
        "in an existing one, issues only the clients it lacks and never replaces the CA.",
    )
    cmds = pki.add_subparsers(dest="pki_command", required=True, metavar="{init,issue,revoke,list}")
    init = cmds.add_parser("init", help="make the CA in DIR (refuses an existing one unless --force)", description=text)
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--name", help="the CA's name (its subjects: NAME Root CA, NAME Intermediate CA); "
                      "default: 'janustls dev' and a random id, so two PKIs never share a name")  # fmt: skip
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (everything it issued stops verifying)"
    )
    issue = cmds.add_parser(
        "issue", help="issue a client certificate: DIR/client/NAME.pem, .key, .p12", description=text
    )
    issue.add_argument("directory", metavar="DIR")
    issue.add_argument("name", metavar="NAME", help="the certificate's CN and file name")
    issue.add_argument(
        "--email", action="append", default=[], help="an email SAN (repeatable; default NAME@example.test)"
    )
    issue.add_argument("--dns", action="append", default=[], help="a DNS SAN (repeatable)")
    issue.add_argument(
        "--uri", action="append", default=[], help="a URI SAN, e.g. spiffe://example.test/NAME (repeatable)"
    )
    issue.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    issue.add_argument("--p12-password-env", metavar="VAR", help="encrypt NAME.p12 with the password in this environment variable "
                       "(default: no password)")  # fmt: skip
    revoke = cmds.add_parser(
        "revoke", help="revoke by NAME or SERIAL (hex); the CRL keeps every earlier revocation", description=text
    )
    revoke.add_argument("directory", metavar="DIR")
    revoke.add_argument("target", metavar="NAME|SERIAL")
    listing = cmds.add_parser(
        "list", help="what the CA issued: serials, revoked, expiring within 30 days", description=text
    )
    listing.add_argument("directory", metavar="DIR")
    legacy = argparse.ArgumentParser(prog="janustls pki", description=text)
    legacy.add_argument("directory", metavar="DIR")
    legacy.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="a client certificate to make (repeatable; default alice)",
    )
    return pki, legacy


def _packaged_demo() -> Path | None:
    """The demo's definition file as installed (a wheel) or in the checkout (an editable install)."""
    here = Path(janustls.__file__).resolve().parent
    for candidate in (here / "demo" / "demo.ini", here.parent / "procs" / "demo.ini"):
        if candidate.is_file():
            return candidate
    return None


def demo_definitions(file: str | None, cwd: Path) -> Any:
    """The demo's definitions: FILE, else ./procs/demo.ini, else the installed copy with its
    PKI under `cwd` (pki/, beside where a checkout keeps procs/)."""
    if file is not None:
        return load_definitions(file)
    local = cwd / DEMO_FILE
    if local.is_file():
        return load_definitions(local)
    packaged = _packaged_demo()
    if packaged is None:
        raise FileNotFoundError(f"no {DEMO_FILE} here and no demo installed with janustls")
    text = packaged.read_text(encoding="utf-8").replace("= ../pki/", f"= {(cwd / 'pki').resolve()}/")
    return parse_definitions(text, source=str(packaged), base=packaged.parent)


def run_demo(file: str | None, out: TextIO, log_format: str = "text") -> int:
    """Make the demo's PKI on first run, explain how to connect, and serve in the foreground."""
    try:
        definitions = demo_definitions(file, Path.cwd())
        if uses_asgi(definitions.web):
            ensure_asyncio_reactor()
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        return 1
    except (OSError, AsyncioReactorNeeded) as e:
        print(f"janustls demo: {e}", file=sys.stderr)
        return 1
    reactor = reactor_or_global()
    # The PKI is where the first port's certificate is: <pki>/server/chain.pem.
    chain = definitions.ports[0].certificate
    pki_dir = Path(os.path.normpath(chain)).parent.parent
    if not chain.exists():
        write_dev_pki(pki_dir, clients=("alice",))
        out.write(f"made a development PKI in {pki_dir}\n")
    try:
        service = JanusService(definitions)
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        return 1
    shown = Path(os.path.relpath(pki_dir)) if not os.path.relpath(pki_dir).startswith("..") else pki_dir
    c = shown / "client"
    ca = shown / "ca" / "root.pem"
    ports = {b.definition.name: b.definition.listen for b in service.ports}
    out.write(
        "\njanustls demo: mutual-TLS ports\n"
        f"  WHOAMI  {ports.get('WHOAMI')}  (client certificate required)\n"
        f"  ECHO    {ports.get('ECHO')}  (asks for your certificate when you type `cert`)\n\n"
        "Ask who you are, with the client certificate the demo made:\n"
        f"  curl --cacert {ca} --cert {c}/alice.pem --key {c}/alice.key https://127.0.0.1:8443/\n"
        "Without a certificate the WHOAMI port refuses you (see the log line below):\n"
        f"  curl --cacert {ca} https://127.0.0.1:8443/\n"
        "With openssl: `s_client -cert` sends only the leaf, even from a file that holds the chain,\n"
        "and the port refuses it (unknown_ca); give the same file to -cert_chain so the intermediate goes too:\n"
        f"  openssl s_client -connect 127.0.0.1:8443 -CAfile {ca} -cert {c}/alice.pem -cert_chain {c}/alice.pem "
        f"-key {c}/alice.key -quiet\n"
        "Talk to the line port; type `cert` and it asks for your certificate mid-connection\n"
        "(TLS 1.3 post-handshake authentication; use -tls1_2 instead of -enable_pha for renegotiation):\n"
        f"  openssl s_client -connect 127.0.0.1:8444 -CAfile {ca} -enable_pha -cert {c}/alice.pem "
        f"-cert_chain {c}/alice.pem -key {c}/alice.key -quiet\n"
        f"Browsers: import {c}/alice.p12 (empty password) and trust {ca}.\n\n"
        "Ctrl-C stops the demo.\n\n"
    )
    out.flush()

    globalLogBeginner.beginLoggingTo([log_observer(log_format, out)], redirectStandardIO=False)
    install_sighup(lambda: service.reload(why="signal"), reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def run_explain(file: str, port: str, client_pem: str, out: TextIO, peer: str | None = None, password_env: str | None = None,
                ask_ocsp: bool = False) -> int:  # fmt: skip
    """Would PORT accept the chain in CLIENT_PEM? 0 yes, 2 no, 1 the question cannot be answered."""

    password: bytes | None = None
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            print(
                f"janustls explain: --password-env: the environment variable {password_env} is not set", file=sys.stderr
            )
            return 1
        password = value.encode()

    try:
        definitions = load_definitions(file)
        definitions.port(port)
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        return 1
    except KeyError:
        names = ", ".join(p.name for p in definitions.ports)
        print(f"janustls explain: {file} defines no port {port} (ports: {names})", file=sys.stderr)
        return 1
    try:
        verdict = explain(definitions, port, client_pem, peer, password, ask_ocsp=ask_ocsp)
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        return 1
    except (MaterialError, OSError) as e:
        print(f"janustls explain: {client_pem}: {e}", file=sys.stderr)
        return 1
    out.write(format_verdict(verdict))
    return 0 if verdict.accepted else 2


def status_url(target: str | None, port_def: str | None) -> str:
    """The /status URL: given, or from the [status] listen of a definition file."""
    if target:
        url = target if "://" in target else f"http://{target}"
        return url if url.rstrip("/").endswith("/status") else url.rstrip("/") + "/status"
    # Only [status] is needed: a file with mistakes elsewhere (a reload about to be refused) still names it.
    definitions, _ = load_partially(port_def or "ports.ini")
    if definitions.status is None:
        raise ValueError(f"{definitions.source} has no [status] section")
    address = listen_address(definitions.status.listen)
    if address is None:
        raise ValueError(f"cannot tell a URL from [status] listen = {definitions.status.listen}")
    host = address[1] if address[1] not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{address[2]}/status"


def _fetch_status(url: str) -> dict[str, Any]:

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  an http:// URL made above
        doc = json.loads(response.read())
    if not isinstance(doc, dict):
        raise ValueError("not a janustls /status document")
    return doc


def _pidfile_pid(pidfile: str) -> int | None:
    """The pid in a pidfile; None when there is no such file."""
    try:
        return int(Path(pidfile).read_text().strip())
    except FileNotFoundError:
        return None


def show_status(
    target: str | None, port_def: str | None, as_json: bool, out: TextIO, pidfile: str = "twistd.pid"
) -> int:
    """Fetch /status from a running server and print it as tables (or as it came).

    The answer is checked against the pidfile: another process on the status address is
    an error, and without a pidfile the command says it cannot tell."""

    from janustls.ops.status import format_status

    try:
        url = status_url(target, port_def)
    except (ConfigErrors, ValueError) as e:
        print(f"janustls status: {e}", file=sys.stderr)
        return 1
    try:
        doc = _fetch_status(url)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"janustls status: cannot read {url}: {e}", file=sys.stderr)
        return 1
    try:
        expected = _pidfile_pid(pidfile)
    except (OSError, ValueError) as e:
        print(f"janustls status: {pidfile}: {e}", file=sys.stderr)
        return 1
    if expected is None:
        print(f"janustls status: no pidfile {pidfile}: cannot tell whether pid {doc.get('pid')} at {url} "
              "is the server you mean (give --pidfile)", file=sys.stderr)  # fmt: skip
    elif doc.get("pid") != expected:
        print(f"janustls status: {url} answers for pid {doc.get('pid')}, but {pidfile} names pid {expected}: "
              "another process holds that address, or the pidfile is stale", file=sys.stderr)  # fmt: skip
        return 1
    out.write(json.dumps(doc, indent=2) + "\n" if as_json else format_status(doc))
    return 0


def send_reload(pidfile: str, target: str | None = None, port_def: str | None = None, timeout: float = 30.0) -> int:
    """SIGHUP to the server in `pidfile`, then wait (at most `timeout` seconds) for the outcome
    on its status listener.  0: applied; 1: refused or cannot send; 2: no answer."""

    try:
        pid = _pidfile_pid(pidfile)
        if pid is None:
            raise FileNotFoundError("no such file (the server's pidfile; twistd writes twistd.pid)")
    except (OSError, ValueError) as e:
        print(f"janustls reload: {pidfile}: {e}", file=sys.stderr)
        return 1
    url: str | None = None
    before: dict[str, Any] | None = None
    if target or port_def:
        try:
            url = status_url(target, port_def)
            before = _fetch_status(url)
        except (ConfigErrors, ValueError, urllib.error.URLError, OSError) as e:
            print(f"janustls reload: cannot read the status listener: {e}", file=sys.stderr)
            return 1
        if before.get("pid") != pid:
            print(
                f"janustls reload: {url} answers for pid {before.get('pid')}, not pid {pid} of {pidfile}",
                file=sys.stderr,
            )
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"janustls reload: pid {pid} ({pidfile}): {e}", file=sys.stderr)
        return 1
    if url is None or before is None:
        print(f"sent SIGHUP to {pid}; its outcome cannot be known here (give the status listener: "
              "--port-def FILE or its URL); see the log: janustls.reload.done or .failed", file=sys.stderr)  # fmt: skip
        return 2
    finished = int((before.get("reload") or {}).get("finished", 0))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            state = _fetch_status(url).get("reload") or {}
        except (urllib.error.URLError, OSError, ValueError):
            continue  # the status listener itself may be moving
        if int(state.get("finished", 0)) > finished:
            if state.get("outcome") == "done":
                print(f"reloaded: pid {pid} serves the new definitions")
                return 0
            print(f"reload refused by pid {pid}; nothing changed:", file=sys.stderr)
            for line in state.get("errors") or []:
                print(f"  {line}", file=sys.stderr)
            return 1
    print(f"janustls reload: sent SIGHUP to {pid}, but no outcome within {timeout:g}s (see its log)", file=sys.stderr)
    return 2


def version_text() -> str:
    """`janustls --version`: this package and what it runs on."""

    try:
        mine = version("janustls")
    except PackageNotFoundError:  # run from a checkout that is not installed
        mine = janustls.__version__
    return f"janustls {mine} (Twisted {twisted.__version__}, pyOpenSSL {OpenSSL.__version__}, {OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode()})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="janustls", description="Mutual-TLS ports on Twisted.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a port-definition file and say what it would run")
    check.add_argument("file")
    _, pki_legacy = pki_parsers(sub)
    demo = sub.add_parser("demo", help="run the mutual-TLS demo (makes its PKI on first run)")
    demo.add_argument(
        "file",
        nargs="?",
        default=None,
        help=f"default {DEMO_FILE} when it exists, else the demo installed with janustls (its PKI in ./pki)",
    )
    demo.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="json: one JSON object per log event"
    )
    explain = sub.add_parser(
        "explain",
        help="say whether a port would accept a client certificate chain, and if not why (no server needed)",
        description="Exit status: 0 accepted, 2 refused, 1 error. CLIENT holds what the client sends: "
        "its certificate, then its intermediates, as PEM, DER or PKCS#12 (an empty file: no certificate). "
        "It also warns about trusted CAs that share a name and CRLs signed by another key than their issuer's.",
    )
    explain.add_argument("file")
    explain.add_argument("port")
    explain.add_argument("client_pem", metavar="CLIENT", help="PEM (leaf, then intermediates), DER, or PKCS#12 (.p12)")
    explain.add_argument(
        "--password-env", metavar="VAR", help="the environment variable holding a PKCS#12 file's password"
    )
    explain.add_argument("--peer", metavar="IP", help="the client's address, for identity rules that name addresses")
    explain.add_argument("--ocsp", action="store_true",
                         help="on a port with ocsp: ask the responders now (each bounded by ocsp_timeout) and let their "
                         "answers decide; without it, only which responder would be asked is shown")  # fmt: skip
    status = sub.add_parser(
        "status", help="show a running server's ports, CAs (NumSigned), connections and expiry dates"
    )
    status.add_argument(
        "url", nargs="?", help="the status listener, e.g. http://127.0.0.1:9100 (default: from --port-def)"
    )
    status.add_argument("--port-def", help="a definition file whose [status] listen to ask (default ports.ini)")
    status.add_argument("--json", action="store_true", help="print the /status document as it came")
    status.add_argument(
        "--pidfile",
        default="twistd.pid",
        help="the server's pid file, checked against the pid that answers (default twistd.pid)",
    )
    reload = sub.add_parser(
        "reload",
        help="make a running server re-read its port-definition file (SIGHUP) and wait for the outcome",
        description="Exit status: 0 applied, 1 refused (the errors are printed) or cannot be sent, "
        "2 no answer within --timeout, or no status listener to ask (--port-def or URL).",
    )
    reload.add_argument(
        "url", nargs="?", help="the status listener, e.g. http://127.0.0.1:9100 (default: from --port-def)"
    )
    reload.add_argument("--pidfile", default="twistd.pid", help="the server's pid file (default twistd.pid)")
    reload.add_argument("--port-def", help="the definition file whose [status] listen to ask for the outcome")
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the outcome (default 30)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "pki" and argv[1] not in PKI_COMMANDS and not argv[1].startswith("-"):
        old = pki_legacy.parse_args(argv[1:])
        return make_pki(old.directory, old.client, sys.stdout)
    args = parser.parse_args(argv)
    if args.command == "status":
        return show_status(args.url, args.port_def, args.json, sys.stdout, args.pidfile)
    if args.command == "reload":
        return send_reload(args.pidfile, args.url, args.port_def, args.timeout)
    if args.command in ("check", "explain"):
        try:
            if args.command == "explain":
                return run_explain(
                    args.file, args.port, args.client_pem, sys.stdout, args.peer, args.password_env, args.ocsp
                )
            return describe(args.file, sys.stdout)
        except Exception as e:  # a bug or an unforeseen input: one line and a failing status, no traceback
            text = " ".join(str(e).split()) or "(no detail)"
            print(f"janustls {args.command}: {args.file}: unexpected {type(e).__name__}: {text}", file=sys.stderr)
            return 1
    if args.command == "pki":
        return run_pki(args, sys.stdout)
    return run_demo(args.file, sys.stdout, args.log_format)


if __name__ == "__main__":
    sys.exit(main())
