"""The benchmark's CPU attribution: process roles from Ray's process names and the process trees of
the benchmark and its peers, and the per-request sums."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loadtests import proc_cpu


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("ray::ServeReplica:segmentation:Segmenter-unet-shapes", "", "Segmenter-unet-shapes"),
        ("python", "ray::ServeReplica:segmentation:Ingress.handle_request", "Ingress"),
        ("ray::ServeReplica:split:ImageCodec", "", "ImageCodec"),
        ("ray::ProxyActor", "", "proxies"),
        ("ray::ServeController.listen_for_change", "", "serve controller"),
        ("raylet", "/x/raylet --raylet_socket_name=...", "ray system"),
        ("gcs_server", "", "ray system"),
        ("ray::IDLE", "", "ray system"),
        ("bash", "bash -c make", "other"),
    ],
)
def test_roles_come_from_ray_process_names(name, cmdline, expected):
    assert proc_cpu.role(name, cmdline) == expected


def processes(*rows: tuple[int, int, str, str]) -> dict[int, proc_cpu.Process]:
    return {pid: proc_cpu.Process(ppid, name, cmdline, 0.0) for pid, ppid, name, cmdline in rows}


def test_this_process_is_the_load_generator():
    table = processes((7, 1, "python", "ray::ProxyActor"))
    assert proc_cpu.Roles(own_pid=7).of(7, table) == "load generator"


def test_peer_trees_get_their_own_roles_and_other_clusters_are_not_ours():
    table = processes(
        (10, 1, "python", "loadtests/bench.py"),  # the benchmark itself
        (11, 10, "raylet", "/x/raylet"),  # our service's Ray, started by it
        (12, 11, "ray::ProxyActor", ""),
        (20, 10, "python", "python -m loadtests.peers.litserve_app"),
        (
            21,
            20,
            "python",
            "python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=7)",
        ),
        (22, 20, "python", "python -m loadtests.peers.litserve_app"),  # a forked uvicorn server
        (30, 10, "python", "python -m loadtests.peers.rayserve_app"),
        (31, 30, "raylet", "/x/raylet"),
        (32, 31, "ray::ServeReplica:peer:PeerModel", ""),
        (40, 1, "ray::ProxyActor", ""),  # another cluster on the machine
    )
    roles = proc_cpu.Roles(peers={20: "LitServe", 30: "Ray Serve"}, outside_by_name=False, own_pid=10)
    assert {pid: roles.of(pid, table) for pid in table} == {
        10: "load generator",
        11: "ray system",
        12: "proxies",
        20: "LitServe: main",
        21: "LitServe: workers",
        22: "LitServe: servers",
        30: "Ray Serve: main",
        31: "Ray Serve: ray system",
        32: "Ray Serve: PeerModel",
        40: "other",
    }
    assert proc_cpu.Roles(own_pid=10).of(40, table) == "proxies"  # by name for a service run elsewhere


def test_cpu_is_summed_by_role_and_new_processes_count_from_zero():
    before = {1: ("Ingress", 10.0), 2: ("Segmenter-a", 5.0), 3: ("Segmenter-a", 1.0)}
    after = {1: ("Ingress", 10.5), 2: ("Segmenter-a", 6.0), 3: ("Segmenter-a", 1.5), 4: ("proxies", 0.25)}
    spent = proc_cpu.cpu_by_role(before, after)
    assert spent == {"Segmenter-a": 1.5, "Ingress": 0.5, "proxies": 0.25}
    assert list(spent) == ["Segmenter-a", "Ingress", "proxies"]  # largest first
    assert proc_cpu.per_request_ms(spent, 50) == {"Segmenter-a": 30.0, "Ingress": 10.0, "proxies": 5.0}
    assert proc_cpu.per_request_ms(spent, 0) == {}
    per_request = {"Segmenter-a": 30.0, "proxies": 5.0, "load generator": 9.0, "other": 4.0}
    assert proc_cpu.service_ms(per_request) == 35.0  # neither the client nor unrelated processes
    assert proc_cpu.service_ms({}) is None
    assert proc_cpu.per_second_ms(spent, 10) == {"Segmenter-a": 150.0, "Ingress": 50.0, "proxies": 25.0}
    assert proc_cpu.per_second_ms(spent, 0) == {}


def test_a_real_snapshot_sees_this_process():
    snap = proc_cpu.snapshot()
    assert snap[os.getpid()][0] == "load generator" and snap[os.getpid()][1] > 0


def test_a_real_snapshot_names_a_peer_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        snap = proc_cpu.snapshot(proc_cpu.Roles(peers={child.pid: "Peer"}))
        assert snap[child.pid][0] == "Peer: main" and snap[os.getpid()][0] == "load generator"
    finally:
        child.kill()
        child.wait()
