#!/usr/bin/env python3
"""Full mutual-TLS handshakes per second with `twistd janustls --workers N`, for N = 1 and 2.

The server is a real `twistd janustls` (text log to a file, as in production) with one
`srvsock` port (client_cert = require) whose handler answers "ok" and closes.  Clients
are separate processes (Python's ssl, TLS 1.3, a fresh full handshake per connection,
no resumption).  The table gives handshakes per second, the CPU the server's processes
and the clients took (utime+stime), and the machine's core count: on a 2-core machine
the clients compete with the workers for the same cores, which the CPU columns show.

    python benchmarks/bench_workers.py                 # 1 and 2 workers, 10 s each
    python benchmarks/bench_workers.py --seconds 3 --clients 2
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
HANDLER = 'def serve(sock):\n    sock.write(b"ok\\n")\n'


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def client(port: int, files: dict[str, str], seconds: float, result: Any) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(files["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    done = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
            ) as s:
                if s.recv(10) == b"ok\n":
                    done += 1
                else:
                    failed += 1
        except OSError:
            failed += 1
    result.put((done, failed))


def run(workers: int, clients: int, seconds: float, work: Path, files: dict[str, str]) -> dict[str, float]:
    port = free_port()
    ini = work / f"ports-{workers}.ini"
    ini.write_text(f"""
[janustls]
procs = {work}
[port:BENCH]
type = srvsock
listen = tcp:{port}:interface=127.0.0.1:backlog=1024
certificate = {files["server_chain"]}
private_key = {files["server_key"]}
client_cert = require
addca = {files["ca"]}
handler = h:serve
""")
    log = work / f"twistd-{workers}.log"
    proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile", "", "--logfile", str(log), "janustls",
                             "--port-def", str(ini), "--workers", str(workers)], cwd=work,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ctx = ssl.create_default_context(cafile=files["ca"])
                ctx.load_cert_chain(files["cert"], files["key"])
                with ctx.wrap_socket(
                    socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
                ) as s:
                    s.recv(10)
                if len(children(proc.pid)) >= workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.2)
        pids = [proc.pid] + children(proc.pid)
        server_before = sum(cpu_seconds(p) for p in pids)
        own_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        mp = get_context("fork")
        q = mp.Queue()
        procs = [mp.Process(target=client, args=(port, files, seconds, q)) for _ in range(clients)]
        started = time.monotonic()
        for p in procs:
            p.start()
        results = [q.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.monotonic() - started
        server_cpu = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists()) - server_before
        own_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (own_after.ru_utime - own_before.ru_utime) + (own_after.ru_stime - own_before.ru_stime)
        done = sum(r[0] for r in results)
        return {"workers": workers, "clients": clients, "handshakes": done, "failed": sum(r[1] for r in results),
                "per_second": done / elapsed, "server_cpu": server_cpu, "client_cpu": client_cpu, "elapsed": elapsed}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=3, help="client processes (default 3)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    from janustls.pki import write_dev_pki

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "h.py").write_text(HANDLER)
        pki = write_dev_pki(work / "pki", clients=("alice",))
        files = {"ca": str(pki.root), "server_chain": str(pki.server_chain), "server_key": str(pki.server_key),
                 "cert": str(pki.clients["alice"]["chain"]), "key": str(pki.clients["alice"]["key"])}  # fmt: skip
        rows = [run(w, args.clients, args.seconds, work, files) for w in args.workers]
    print(
        f"{os.cpu_count()} cores; {args.clients} client processes, TLS 1.3 full mutual-TLS handshakes, {args.seconds:g} s each"
    )
    print(
        f"{'workers':>7} {'handshakes/s':>13} {'failed':>6} {'server CPU s':>13} {'client CPU s':>13} {'server ms CPU/hs':>17}"
    )
    for r in rows:
        per = 1000 * r["server_cpu"] / r["handshakes"] if r["handshakes"] else float("nan")
        print(f"{r['workers']:>7} {r['per_second']:>13.0f} {r['failed']:>6} {r['server_cpu']:>13.2f} "
              f"{r['client_cpu']:>13.2f} {per:>17.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
