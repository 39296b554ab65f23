#!/usr/bin/env python3
"""A mid-connection certificate request beside a fresh full mutual-TLS handshake, in one run.

The server is one janustls process with two ports sharing one certificate and CA:
  REQUIRE  client_cert = require: a full mutual-TLS handshake per connection
  ASK      client_cert = none: the handler asks mid-connection on the word `ask`
           (TLS 1.3 post-handshake authentication, or TLS 1.2 renegotiation)

For each mode the client (Python's ssl, one process, one request at a time so latency is
meaningful) measures wall time per operation, and the server's CPU is read from
/proc/PID/stat before and after.  Rounds alternate between the modes and the medians
are printed, with the ratio to the full handshake of the same TLS version.

    python benchmarks/bench_midconn.py            # a minute or so
    python benchmarks/bench_midconn.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds

HANDLER = """
async def serve(sock):
    sock.write(b"hi\\n")
    while True:
        line = await sock.readline()
        if not line:
            return
        if line.strip() == b"ask":
            await sock.request_certificate()
            sock.write(("got %s\\n" % sock.cert_info("CN")).encode())
        else:
            sock.write(line)
"""

SERVER = """
import sys
from twisted.internet import reactor
from janustls import load_definitions, JanusService
svc = JanusService(load_definitions(sys.argv[1]))
svc.startService()
def ready():
    print(svc.listening_port("REQUIRE").getHost().port, svc.listening_port("ASK").getHost().port, flush=True)
reactor.callWhenRunning(ready)
reactor.run()
"""


def make_files(d: Path) -> Path:
    from janustls.pki import CA

    root = CA.create("Bench Root")
    inter = root.intermediate("Bench Intermediate")
    (d / "root.pem").write_bytes(root.cert_pem)
    inter.server("localhost", "127.0.0.1").write(d, "server")
    inter.issue("client").write(d, "client")
    (d / "h.py").write_text(HANDLER)
    ini = d / "ports.ini"
    ports = ""
    for name, mode in (("REQUIRE", "require"), ("ASK", "none")):
        ports += f"""
[port:{name}]
type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = server.pem
private_key = server.key
client_cert = {mode}
addca = root.pem
handler = h:serve
session_cache = no
"""
    ini.write_text(f"[janustls]\nprocs = .\n{ports}")
    return ini


def context(d: Path, version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(d / "root.pem")
    ctx.load_cert_chain(d / "client.pem", d / "client.key")
    ctx.post_handshake_auth = True
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def readline(s: ssl.SSLSocket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        out += chunk
    return out


def full_handshake(port: int, ctx: ssl.SSLContext) -> None:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as s:
        assert readline(s) == b"hi\n"


def request(s: ssl.SSLSocket) -> None:
    s.sendall(b"ask\n")
    assert readline(s) == b"got client\n"


def run(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ini = make_files(d)
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(ini)], stdout=subprocess.PIPE, cwd=d)
        try:
            assert proc.stdout is not None
            require_port, ask_port = (int(x) for x in proc.stdout.readline().split())
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for _ in range(rounds):
                for version in ("1.3", "1.2"):
                    ctx = context(d, version)
                    # a fresh full mutual-TLS handshake, n times
                    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                    for _ in range(n):
                        full_handshake(require_port, ctx)
                    results.setdefault((version, "full"), []).append(
                        ((time.perf_counter() - t0) / n, (cpu_seconds(proc.pid) - c0) / n)
                    )
                    # n established connections without a certificate, then one request each
                    conns = [
                        ctx.wrap_socket(socket.create_connection(("127.0.0.1", ask_port)), server_hostname="localhost")
                        for _ in range(n)
                    ]
                    for s in conns:
                        assert readline(s) == b"hi\n"
                    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                    for s in conns:
                        request(s)
                    results.setdefault((version, "request"), []).append(
                        ((time.perf_counter() - t0) / n, (cpu_seconds(proc.pid) - c0) / n)
                    )
                    for s in conns:
                        s.close()
        finally:
            proc.terminate()
            proc.wait()
    print(f"janustls mid-connection request vs full handshake: {n} operations x {rounds} rounds, medians, "
          f"{os.cpu_count()} cores, client in one process")  # fmt: skip
    print(f"{'TLS':<5}{'operation':<56}{'wall ms':>9}{'server CPU ms':>15}{'CPU ratio':>11}")
    for version, how in (("1.3", "post-handshake authentication"), ("1.2", "renegotiation")):
        full = results[(version, "full")]
        req = results[(version, "request")]
        fw, fc = statistics.median(x[0] for x in full), statistics.median(x[1] for x in full)
        rw, rc = statistics.median(x[0] for x in req), statistics.median(x[1] for x in req)
        print(f"{version:<5}{'full mutual-TLS handshake':<56}{fw * 1e3:>9.3f}{fc * 1e3:>15.3f}{1.0:>11.2f}")
        print(
            f"{version:<5}{'mid-connection request (' + how + ')':<56}{rw * 1e3:>9.3f}{rc * 1e3:>15.3f}{rc / fc if fc else float('nan'):>11.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few operations, one round")
    args = parser.parse_args()
    if args.quick:
        run(20, 1)
    else:
        run(200, 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
