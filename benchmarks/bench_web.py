#!/usr/bin/env python3
"""janustls `webserv` beside a bare twisted.web server, measured in pairs: CPU per HTTPS request.

Both servers require a client certificate (same root, same EC P-256 server and client
certificates from `janustls.pki`, TLS 1.3, same suites) and answer `GET /who` with the
client certificate's CN:

  janustls  a webserv port, `ON /who = call views:who` where `who(request)` returns
            `request.cert_info("CN")`: the rule table, exception handling and the
            connection object in the path
  bare      twisted.protocols.tls.TLSMemoryBIOFactory around a pyOpenSSL Context with the
            same settings, wrapping twisted.web's Site; the resource reads the CN from the
            peer certificate itself on every request
  bare2     a second copy of `bare`: the control (should read 1.00)

Neither writes a per-request access log line.  Workloads: a full mutual-TLS handshake with
one request (connect, GET /who, close), the same resumed with a TLS 1.3 ticket, and a
keep-alive request on an established connection.  Both servers of a pair are loaded at the
same time in the same windows; see benchmarks/README.md.

    python benchmarks/bench_web.py              # the full run (about 5 minutes)
    python benchmarks/bench_web.py --quick      # a smoke run (seconds)
    python benchmarks/bench_web.py --profile    # also: cProfile per handshake, side by side
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Paired, ServerProcess, tls_connect

VIEWS = """\
def who(request):
    return request.cert_info("CN")
"""
#: The line port: a srvsock port over the same TLS answering each request head with a fixed
#: response carrying the CN (no HTTP parsing, no rule table): what a web port costs over its TLS.
LINE_HANDLER = """\
async def serve(sock):
    cn = (sock.cert_info("CN") or "").encode()
    answer = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(cn), cn)
    pending = b""
    while True:
        data = await sock.read()
        if not data:
            return
        pending += data
        while b"\\r\\n\\r\\n" in pending:
            pending = pending.partition(b"\\r\\n\\r\\n")[2]
            sock.write(answer)
"""
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/nginx.err error;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    map $ssl_client_s_dn $cn {{ "~CN=(?<c>[^,/]+)" $c; default ""; }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=1024;
        ssl_certificate {dir}/server/server.pem;
        ssl_certificate_key {dir}/server/server.key;
        ssl_client_certificate {dir}/ca/root.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
        location = /who {{ default_type text/plain; return 200 $cn; }}
    }}
}}
"""
REQUEST = b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n"
WORKLOADS = ("handshake", "resumed", "keepalive")
LABELS = {
    "handshake": "full handshake + request, TLS 1.3 (us CPU)",
    "resumed": "resumed handshake + request (us CPU)",
    "keepalive": "keep-alive request reading the CN (us CPU)",
}
SUSPECTS = (
    ("verify callback (per certificate)", "janustls/tls/policy.py", "verify"),
    ("chain lookup / parse", "janustls/tls/policy.py", "client_chain"),
    ("signed-certificate counting", "janustls/core/trust.py", "count_signed"),
    ("log events (emit)", "janustls/events.py", "emit"),
    ("BIO release", "janustls/tls/_openssl.py", "release_bio_buffers"),
    ("handshakeCompleted (all of it)", "janustls/ports/base.py", "handshakeCompleted"),
    ("connectionLost (all of it)", "janustls/ports/base.py", "connectionLost"),
    ("TLS connection creation", "janustls/tls/policy.py", "serverConnectionForTLS"),
)


# -- servers (run as `bench_web.py --serve KIND --dir DIR`) ----------------------------------------


def _serve_janustls(directory: Path, reactor: Any) -> int:
    from janustls.core.config import parse_definitions
    from janustls.ops.build import build_ports

    (directory / "views.py").write_text(VIEWS)
    text = f"""
[janustls]
procs = {directory}
[port:WEB]
type = webserv
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / "server" / "server.pem"}
private_key = {directory / "server" / "server.key"}
client_cert = require
addca = {directory / "ca" / "root.pem"}
[web:WEB]
ON /who = call views:who
"""
    (built,) = build_ports(parse_definitions(text, "bench.ini", directory), reactor)
    port = reactor.listenTCP(0, built.factory, backlog=1024, interface="127.0.0.1")
    return int(port.getHost().port)


def _serve_line(directory: Path, reactor: Any) -> int:
    from janustls.core.config import parse_definitions
    from janustls.ops.build import build_ports

    (directory / "benchline.py").write_text(LINE_HANDLER)
    text = f"""
[janustls]
procs = {directory}
[port:LINE]
type = srvsock
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / "server" / "server.pem"}
private_key = {directory / "server" / "server.key"}
client_cert = require
addca = {directory / "ca" / "root.pem"}
handler = benchline:serve
"""
    (built,) = build_ports(parse_definitions(text, "bench-line.ini", directory), reactor)
    port = reactor.listenTCP(0, built.factory, backlog=1024, interface="127.0.0.1")
    return int(port.getHost().port)


def _exec_nginx(directory: Path) -> None:
    """Print `PORT n` and become nginx (one process, so its CPU is this process's)."""
    nginx = nginx_binary() or "nginx"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port))
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    os.execv(nginx, [nginx, "-p", str(directory), "-c", str(conf), "-e", str(directory / "nginx.err")])


def nginx_binary() -> str | None:
    """nginx where installed (Debian puts it in /usr/sbin, often off a user's PATH)."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _bare_site() -> Any:
    from cryptography.x509.oid import NameOID
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Who(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            cert = request.transport.getHandle().get_peer_certificate(as_cryptography=True)
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            return cn.encode() if isinstance(cn, str) else bytes(cn)

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass

    site = QuietSite(Who(), timeout=None)
    site.noisy = False
    return site


def serve(kind: str, directory: Path, log: str, profile_out: Path | None, buffered: bool = False) -> None:
    if kind == "nginx":
        _exec_nginx(directory)
        return
    common.begin_logging(directory, kind, log)

    def start() -> int:
        from twisted.internet import reactor

        if kind == "janustls":
            return _serve_janustls(directory, reactor)
        if kind == "line":
            return _serve_line(directory, reactor)
        return common.listen_bare(reactor, directory, _bare_site(), buffered=buffered)

    common.run_reactor(start, profile_out)


# -- clients ---------------------------------------------------------------------------------------


def _read_response(s: Any, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            while len(buf) < total:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            return body
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


class WebDriver(common.HandshakeDriver):
    """handshake: connect, GET /who, close; resumed: the same with the newest ticket;
    keepalive: GET /who on one connection."""

    def __init__(self, directory: Path, index: int) -> None:
        super().__init__(directory, index)
        self.cn = f"client{index}".encode()

    def _request(self, s: Any, buf: bytearray) -> None:
        s.sendall(REQUEST)
        body = _read_response(s, buf)
        if body != self.cn:
            raise RuntimeError(f"GET /who answered {body!r}, not {self.cn!r}")

    def _open(self, port: int, session: Any = None) -> Any:
        s = tls_connect(port, self.ctx, session)
        self._request(s, bytearray())
        return s

    def prepare_exchange(self, workload: str, port: int) -> list[Any]:
        if workload != "keepalive":
            raise ValueError(workload)
        return [self._open(port), bytearray()]

    def exchange(self, state: list[Any]) -> None:
        self._request(state[1], state[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny windows (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="paired windows per workload (default 15; 1 with --quick)")
    ap.add_argument("--window", type=float, default=None, help="seconds per measured window (default 2.0)")
    ap.add_argument("--ramp", type=float, default=None, help="seconds of load before each window (default 0.5)")
    ap.add_argument("--clients", type=int, default=None, help="client processes per server (default 12)")
    ap.add_argument(
        "--sweep",
        default=None,
        help="client counts per server for the full-handshake sweep (default 4,8,12,16; '' for none)",
    )
    ap.add_argument("--sweep-rounds", type=int, default=None, help="paired windows per sweep point (default 5)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument(
        "--bare-buffered",
        action="store_true",
        help="bare servers use TLSMemoryBIOFactory's default BufferingTLSTransport (small writes sent on the next "
        "reactor turn) instead of TLSMemoryBIOProtocol, which janustls ports use",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to separate cores")
    ap.add_argument(
        "--log",
        choices=("discard", "file"),
        default="discard",
        help="log events: dropped by the observer (default) or a text file",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile both servers per full handshake + request (cProfile), side by side",
    )
    ap.add_argument(
        "--profile-handshakes", type=int, default=None, help="full handshakes per profiled server (default 3000)"
    )
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out even where it is installed")
    ap.add_argument("--serve", choices=("janustls", "bare", "bare2", "line", "nginx"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.dir, args.log, args.profile_out, args.bare_buffered)
        return 0

    quick = args.quick
    rounds = args.rounds or (1 if quick else 15)
    window = args.window or (0.3 if quick else 2.0)
    ramp = args.ramp if args.ramp is not None else (0.2 if quick else 0.5)
    clients = args.clients or (2 if quick else 12)
    sweep_text = args.sweep if args.sweep is not None else ("" if quick else "4,8,12,16")
    sweep = [int(x) for x in sweep_text.split(",") if x.strip()]
    sweep_rounds = args.sweep_rounds or (1 if quick else 5)
    profile_handshakes = args.profile_handshakes or (60 if quick else 3000)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}")

    common.raise_nofile()
    started = time.monotonic()
    pin = common.plan_pinning(not args.no_pin)
    script = os.path.abspath(__file__)
    print("janustls webserv vs bare twisted.web: server CPU per HTTPS request reading the client CN, measured in pairs")
    print(common.machine_line())
    print(pin.note)
    print(
        f"{clients} client processes per server (Python ssl, TLS 1.3); {rounds} paired round(s) of {window:g} s "
        f"after {ramp:g} s of load; ratio: median of the per-round ratios; log events: {args.log}; bare TLS protocol: {'BufferingTLSTransport' if args.bare_buffered else 'TLSMemoryBIOProtocol (as janustls)'}"
        f"{'  [--quick: smoke run, figures not meaningful]' if quick else ''}"
    )
    sys.stdout.flush()

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: dict[str, tuple[Paired, Paired]] = {}
    extra_results: dict[str, list[Paired]] = {}
    use_nginx = not args.no_nginx and nginx_binary() is not None
    sweep_results: list[tuple[int, Paired]] = []
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="bench_web.") as tmp:
        directory = Path(tmp)
        n_clients = 2 * max([clients, *sweep])
        common.make_pki(directory, n_clients)
        pool = common.ClientPool(WebDriver, directory, n_clients, pin.clients)
        servers: dict[str, ServerProcess] = {}
        try:
            kinds = (["nginx"] if use_nginx else []) + ["janustls", "bare", "bare2", "line"]
            for kind in kinds:  # nginx first: it listens a moment after it says its port
                servers[kind] = common.start_server(
                    script,
                    kind,
                    ["--dir", tmp, "--log", args.log, *(["--bare-buffered"] if args.bare_buffered else [])],
                    pin.servers,
                )
            pair = (servers["janustls"], servers["bare"])
            control = (servers["bare2"], servers["bare"])
            extra_pairs = [(servers["janustls"], servers["line"])] + (
                [(servers["janustls"], servers["nginx"])] if use_nginx else []
            )
            for w in workloads:  # warm-up
                common.run_pairs(pool, [pair, control, *extra_pairs], w, min(clients, 2), 1, min(window, 0.3), 0.1)
            for w in workloads:
                results[w] = tuple(common.run_pairs(pool, [pair, control], w, clients, rounds, window, ramp, progress))  # type: ignore[assignment]
                extra_results[w] = list(common.run_pairs(pool, extra_pairs, w, clients, rounds, window, ramp, progress))
            for count in sweep:
                (p,) = common.run_pairs(pool, [pair], "handshake", count, sweep_rounds, window, ramp, progress)
                sweep_results.append((count, p))
            for s in servers.values():
                s.stop()
            servers.clear()
            if args.profile:
                n_prof = min(clients, 8)
                extra = ["--dir", tmp, "--log", args.log, *(["--bare-buffered"] if args.bare_buffered else [])]
                janus = common.profile_server(
                    "janustls", script, extra, directory, pin, pool, n_prof, profile_handshakes
                )
                bare = common.profile_server("bare", script, extra, directory, pin, pool, n_prof, profile_handshakes)
                unprofiled = {}
                if "handshake" in results:
                    p = results["handshake"][0]
                    unprofiled = {"janustls": p.median_us(0), "bare": p.median_us(1)}
                profile_text = common.profile_report(janus, bare, unprofiled, SUSPECTS)
        finally:
            for s in servers.values():
                s.stop()
            pool.close()

    print()
    print("A = janustls webserv, B = bare twisted.web; control rows: A = bare copy, B = bare (should read 1.00)")
    print(
        "us: median server CPU per operation; A/B: median of per-round ratios; busy: server CPU / wall time (1.00 = a core)"
    )
    print(common.RATIO_HEADER)
    print("-" * len(common.RATIO_HEADER))
    for w in workloads:
        p, c = results[w]
        print(common.ratio_line(LABELS[w], p))
        print(common.ratio_line(f"  control: bare/bare, {w}", c))
    print()
    print(
        "A = janustls webserv, B = the janustls line port (srvsock, same TLS, a fixed answer per request head)"
        + (
            ", then B = nginx (ssl_verify_client on, return 200 $cn)"
            if use_nginx
            else "; nginx: not installed (apt-get install nginx-light)"
        )
    )
    print(common.RATIO_HEADER)
    print("-" * len(common.RATIO_HEADER))
    for w in workloads:
        line_pair = extra_results[w][0]
        print(common.ratio_line(f"{w}: web/line", line_pair))
        if use_nginx:
            print(common.ratio_line(f"{w}: web/nginx", extra_results[w][1]))
    if sweep_results:
        print()
        print("full handshake + request, janustls/bare against client processes per server:")
        for count, p in sweep_results:
            print(common.ratio_line(f"  {count:2d} clients per server ({len(p.windows)} rounds)", p))
    print()
    for w in workloads:
        p, c = results[w]
        print(f"{w} janustls/bare per round: " + " ".join(f"{r:.3f}" for r in p.ratios))
        print(f"{w} control per round:       " + " ".join(f"{r:.3f}" for r in c.ratios))
    if profile_text:
        print()
        print(profile_text)
    print()
    print(
        "targets: CPU janustls/bare <= 1.05 for a handshake; keep-alive at most 1.00; web/line keep-alive <= 1.5, "
        "handshake + request <= 1.1; web/nginx keep-alive about 3.5"
    )
    print(f"elapsed: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
