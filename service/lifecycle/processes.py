"""The processes of a local ``segserve serve`` session: who holds a port, which processes are one
session's, and ending them. No Ray here (the supervisor that uses it must start fast).

A session is one POSIX session: ``segserve serve`` starts the service child with ``start_new_session``,
and everything Ray starts below it (GCS, raylet, agents, workers in their own process groups, the
``haproxy`` child of a worker) keeps that session id. So ``getsid(pid) == sid`` names them all,
whatever their process group, and another Ray on the same machine is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

SESSION_MODULE = "service.lifecycle.session"
"""The service process runs ``python -m service.lifecycle.session``: a session leader with this in its
command line is a segserve session."""
STOP_SIGNAL = signal.SIGUSR2
"""Supervisor to service process: drain and stop (also what the kernel sends it when the supervisor
dies). Not SIGTERM: ``ray.init`` puts its own SIGTERM handler in place (the core worker's aborts the
process with a stack dump)."""


def port_in_use(host: str, port: int) -> bool:
    """True when a server could not bind ``host:port`` now (SO_REUSEADDR, as servers bind: a port in
    TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def listeners(port: int) -> list[int]:
    """Pids listening on TCP ``port`` on any address (only those this user may see); when none listens,
    the pids of connections still open on it: a draining server has closed its listening socket but
    still answers on the connections it accepted, and those keep the port from being bound."""
    listening: set[int] = set()
    connected: set[int] = set()
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if not (conn.laddr and conn.laddr.port == port and conn.pid):
                continue
            if conn.status == psutil.CONN_LISTEN:
                listening.add(conn.pid)
            elif conn.status != psutil.CONN_TIME_WAIT:
                connected.add(conn.pid)
    return sorted(listening or connected)


def sid_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def session_pids(sid: int, exclude: Iterable[int] = ()) -> list[int]:
    """Every live process of POSIX session ``sid`` (zombies left out: they hold nothing)."""
    skip = set(exclude)
    out = []
    for proc in psutil.process_iter(["status"]):
        if proc.pid in skip or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if sid_of(proc.pid) == sid:
            out.append(proc.pid)
    return out


def send(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(sid: int, timeout_s: float, exclude: Iterable[int] = ()) -> list[int]:
    """Poll until session ``sid`` has no process left (besides ``exclude``); returns what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = session_pids(sid, exclude)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def end_session(sid: int, grace_s: float = 2.0, exclude: Iterable[int] = ()) -> list[int]:
    """SIGTERM every process of the session, SIGKILL what is left after ``grace_s``; returns the pids
    still there 2 s later (none, unless a process is stuck in the kernel)."""
    exclude = list(exclude)
    left = session_pids(sid, exclude)
    if left and grace_s > 0:
        send(left, signal.SIGTERM)
        left = wait_gone(sid, grace_s, exclude)
    send(left, signal.SIGKILL)
    return wait_gone(sid, 2.0, exclude) if left else []


@dataclass(frozen=True)
class Holder:
    """A process that holds a port we need, and what it is to us."""

    pid: int
    name: str
    kind: str
    """``running``: a segserve session whose supervisor is alive; ``stopping``: a segserve session whose
    supervisor is gone (it drains and stops on its own); ``leftover``: a Ray process of a session whose
    leader is gone; ``gone``: it ended since it was listed; ``other``: anything else."""
    sid: int | None = None
    supervisor: int | None = None
    command: str = ""

    def describe(self) -> str:
        command = f": {self.command[:60]}" if self.command and self.command != self.name else ""
        return f"{self.name} (pid {self.pid}{command})"


def holder(pid: int) -> Holder:
    """Classify the process ``pid`` that holds one of our ports."""
    try:
        proc = psutil.Process(pid)
        name, command = proc.name(), " ".join(proc.cmdline()).strip()
    except psutil.Error:  # it ended since it was listed: whatever held the port is letting go of it
        return Holder(pid, "a process that just ended", "gone")
    sid = sid_of(pid)
    leader = _process(sid)
    if leader is not None and SESSION_MODULE in _cmdline(leader):
        supervisor = supervisor_of(leader)
        alive = supervisor is not None and _ppid(leader) == supervisor
        return Holder(pid, name, "running" if alive else "stopping", sid, supervisor, command)
    if leader is None and _is_ray(name, command):
        return Holder(pid, name, "leftover", sid, None, command)
    return Holder(pid, name, "other", sid, None, command)


def supervisor_of(leader: psutil.Process) -> int | None:
    """The ``--supervisor PID`` the service process was started with."""
    args = _cmdline(leader).split()
    try:
        return int(args[args.index("--supervisor") + 1])
    except (ValueError, IndexError):
        return None


def _is_ray(name: str, command: str) -> bool:
    return name in ("haproxy", "raylet", "gcs_server") or command.startswith("ray::") or "/ray/" in command


def _process(pid: int | None) -> psutil.Process | None:
    if not pid or pid <= 1:
        return None
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""
