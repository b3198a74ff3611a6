"""``segserve serve``: the process in the terminal. It checks the ports, starts the service process
(``session.py``) in a POSIX session of its own, and turns signals into an ordered stop.

Why two processes: Ray starts its daemons in the process group of the process that calls
``ray.init``, so a terminal's Ctrl-C (SIGINT to the foreground group) or ``kill -TERM -- -PGID`` reached
GCS and the raylet together with the driver, and Serve's own shutdown killed HAProxy with requests in
flight. Here only this small process (no Ray imported) is in the terminal's group:

* first SIGINT / SIGTERM / SIGHUP: ``STOP_SIGNAL`` to the service process, which drains (in-flight
  requests are answered, at most ``--drain-timeout-s``), stops Serve and Ray and ends its session;
* a second one, or a stop that overruns its bound: SIGKILL to every process of the session;
* at the end, every process of the session is gone and the ports are free (checked, and said).

If this process is killed (even by SIGKILL), the kernel sends the service process ``STOP_SIGNAL``
(``PR_SET_PDEATHSIG``) and it stops in the same order on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.lifecycle.ports import PortCheck, check_ports, wait_free
from service.lifecycle.processes import SESSION_MODULE, STOP_SIGNAL, end_session

EXIT_STOPPED, EXIT_FAILED, EXIT_PORT_IN_USE, EXIT_INTERRUPTED = 0, 1, 3, 130
STOP_MARGIN_S = 25.0
"""Past the drain, the service process gets this long for ``serve.shutdown``, ``ray.shutdown`` and its
own sweep (two 10 s bounds and 2 s of SIGTERM grace, ``session.py``) before it is killed."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 9000
    metrics_port: int = 8080
    drain_timeout_s: float = 35.0
    """How long in-flight requests get after the stop signal (above the 30 s request timeout of the
    shipped config, so a request admitted before the signal gets its answer or its 504)."""
    wait_stale_s: float = 60.0
    """How long to wait for an earlier segserve session that is stopping to free our ports."""

    def port_checks(self) -> list[PortCheck]:
        return [
            PortCheck("HTTP", self.host, self.port, "--port"),
            PortCheck("gRPC", self.host, self.grpc_port, "--grpc-port"),
            # Ray's metrics agent listens on every address.
            PortCheck("metrics", "0.0.0.0", self.metrics_port, "--metrics-port"),
        ]


def say(message: str) -> None:
    """Print; a closed terminal or pipe must not stop the stop."""
    with contextlib.suppress(OSError):
        print(message, flush=True)


def serve(options: ServeOptions, preflight: Callable[[], bool] | None = None) -> int:
    """Run the service until a signal stops it; the exit status (0 after an orderly stop).

    ``preflight`` runs after the port check and before Ray starts (the CLI checks the model repository
    there); False ends it with status 1, the check having said why."""
    problem = check_ports(options.port_checks(), options.wait_stale_s, say)
    if problem:
        print(f"segserve: {problem}", file=sys.stderr, flush=True)
        return EXIT_PORT_IN_USE
    if preflight is not None and not preflight():
        return 1
    return Supervisor(options).run()


def _die_with_parent() -> None:
    """In the child before exec: ``STOP_SIGNAL`` when the supervisor dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, STOP_SIGNAL, 0, 0, 0)


class Supervisor:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.signals = 0

    def on_signal(self, *_: object) -> None:
        self.signals += 1

    def spawn(self) -> tuple[subprocess.Popen, int, str]:
        from service.local import local_ray_env

        o = self.options
        read_fd, write_fd = os.pipe()
        ray_env = local_ray_env()  # made here so that this process can remove HAProxy's folder at the end
        env = {**os.environ, **ray_env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", SESSION_MODULE, "--host", o.host, "--port", str(o.port)]
        command += ["--grpc-port", str(o.grpc_port), "--metrics-port", str(o.metrics_port)]
        command += ["--drain-timeout-s", str(o.drain_timeout_s), "--supervisor", str(os.getpid())]
        command += ["--ready-fd", str(write_fd)]
        child = subprocess.Popen(
            command, env=env, start_new_session=True, pass_fds=(write_fd,), preexec_fn=_die_with_parent
        )
        os.close(write_fd)
        return child, read_fd, ray_env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        child, ready_fd, folder = self.spawn()
        try:
            return self.watch(child, ready_fd)
        finally:
            os.close(ready_fd)
            shutil.rmtree(folder, ignore_errors=True)

    def watch(self, child: subprocess.Popen, ready_fd: int) -> int:
        """Follow the service process from start to end; returns the exit status."""
        sid = child.pid
        ready = False
        stop_started: float | None = None
        while child.poll() is None:
            if not ready:
                ready = _read_ready(ready_fd)
            else:
                time.sleep(0.1)
            if self.signals and not ready:
                say("interrupted while starting; stopping at once ...")
                return self.kill_now(sid, EXIT_INTERRUPTED)
            if self.signals == 1 and stop_started is None:
                stop_started = time.monotonic()
                say(
                    "stopping: answering the requests in flight (up to "
                    f"{self.options.drain_timeout_s:.0f} s; Ctrl-C again to stop at once) ..."
                )
                child.send_signal(STOP_SIGNAL)
            elif self.signals >= 2:
                say("second interrupt: stopping at once ...")
                return self.kill_now(sid, EXIT_INTERRUPTED)
            elif (
                stop_started
                and time.monotonic() - stop_started > self.options.drain_timeout_s + STOP_MARGIN_S
            ):
                say("segserve: the service did not stop within its bound; killing it ...")
                return self.kill_now(sid, EXIT_FAILED)
        return self.finish(sid, child.returncode, stop_started)

    def finish(self, sid: int, returncode: int, stop_started: float | None) -> int:
        """The service process has ended: end what is left of its session and check the ports."""
        left = end_session(sid, grace_s=2.0)
        busy = self.busy_ports()
        if stop_started is None:
            say(f"segserve: the service process ended unexpectedly (exit status {returncode})")
            return EXIT_FAILED
        took = time.monotonic() - stop_started
        if left or busy or returncode:
            say(
                f"segserve: stopped in {took:.1f} s, but not cleanly (exit status {returncode}, "
                f"processes left {left}, ports still in use {busy})"
            )
            return EXIT_FAILED
        say(f"segserve stopped in {took:.1f} s; no process left, ports free.")
        return EXIT_STOPPED

    def kill_now(self, sid: int, code: int) -> int:
        left = end_session(sid, grace_s=0)
        busy = self.busy_ports()
        if left or busy:
            say(f"segserve: processes left {left}, ports still in use {busy}")
            return EXIT_FAILED
        say("segserve stopped; no process left, ports free.")
        return code

    def busy_ports(self, timeout_s: float = 5.0) -> list[int]:
        """Our ports that are still in use after ``timeout_s`` (sockets close as their processes end)."""
        return wait_free(self.options.port_checks(), timeout_s)


def _read_ready(fd: int, timeout_s: float = 0.1) -> bool:
    """True once the service process wrote "ready" (it writes nothing else; end of file: it ended)."""
    if not select.select([fd], [], [], timeout_s)[0]:
        return False
    data = os.read(fd, 64)
    if not data:
        time.sleep(timeout_s)
    return data.startswith(b"ready")
