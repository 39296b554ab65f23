"""Worker processes start from the package, never from the working directory, and a parent whose
workers cannot start says so, backs off, and ends with a failing exit status."""

from __future__ import annotations

import subprocess
import time

from tests.support import Twistd, definitions, free_port, install_handlers, secure_port
from tests.test_ops_twistd import hello

STRAY = "raise SystemExit('a stray module of the working directory was imported')\n"


def test_workers_ignore_modules_in_the_working_directory(pki, tmp_path):
    """A `timeit.py` (or `random.py`) where the server is started must not be imported by a worker."""
    procs = install_handlers(tmp_path / "procs", h="hi_cn")
    port = free_port()
    ini = procs / "ports.ini"
    ini.write_text(definitions(procs, secure_port(pki, port=port)))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("timeit", "random", "fnmatch"):
        (run / f"{name}.py").write_text(STRAY)
    # -P: the parent, like the installed `twistd` script, does not import from the working directory either.
    t = Twistd(["-n", "--pidfile", str(run / "t.pid"), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json", "--workers", "1"], run, python_flags=("-P",))  # fmt: skip
    try:
        t.wait_for("janustls.workers.started")
        deadline = time.monotonic() + 30
        answer = ""
        while time.monotonic() < deadline and not answer:
            try:
                answer = hello(port, pki, "alice")
            except OSError:
                time.sleep(0.3)
        assert answer == "hi alice", "".join(t.seen[-20:])
    finally:
        t.stop()


def test_parent_gives_up_when_no_worker_stays_up(pki, tmp_path):
    procs = install_handlers(
        tmp_path / "procs", h="worker_fails"
    )  # loads in the parent, which validates; dies in every worker
    ini = procs / "ports.ini"
    ini.write_text(definitions(procs, secure_port(pki, port=free_port())))
    pidfile = tmp_path / "t.pid"
    t = Twistd(["-n", "--pidfile", str(pidfile), "--logfile", "-", "janustls", "--port-def", str(ini),
                "--log-format", "json", "--workers", "2"], tmp_path)  # fmt: skip
    try:
        loop = t.wait_for("janustls.workers.crash_loop", timeout=60)
        assert loop["fails"] >= 2 and loop["delay"] >= 1
        gave_up = t.wait_for("janustls.workers.gave_up", timeout=90)
        assert gave_up["code"] != 0
        code = t.proc.wait(60)
        assert code == gave_up["code"], code
        assert not pidfile.exists()  # twistd cleaned up before the exit status was set
    except subprocess.TimeoutExpired:
        raise AssertionError("the parent kept running with no worker serving")
    finally:
        t.stop()
