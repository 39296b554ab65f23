#!/usr/bin/env python3
"""janustls `asgi` rules beside uvicorn[standard], measured in pairs: CPU per HTTPS request.

The same small Starlette app (it reads the client's subject from the ASGI TLS extension when the
server provides it, and answers 20 bytes) behind:

  janustls  a webserv port, `ON /* = asgi benchapp:app`, on Twisted's asyncio reactor
  uvicorn   `uvicorn benchapp:app --http httptools --loop uvloop --ssl-cert-reqs 2` with the same
            certificates (uvicorn gives apps no certificate: the app answers its fixed 20 bytes)

Both require a client certificate (TLS 1.3, EC P-256, from janustls.pki).  Workloads: a full
mutual-TLS handshake with one request, and a keep-alive request.  See benchmarks/README.md for
the paired method.

    python benchmarks/bench_asgi.py              # the full run
    python benchmarks/bench_asgi.py --quick      # a smoke run (seconds)
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common
from common import Driver, Paired, tls_connect

APP = """\
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


async def who(request):
    tls = request.scope.get("extensions", {}).get("tls") or {}
    name = (tls.get("client_cert_name") or "").encode()
    return Response((name + b" " * 20)[:20], media_type="text/plain")


app = Starlette(routes=[Route("/who", who)])
"""
REQUEST = b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n"
WORKLOADS = ("handshake", "keepalive")
LABELS = {"handshake": "full handshake + request, TLS 1.3 (us CPU)", "keepalive": "keep-alive request (us CPU)"}


def _serve_janustls(directory: Path, log: str) -> None:
    from janustls.ports.web.loop import ensure_asyncio_reactor

    ensure_asyncio_reactor()  # before common.run_reactor imports the reactor
    common.begin_logging(directory, "janustls", log)

    def start() -> int:
        from twisted.internet import reactor

        from janustls.core.config import parse_definitions
        from janustls.ops.build import build_ports

        text = f"""
[janustls]
procs = {directory}
[port:API]
type = webserv
listen = tcp:0:interface=127.0.0.1:backlog=1024
certificate = {directory / "server" / "server.pem"}
private_key = {directory / "server" / "server.key"}
client_cert = require
addca = {directory / "ca" / "root.pem"}
[web:API]
ON /* = asgi benchapp:app
"""
        (built,) = build_ports(parse_definitions(text, "bench-asgi.ini", directory), reactor)
        factory = built.factory
        port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
        return int(port.getHost().port)

    common.run_reactor(start)


def _exec_uvicorn(directory: Path) -> None:
    """Print `PORT n` and become uvicorn (one process: its CPU is this process's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    os.chdir(directory)
    os.execv(sys.executable, [sys.executable, "-m", "uvicorn", "benchapp:app", "--host", "127.0.0.1", "--port", str(port),
                              "--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--no-access-log",
                              "--ssl-certfile", str(directory / "server" / "server.pem"), "--ssl-keyfile", str(directory / "server" / "server.key"),
                              "--ssl-ca-certs", str(directory / "ca" / "root.pem"), "--ssl-cert-reqs", "2",
                              "--timeout-keep-alive", "300", "--backlog", "1024"])  # fmt: skip


def _read(s: Any, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            length = next(
                (
                    int(v)
                    for n, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                    if n.strip().lower() == b"content-length"
                ),
                0,
            )
            total = end + 4 + length
            while len(buf) < total:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            if not head.startswith(b"HTTP/1.1 200") or len(body) != 20:
                raise RuntimeError(f"unexpected answer {head[:40]!r} {body!r}")
            return body
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


class AsgiDriver(Driver):
    def __init__(self, directory: Path, index: int) -> None:
        super().__init__(directory, index)
        self.ctx = common.client_context(directory, index)

    def _open(self, port: int) -> Any:
        s = tls_connect(port, self.ctx)
        s.sendall(REQUEST)
        _read(s, bytearray())
        return s

    def prepare(self, workload: str, port: int) -> Any:
        if workload == "handshake":
            return [workload, port]
        return [workload, self._open(port), bytearray()]

    def step(self, state: list[Any]) -> int:
        if state[0] == "handshake":
            self._open(state[1]).close()
        else:
            state[1].sendall(REQUEST)
            _read(state[1], state[2])
        return 1

    def finish(self, state: list[Any]) -> int:
        if state[0] == "keepalive":
            state[1].close()
        return 0

    def hold(self, port: int) -> Any:
        return self._open(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny windows (seconds)")
    ap.add_argument("--rounds", type=int, default=None, help="paired windows per workload (default 15; 1 with --quick)")
    ap.add_argument("--window", type=float, default=None, help="seconds per measured window (default 2.0)")
    ap.add_argument("--ramp", type=float, default=None, help="seconds of load before each window (default 0.5)")
    ap.add_argument("--clients", type=int, default=None, help="client processes per server (default 12)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to separate cores")
    ap.add_argument("--log", choices=("discard", "file"), default="discard", help=argparse.SUPPRESS)
    ap.add_argument("--serve", choices=("janustls", "uvicorn"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve == "janustls":
        _serve_janustls(args.dir, args.log)
        return 0
    if args.serve == "uvicorn":
        _exec_uvicorn(args.dir)
        return 0
    if shutil.which("uvicorn") is None and not (Path(sys.executable).parent / "uvicorn").exists():
        print("uvicorn is not installed (pip install 'uvicorn[standard]')", file=sys.stderr)
        return 1

    quick = args.quick
    rounds = args.rounds or (1 if quick else 15)
    window = args.window or (0.3 if quick else 2.0)
    ramp = args.ramp if args.ramp is not None else (0.2 if quick else 0.5)
    clients = args.clients or (2 if quick else 12)
    common.raise_nofile()
    started = time.monotonic()
    pin = common.plan_pinning(not args.no_pin)
    script = os.path.abspath(__file__)
    print(
        "janustls asgi rule vs uvicorn[standard] (httptools, uvloop): the same Starlette app, server CPU per request, in pairs"
    )
    print(common.machine_line())
    print(pin.note)
    print(f"{clients} client processes per server (Python ssl, TLS 1.3, client certificates); {rounds} paired round(s) of {window:g} s"
          f" after {ramp:g} s of load{'  [--quick: smoke run, figures not meaningful]' if quick else ''}")  # fmt: skip
    sys.stdout.flush()
    results: dict[str, Paired] = {}
    with tempfile.TemporaryDirectory(prefix="bench_asgi.") as tmp:
        directory = Path(tmp)
        common.make_pki(directory, 2 * clients)
        (directory / "benchapp.py").write_text(APP)
        pool = common.ClientPool(AsgiDriver, directory, 2 * clients, pin.clients)
        servers = {}
        try:
            for kind in ("uvicorn", "janustls"):
                servers[kind] = common.start_server(script, kind, ["--dir", tmp, "--log", args.log], pin.servers)
            time.sleep(1.0)  # uvicorn listens a moment after it says its port
            pair = (servers["janustls"], servers["uvicorn"])
            for w in WORKLOADS:
                common.run_pairs(pool, [pair], w, min(clients, 2), 1, min(window, 0.3), 0.1)
            for w in WORKLOADS:
                (results[w],) = common.run_pairs(
                    pool, [pair], w, clients, rounds, window, ramp, lambda t: print(t, file=sys.stderr, flush=True)
                )
        finally:
            for s in servers.values():
                s.stop()
            pool.close()
    print()
    print("A = janustls (asgi rule), B = uvicorn[standard]")
    print(common.RATIO_HEADER)
    print("-" * len(common.RATIO_HEADER))
    for w in WORKLOADS:
        print(common.ratio_line(LABELS[w], results[w]))
    p = results["handshake"]
    print()
    print(
        f"full handshakes per second (one request each): janustls {p.median_rate(0):.0f}, uvicorn {p.median_rate(1):.0f}"
    )
    print("targets: keep-alive CPU janustls/uvicorn <= 1.25; handshakes per second janustls >= uvicorn")
    print(f"elapsed: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
