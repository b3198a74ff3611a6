"""``segserve serve`` as a child process, the way a person runs it: its own process group (a terminal's
foreground job), its output kept, its Ray session found. For the soak and the lifecycle tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from service.lifecycle.processes import port_in_use, session_pids
from service.local import free_port

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "segserve is ready."


class ServeProcess:
    """``python -m service.cli serve`` on the given (or free) ports; ``signal_group`` is a Ctrl-C."""

    def __init__(
        self,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        echo: bool = False,
    ) -> None:
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.lines: list[str] = []
        self.echo = echo
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.http_port)]
        command += ["--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *extra_args]
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,  # like a job in a terminal: Ctrl-C goes to this group
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.sid: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.echo:
                print(f"  [serve] {line}", end="", flush=True)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = 240.0) -> float:
        """Seconds until the ready line; the service process's session id is then ``sid``."""
        started = time.monotonic()
        while READY_LINE not in self.lines:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"segserve serve ended (exit {self.proc.returncode}):\n{self.output[-3000:]}"
                )
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"segserve serve not ready after {timeout_s:.0f} s:\n{self.output[-3000:]}"
                )
            time.sleep(0.2)
        self.sid = self.service_pid()
        return time.monotonic() - started

    def service_pid(self) -> int:
        """The service process (the supervisor's child, leader of the Ray session)."""
        children = psutil.Process(self.proc.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one service process under segserve serve, found {children}")
        return children[0].pid

    def signal_group(self, sig: int = signal.SIGINT) -> None:
        """What a terminal does on Ctrl-C (SIGINT to the foreground group), or ``kill -SIG -- -PGID``."""
        os.killpg(self.proc.pid, sig)

    def session(self) -> list[int]:
        """Live processes of the service's Ray session (none once it has stopped)."""
        return session_pids(self.sid) if self.sid else []

    def ports_in_use(self) -> list[int]:
        ports = [("127.0.0.1", self.http_port), ("127.0.0.1", self.grpc_port), ("0.0.0.0", self.metrics_port)]
        return [port for host, port in ports if port_in_use(host, port)]

    def wait_stopped(self, timeout_s: float) -> tuple[float, int | None]:
        """Seconds until the supervisor exited and the session had no process left; and its status."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None and not self.session():
                return time.monotonic() - started, self.proc.returncode
            time.sleep(0.1)
        return time.monotonic() - started, self.proc.poll()

    def kill(self) -> None:
        """Last resort for a test that failed half-way: every process of the group and of the session."""
        from service.lifecycle.processes import end_session

        if self.sid is None and self.proc.poll() is None:
            self.sid = self.service_pid()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.sid:
            end_session(self.sid, grace_s=0)
        self.proc.wait(10)
