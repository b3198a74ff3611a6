"""segserve serve's lifecycle parts without Ray: port checks and what they say, telling our sessions from
other programs, ending a session whatever its process groups, the drain's soft stop, and the
command's one-line refusal of a busy port (no Ray started). The real service: tests/integration/
test_lifecycle.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from service.lifecycle.ports import PortCheck, check_ports
from service.lifecycle.processes import SESSION_MODULE, end_session, holder, port_in_use, session_pids
from service.lifecycle.session import drain

ROOT = Path(__file__).resolve().parents[2]


def listening_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def spawn(code: str, *args: str, executable: str = sys.executable) -> subprocess.Popen:
    """A Python process in a POSIX session of its own (like the service process)."""
    return subprocess.Popen(
        [executable, "-c", textwrap.dedent(code), *args], start_new_session=True, stdout=subprocess.PIPE
    )


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def listening(pid: int, port: int) -> bool:
    return any(c.laddr.port == port for c in psutil.Process(pid).net_connections() if c.status == "LISTEN")


LISTEN_THEN_SLEEP = """
    import socket, sys, time
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
    time.sleep(float(sys.argv[2]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_follows_a_listener():
    s = listening_socket()
    port = s.getsockname()[1]
    assert port_in_use("127.0.0.1", port)
    assert port_in_use("0.0.0.0", port)  # Ray's metrics agent binds every address: a conflict too
    s.close()
    assert not port_in_use("127.0.0.1", port)


def test_a_port_held_by_another_program_is_named_at_once():
    s = listening_socket()
    port = s.getsockname()[1]
    said: list[str] = []
    started = time.monotonic()
    problem = check_ports([PortCheck("gRPC", "127.0.0.1", port, "--grpc-port")], 30, said.append)
    assert time.monotonic() - started < 5  # no waiting for a program that is not ours
    assert problem is not None and f"gRPC port {port}" in problem
    assert f"pid {os.getpid()}" in problem and "--grpc-port" in problem
    assert said == []
    s.close()


def test_a_running_segserve_is_told_apart_from_a_stopping_one():
    """The session leader's command line names the service module and its supervisor: alive and its
    parent -> running; gone -> stopping (it drains and ends on its own)."""
    port = free_port()
    running = spawn(LISTEN_THEN_SLEEP, str(port), "30", SESSION_MODULE, "--supervisor", str(os.getpid()))
    try:
        wait_for(lambda: listening(running.pid, port))
        h = holder(running.pid)
        assert (h.kind, h.sid, h.supervisor) == ("running", running.pid, os.getpid())
        problem = check_ports([PortCheck("HTTP", "127.0.0.1", port, "--port")], 30, print)
        assert (
            problem is not None
            and "running segserve serve" in problem
            and f"kill -INT {os.getpid()}" in problem
        )
    finally:
        running.kill()
        running.wait()
    stopping = spawn(LISTEN_THEN_SLEEP, str(port), "30", SESSION_MODULE, "--supervisor", "999999")
    try:
        wait_for(lambda: listening(stopping.pid, port))
        assert holder(stopping.pid).kind == "stopping"
    finally:
        stopping.kill()
        stopping.wait()


def test_start_waits_for_a_stopping_session_then_goes_on():
    port = free_port()
    stopping = spawn(LISTEN_THEN_SLEEP, str(port), "3", SESSION_MODULE, "--supervisor", "999999")
    try:
        wait_for(lambda: listening(stopping.pid, port))
        said: list[str] = []
        started = time.monotonic()
        problem = check_ports([PortCheck("HTTP", "127.0.0.1", port, "--port")], 30, said.append)
        waited = time.monotonic() - started
    finally:
        stopping.kill()
        stopping.wait()
    assert problem is None
    assert 0.3 < waited < 15
    assert len(said) == 1 and "earlier segserve session that is stopping" in said[0]


def test_the_wait_for_a_stopping_session_is_bounded():
    port = free_port()
    stopping = spawn(LISTEN_THEN_SLEEP, str(port), "60", SESSION_MODULE, "--supervisor", "999999")
    try:
        wait_for(lambda: listening(stopping.pid, port))
        started = time.monotonic()
        problem = check_ports([PortCheck("HTTP", "127.0.0.1", port, "--port")], 1.0, lambda _: None)
        assert time.monotonic() - started < 5
        assert problem is not None and f"pkill -KILL -s {stopping.pid}" in problem
    finally:
        stopping.kill()
        stopping.wait()


TREE = """
    import subprocess, sys, time
    # Like Ray's workers: in process groups of their own, deaf to SIGTERM.
    worker = "import os, signal, time; os.setpgid(0, 0); signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    # Like a worker's haproxy: a grandchild.
    parent = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    for code in (worker, worker, parent):
        subprocess.Popen([sys.executable, "-c", code])
    time.sleep(60)
"""  # noqa: E501


def test_end_session_ends_every_process_of_the_session_whatever_its_group():
    leader = spawn(TREE)
    try:
        wait_for(lambda: len({os.getpgid(pid) for pid in session_pids(leader.pid)}) == 3)
        wait_for(lambda: len(session_pids(leader.pid)) == 5)
        started = time.monotonic()
        assert end_session(leader.pid, grace_s=1.0) == []
        assert time.monotonic() - started < 6
        assert session_pids(leader.pid) == []
    finally:
        leader.kill()
        leader.wait()


FAKE_HAPROXY = """
    import signal, sys, time
    # SIGUSR1 is HAProxy's soft stop: it ends once its connections are done (here after 0.5 s).
    if sys.argv[1] == "soft":
        signal.signal(signal.SIGUSR1, lambda *_: (time.sleep(0.5), sys.exit(0)))
    else:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def haproxy_exe(tmp_path: Path) -> str:
    """A python named haproxy (the drain finds haproxy processes by name)."""
    exe = tmp_path / "haproxy"
    exe.symlink_to(sys.executable)
    return str(exe)


def test_drain_soft_stops_haproxy_and_waits_for_it(haproxy_exe: str):
    proxy = spawn(FAKE_HAPROXY, "soft", executable=haproxy_exe)
    try:
        assert proxy.stdout.readline() == b"ready\n"  # its SIGUSR1 handler is in place
        started = time.monotonic()
        assert drain(10.0, sid=proxy.pid)
        assert 0.4 < time.monotonic() - started < 5
        assert proxy.wait(5) == 0
    finally:
        proxy.kill()


def test_drain_is_bounded_when_haproxy_does_not_end(haproxy_exe: str):
    proxy = spawn(FAKE_HAPROXY, "deaf", executable=haproxy_exe)
    try:
        assert proxy.stdout.readline() == b"ready\n"
        started = time.monotonic()
        assert not drain(1.0, sid=proxy.pid)
        assert time.monotonic() - started < 3
        assert proxy.poll() is None
    finally:
        proxy.kill()
        proxy.wait()


def test_segserve_serve_refuses_a_busy_port_in_one_line_before_ray_starts():
    s = listening_socket()
    port = s.getsockname()[1]
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    s.close()
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"the HTTP port {port} is in use by" in done.stderr and "--port" in done.stderr
    started = [p for p in psutil.process_iter(["name"]) if p.pid not in before and "ray" in p.info["name"]]
    assert started == []
