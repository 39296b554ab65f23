#!/usr/bin/env python3
"""OCSP's cost on a full handshake: a port with `ocsp = leaf` (warm cache) beside the same port without.

One server process runs both ports at once (same certificates, `client_cert = require`, a
srvsock handler that greets and closes); an OCSP responder (cryptography's OCSP builder,
stdlib HTTP server in a thread of this process) answers "good".  The OCSP port's cache is
warmed by one handshake first, so the measured handshakes are answered from the cache, as
in steady state.  Rounds alternate between the ports; each round is a batch of full TLS 1.3
handshakes (no resumption) from client processes, and the server's CPU (utime+stime from
/proc/PID/stat) over the batch divided by the handshakes is the cost per handshake.

    python benchmarks/bench_ocsp.py            # the full run (about a minute)
    python benchmarks/bench_ocsp.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from pathlib import Path
from typing import Any

SERVER = r"""
import sys
from twisted.internet import reactor
from janustls.core.config import load_definitions
from janustls.ops.service import JanusService
svc = JanusService(load_definitions(sys.argv[1]))
svc.startService()
def ready():
    with open(sys.argv[2], "w") as f:
        f.write("%d %d\n" % (svc.listening_port("OCSP").getHost().port, svc.listening_port("PLAIN").getHost().port))
reactor.callWhenRunning(ready)
reactor.run()
"""
HANDLER = "def serve(sock):\n    sock.write(b'hi')\n    sock.close()\n"


def responder(ca_cert: Any, ca_key: Any) -> tuple[ThreadingHTTPServer, list[int]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            req = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            count[0] += 1
            now = datetime.datetime.now(datetime.UTC)
            b = (
                ocsp.OCSPResponseBuilder()
                .add_response_by_hash(
                    issuer_name_hash=req.issuer_name_hash,
                    issuer_key_hash=req.issuer_key_hash,
                    serial_number=req.serial_number,
                    algorithm=req.hash_algorithm,
                    cert_status=ocsp.OCSPCertStatus.GOOD,
                    this_update=now - datetime.timedelta(minutes=1),
                    next_update=now + datetime.timedelta(hours=1),
                    revocation_time=None,
                    revocation_reason=None,
                )
                .responder_id(ocsp.OCSPResponderEncoding.HASH, ca_cert)
            )
            try:
                b = b.add_extension(req.extensions.get_extension_for_class(x509.OCSPNonce).value, critical=False)
            except x509.ExtensionNotFound:
                pass
            data = b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, count


def client_batch(args: tuple[int, str, str, int]) -> int:
    port, cert, key, n = args
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ok = 0
    for _ in range(n):
        with ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        ) as s:
            if s.recv(10) == b"hi":
                ok += 1
    return ok


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--handshakes", type=int, default=400, help="per round and port")
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.handshakes = 2, 40

    from janustls.pki import CA

    tmp = Path(tempfile.mkdtemp(prefix="bench-ocsp-"))
    root = CA.create("Bench OCSP Root")
    inter = root.intermediate("Bench OCSP Intermediate")
    http, count = responder(inter.cert, inter.key)
    url = f"http://127.0.0.1:{http.server_address[1]}/ocsp"
    (tmp / "root.pem").write_bytes(root.cert_pem)
    server = inter.server("localhost", "127.0.0.1").write(tmp / "server", "server")
    client = inter.issue("bench-client", ocsp_url=url).write(tmp / "client", "client")
    procs = tmp / "procs"
    procs.mkdir()
    (procs / "h.py").write_text(HANDLER)
    common = f"""type = srvsock
listen = tcp:0:interface=127.0.0.1
certificate = {server["chain"]}
private_key = {server["key"]}
client_cert = require
addca = {tmp / "root.pem"}
handler = h:serve
"""
    ini = tmp / "ports.ini"
    ini.write_text(f"[janustls]\nprocs = {procs}\n[port:OCSP]\n{common}ocsp = leaf\n[port:PLAIN]\n{common}")
    ready = tmp / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ini), str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().endswith("\n"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        ports = dict(zip(("ocsp", "plain"), map(int, ready.read_text().split()), strict=True))
        cert, key = str(client["chain"]), str(client["key"])
        for name in ports:  # warm: the OCSP cache, the handler module, the code paths
            assert client_batch((ports[name], cert, key, 5)) == 5
        assert count[0] == 1, count
        per: dict[str, list[float]] = {"ocsp": [], "plain": []}
        pool = get_context("spawn").Pool(a.clients)
        try:
            for r in range(a.rounds):
                for name in ("ocsp", "plain") if r % 2 == 0 else ("plain", "ocsp"):
                    share = a.handshakes // a.clients
                    before = cpu(proc.pid)
                    done = sum(pool.map(client_batch, [(ports[name], cert, key, share)] * a.clients))
                    per[name].append((cpu(proc.pid) - before) / done * 1e6)
        finally:
            pool.close()
        requests = count[0]
    finally:
        proc.terminate()
        proc.wait(10)
        http.shutdown()
    o, p = statistics.median(per["ocsp"]), statistics.median(per["plain"])
    print(
        f"full TLS 1.3 handshake with client certificate, server CPU per handshake (median of {a.rounds} rounds "
        f"x {a.handshakes} handshakes)"
    )
    print(f"  ocsp = leaf, warm cache : {o:8.0f} us   (rounds: {', '.join(f'{x:.0f}' for x in per['ocsp'])})")
    print(f"  no OCSP                 : {p:8.0f} us   (rounds: {', '.join(f'{x:.0f}' for x in per['plain'])})")
    print(f"  ratio                   : {o / p:8.3f}x  (responder asked {requests} time(s) in the whole run)")


if __name__ == "__main__":
    main()
