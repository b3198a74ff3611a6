"""Idle cores for a lone forward: a CPU replica's torch threads follow how busy the machine's replicas are.

Why: on a CPU node each replica runs its models on its own share of the cores (``torch_threads``: one
each on the shipped 2-core layout of two replicas), which is right under load, when every replica is
busy. At low load a request runs on its replica's one core while the other replicas' cores idle: on
the U-Net (128 px) a forward took 32 ms on one thread and 20 ms on two in one microbenchmark, 40 and
32 in another (this machine's two cores are a VM's); served, a lone request's p50 fell from 43.7 to
37.1 ms and from 41.5 to 35.6 in two A/B pairs. The price: the borrowed threads spin between
operations (OpenMP), so a lone request costs about twice the CPU, on cores nothing else wanted.

How: a replica with requests in flight holds an exclusive ``flock`` on a file of its own in a folder
the machine's replicas share (``/dev/shm/segserve-cores-<uid>``: node-local). Before a forward it
counts the files other replicas lock (a lock it cannot take: busy; a process that died took its lock
with it) and the forwards running in its own process, and runs on ``cores // busy`` threads: never
fewer than its own share, never more than ``max_threads``. Under load every replica is busy and each
keeps its share.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

FOLDER_NAME = "segserve-cores"
# A lone forward's threads at most: a small network gains less with each thread (U-Net, 128 px: 1.25-
# 1.6x on two), and a many-core node's other work should not wait on its spinning threads.
MAX_THREADS = 8
# Forwards shorter than this on the replica's own threads borrow nothing: waking more threads for
# small operations costs more than it saves (measured on the null model, ~1 ms: a lone request took as
# long on two threads, for twice the CPU).
MIN_FORWARD_MS = 10.0


def default_folder() -> Path:
    """Node-local and per user (another user's folder would not let us in)."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else Path(tempfile.gettempdir())) / f"{FOLDER_NAME}-{os.getuid()}"


def cgroup_cpus(cpu_max: str) -> float | None:
    """The CPUs a cgroup v2 ``cpu.max`` allows (``"200000 100000"`` -> 2.0); None for ``max``."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def machine_cores() -> int:
    """Cores this process may run on: its CPU affinity, under the container's CPU quota if it has one
    (a Kubernetes pod's limit; a node's other pods are not ours to use)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        allowed = cgroup_cpus(Path("/sys/fs/cgroup/cpu.max").read_text())
    except (OSError, ValueError):
        allowed = None
    return max(1, min(cores, math.floor(allowed))) if allowed else cores


def threads_for(cores: int, busy: int, own: int, most: int) -> int:
    """Torch threads for a forward when ``busy`` replicas' forwards share ``cores`` (this one counted)."""
    return max(own, min(most, cores // max(1, busy)))


class CoreShare:
    """One per replica process: ``busy()`` around each request, ``run(fn, ...)`` for each forward."""

    def __init__(
        self,
        own_threads: int,
        max_threads: int = MAX_THREADS,
        folder: Path | None = None,
        cores: int | None = None,
    ) -> None:
        self.min_forward_ms = MIN_FORWARD_MS
        self.own = own_threads
        self.most = max(own_threads, max_threads)
        self.cores = cores or machine_cores()
        self.folder = folder or default_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{os.getpid()}-{id(self):x}"
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        self._requests = 0
        self._locked = False
        self._forwards = 0
        self._lock = threading.Lock()  # forwards of several models may start at once in one process

    @classmethod
    def open(
        cls, own_threads: int, max_threads: int = MAX_THREADS, folder: Path | None = None
    ) -> CoreShare | None:
        """A share in ``folder`` (default: ``default_folder()``); None (no borrowing, each replica on
        its own threads) when the folder cannot be used."""
        try:
            return cls(own_threads, max_threads, folder)
        except OSError as e:
            logger.warning("idle cores are not borrowed: %s", e)
            return None

    def pays_for(self, forward_ms: float) -> bool:
        """Whether a model whose forward takes ``forward_ms`` on the own threads should borrow."""
        return self.most > self.own and forward_ms >= self.min_forward_ms

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
            self.path.unlink()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around one request (on the event loop): the replica counts as busy while any is in flight."""
        self._requests += 1
        if not self._locked:
            # Not waiting: a replica counting the busy ones may hold a shared lock on this file for a
            # moment. Then the next request takes it (a long busy stretch is not left unseen).
            self._locked = _try_lock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._requests -= 1
            if self._requests == 0 and self._locked:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._locked = False

    def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on as many torch threads as the machine's idle cores allow (in the calling
        thread, which must be the one that runs the forward: torch's thread count is per thread)."""
        import torch

        with self._lock:
            self._forwards += 1
            running_here = self._forwards
        try:
            torch.set_num_threads(self.threads_now(running_here))
            return fn(*args)
        finally:
            with self._lock:
                self._forwards -= 1

    def threads_now(self, running_here: int = 1) -> int:
        return threads_for(self.cores, running_here + self.busy_others(), self.own, self.most)

    def busy_others(self) -> int:
        """Other replicas of this machine with requests in flight (files locked by someone else)."""
        count = 0
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0
        for name in names:
            path = self.folder / name
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if _try_lock(fd, fcntl.LOCK_SH):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    _remove_if_dead(path)
                else:
                    count += 1
            finally:
                os.close(fd)
        return count


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def _remove_if_dead(path: Path) -> None:
    """The file of a process that is gone (its name starts with its pid)."""
    pid = path.name.partition("-")[0]
    if not pid.isdigit():
        return
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            path.unlink()
    except PermissionError:  # alive, another user's
        pass
