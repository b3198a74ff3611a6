"""A peer app as a subprocess on a free port: started, waited for, stopped with its whole tree."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from loadtests.common import ROOT
from loadtests.local_service import wait_ready
from loadtests.peers import PEER_APPS
from service.local import free_port

READY_TIMEOUT_S = 300  # a Ray peer starts a cluster of its own: on a loaded 2-core machine, minutes
STOP_TIMEOUT_S = 90  # a Ray peer's serve.shutdown + ray.shutdown take up to a minute under load


class PeerProcess:
    """``with PeerProcess("litserve", repository, "unet-shapes", log_path) as peer: peer.url ...``"""

    def __init__(
        self, peer: str, repository: Path, model: str, log_path: Path, options: tuple[str, ...] = ()
    ) -> None:
        self.peer = peer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", PEER_APPS[peer], "--repository", str(repository)]
        command += ["--model", model, "--port", str(self.port), *options]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self.started = time.monotonic()
        self.startup_s: float | None = None

    def __enter__(self) -> PeerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                wait_ready(self.url, timeout_s=min(5.0, deadline - time.monotonic()), path="/health")
                self.startup_s = time.monotonic() - self.started
                return
            except RuntimeError:
                continue
        raise RuntimeError(
            f"peer {self.peer} did not start (exit code {self.process.poll()}):\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the peer (each app shuts its own children down), then to what is left of the
        tree it had (LitServe's workers and servers, a Ray peer's cluster), SIGKILL last."""
        try:
            tree = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        _end_all(tree)


def _end_all(processes: list[psutil.Process], timeout_s: float = 10) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
