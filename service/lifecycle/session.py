"""The service process of ``segserve serve``: Ray, Serve and the app, in a POSIX session of its own.

The supervisor (``supervisor.py``, the process in the terminal) starts this one with
``start_new_session`` and asks it to stop with ``STOP_SIGNAL``; a terminal's Ctrl-C never reaches it or
Ray's processes. Not SIGTERM: ``ray.init`` replaces a SIGTERM handler with its own (and the core worker's
C++ one aborts the process with a stack dump). On ``STOP_SIGNAL`` it stops in order:

1. **drain**: HAProxy's soft stop (SIGUSR1) closes the HTTP and gRPC listeners at once (the ports are
   free, new connections are refused) and each haproxy process ends once its connections are answered;
   at most ``drain_timeout_s``.
2. **stop**: ``serve.shutdown()`` and ``ray.shutdown()``, each bounded.
3. **sweep**: whatever of this session is still alive (a haproxy Ray left behind, a worker that did not
   exit) gets SIGTERM, then SIGKILL.

The supervisor dying (even by SIGKILL) sends this process ``STOP_SIGNAL`` (``PR_SET_PDEATHSIG``), so the
service never outlives it by more than the drain and stop bounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from service.lifecycle.processes import STOP_SIGNAL, end_session, send, session_pids

STOP_STEP_S = 10.0
"""Bound on ``serve.shutdown()`` and on ``ray.shutdown()`` each; past it the sweep ends what is left."""


class Interrupted(BaseException):
    """``STOP_SIGNAL`` while starting: unwind the start, then stop (a BaseException, so that no
    ``except Exception`` in Ray swallows it)."""


def haproxy_pids(sid: int) -> list[int]:
    import psutil

    out = []
    for pid in session_pids(sid):
        try:
            if psutil.Process(pid).name() == "haproxy":
                out.append(pid)
        except psutil.Error:
            continue
    return out


def drain(timeout_s: float, sid: int | None = None) -> bool:
    """Soft-stop every haproxy of this session and wait until they have ended (their connections
    answered); True when they all ended within ``timeout_s``.

    Ray's controller restarts a haproxy that ended (its health check fails ~25 s later, measured), so
    one that appears during the drain is soft-stopped too: it then accepts nothing new either.
    """
    sid = os.getsid(0) if sid is None else sid
    signalled: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        alive = haproxy_pids(sid)
        fresh = [pid for pid in alive if pid not in signalled]
        send(fresh, signal.SIGUSR1)
        signalled.update(fresh)
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def bounded(step: Callable[[], object], timeout_s: float) -> bool:
    """Run ``step`` in a daemon thread; False when it did not return within ``timeout_s``."""
    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until ``GET url/readyz`` answers 200 through HAProxy (``serve.run`` returns before HAProxy has
    been given the replicas)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.25)


def banner(host: str, port: int, grpc_port: int, metrics_port: int) -> str:
    base = f"http://{host}:{port}"
    return (
        f"\nsegserve is ready.\n"
        f"  HTTP     {base}   (models: curl {base}/v1/models)\n"
        f"  gRPC     {host}:{grpc_port}   (segmentation.v1.Segmentation)\n"
        f"  metrics  http://{host}:{metrics_port}/metrics\n\n"
        f"Try:\n"
        f"  curl -s --data-binary @docs/examples/shapes.png -H 'Content-Type: image/png' \\\n"
        f"       '{base}/v1/models/unet-shapes/segment?overlay=true' | head -c 600\n\n"
        f"Ctrl-C stops it (in-flight requests are answered first; a second Ctrl-C stops at once).\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service.lifecycle.session")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--drain-timeout-s", type=float, required=True)
    p.add_argument("--supervisor", type=int, required=True, help="pid of segserve serve")
    p.add_argument("--ready-fd", type=int, required=True, help="'ready' is written here once serving")
    return p.parse_args(argv)


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.ready = False

    def on_stop_signal(self, *_: object) -> None:
        self.stop.set()
        if not self.ready:
            raise Interrupted

    def start(self) -> None:
        from service.local import deploy, start_local

        a = self.args
        print(
            f"starting Ray and Serve (HTTP {a.host}:{a.port}, gRPC {a.host}:{a.grpc_port}, "
            f"metrics :{a.metrics_port}) ...",
            flush=True,
        )
        start_local(host=a.host, port=a.port, grpc_port=a.grpc_port, metrics_port=a.metrics_port)
        deploy()
        probe = "127.0.0.1" if a.host in ("0.0.0.0", "::") else a.host
        wait_ready(f"http://{probe}:{a.port}")
        self.ready = True
        print(banner(a.host, a.port, a.grpc_port, a.metrics_port), flush=True)
        os.write(a.ready_fd, b"ready\n")

    def shut_down(self) -> int:
        """Drain (when serving), stop Serve and Ray, end what is left; 0 when every step kept its bound."""
        import ray
        from ray import serve

        ok = True
        if self.ready:
            started = time.monotonic()
            ok = drain(self.args.drain_timeout_s)
            print(
                f"drained in {time.monotonic() - started:.1f} s"
                if ok
                else f"drain timed out after {self.args.drain_timeout_s:.0f} s",
                flush=True,
            )
        if ray.is_initialized():
            ok = bounded(serve.shutdown, STOP_STEP_S) and ok
            ok = bounded(ray.shutdown, STOP_STEP_S) and ok
        left = end_session(os.getsid(0), grace_s=2.0, exclude=[os.getpid()])
        return 0 if ok and not left else 1


def hap_folder() -> str | None:
    """The HAProxy folder ``local_ray_env`` made for this session (removed at the end)."""
    return os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.getppid() != args.supervisor:  # the supervisor died before PR_SET_PDEATHSIG was in place
        return 1
    session = Session(args)
    signal.signal(STOP_SIGNAL, session.on_stop_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the supervisor decides
    code = 0
    try:
        session.start()
        session.stop.wait()
    except Interrupted:
        pass
    except Exception as e:  # a failed start: say it in one line, the details are in Ray's logs above
        print(f"segserve: failed to start: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 1
    signal.signal(STOP_SIGNAL, signal.SIG_IGN)  # stopping now; a second one changes nothing
    code = session.shut_down() or code
    folder = hap_folder()
    if folder and os.path.basename(folder).startswith("hap"):
        shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()
    os._exit(code)  # no atexit: Ray's would try to shut down again


if __name__ == "__main__":
    main()
