"""The benchmark's CPU attribution: process roles from Ray's process names, and the per-request sums."""

from __future__ import annotations

import os

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
    assert proc_cpu.role(name, cmdline, own_pid=1, pid=2) == expected


def test_this_process_is_the_load_generator():
    assert proc_cpu.role("python", "ray::ProxyActor", own_pid=7, pid=7) == "load generator"


def test_cpu_is_summed_by_role_and_new_processes_count_from_zero():
    before = {1: ("Ingress", 10.0), 2: ("Segmenter-a", 5.0), 3: ("Segmenter-a", 1.0)}
    after = {1: ("Ingress", 10.5), 2: ("Segmenter-a", 6.0), 3: ("Segmenter-a", 1.5), 4: ("proxies", 0.25)}
    spent = proc_cpu.cpu_by_role(before, after)
    assert spent == {"Segmenter-a": 1.5, "Ingress": 0.5, "proxies": 0.25}
    assert list(spent) == ["Segmenter-a", "Ingress", "proxies"]  # largest first
    assert proc_cpu.per_request_ms(spent, 50) == {"Segmenter-a": 30.0, "Ingress": 10.0, "proxies": 5.0}
    assert proc_cpu.per_request_ms(spent, 0) == {}


def test_a_real_snapshot_sees_this_process():
    snap = proc_cpu.snapshot()
    assert snap[os.getpid()][0] == "load generator" and snap[os.getpid()][1] > 0
