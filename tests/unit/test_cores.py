"""Idle cores lent to a lone forward (service/cores.py): who counts as busy, and the threads that follow."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from service.cores import MIN_FORWARD_MS, CoreShare, cgroup_cpus, threads_for


@pytest.mark.parametrize(
    ("text", "cpus"), [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5)]
)
def test_cgroup_cpu_max(text, cpus):
    assert cgroup_cpus(text) == cpus


@pytest.mark.parametrize(
    ("cores", "busy", "own", "most", "threads"),
    [
        (2, 1, 1, 8, 2),  # alone on a 2-core machine: both cores
        (2, 2, 1, 8, 1),  # the other replica busy: its own share
        (16, 1, 1, 8, 8),  # never past the cap
        (16, 3, 1, 8, 5),
        (2, 5, 2, 8, 2),  # never under its own share, however busy the machine
    ],
)
def test_threads_for(cores, busy, own, most, threads):
    assert threads_for(cores, busy, own, most) == threads


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """``CoreShare.run`` sets the calling thread's torch threads: the tests after these keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def torch_threads() -> int:
    return torch.get_num_threads()


def test_a_replica_with_requests_in_flight_counts_as_busy_for_the_others(tmp_path):
    a = CoreShare(1, 8, tmp_path, cores=4)
    b = CoreShare(1, 8, tmp_path, cores=4)
    c = CoreShare(1, 8, tmp_path, cores=4)
    try:
        assert a.busy_others() == 0
        assert a.run(torch_threads) == 4  # alone: every core
        with b.busy():
            with b.busy():  # two requests of b: still one busy replica
                assert a.busy_others() == 1
                assert a.run(torch_threads) == 2
            assert a.busy_others() == 1
            with c.busy():
                assert a.run(torch_threads) == 1  # 4 cores // 3 forwards
        assert a.busy_others() == 0  # b's last request ended: its lock is released
        assert b.busy_others() == 0
    finally:
        for share in (a, b, c):
            share.close()


def test_a_lock_missed_while_another_replica_looked_is_taken_by_the_next_request(tmp_path):
    import fcntl
    import os

    a = CoreShare(1, 8, tmp_path, cores=2)
    b = CoreShare(1, 8, tmp_path, cores=2)
    looking = os.open(b.path, os.O_RDONLY)
    try:
        fcntl.flock(looking, fcntl.LOCK_SH)  # a counts the busy ones at the moment b's request arrives
        with b.busy():
            fcntl.flock(looking, fcntl.LOCK_UN)
            assert a.busy_others() == 0  # b missed its lock: unseen for now
            with b.busy():  # b's next request, the first still in flight
                assert a.busy_others() == 1
        assert a.busy_others() == 0
    finally:
        os.close(looking)
        a.close()
        b.close()


def test_forwards_of_one_process_share_its_cores(tmp_path):
    a = CoreShare(1, 8, tmp_path, cores=2)
    try:
        # A second forward of this process (another model's batch) already running: one thread each.
        assert a.run(lambda: a.run(torch_threads)) == 1
        assert a.run(torch_threads) == 2
    finally:
        a.close()


def test_a_dead_replica_is_not_busy_and_its_file_is_removed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from service.cores import CoreShare\n"
            "share = CoreShare(1, 8, Path(sys.argv[1]), cores=2)\n"
            "with share.busy():\n    print('busy', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    a = CoreShare(1, 8, tmp_path, cores=2)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "busy"
        assert a.busy_others() == 1
        assert a.run(torch_threads) == 1
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 5
        while a.busy_others() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.busy_others() == 0
        assert [p.name for p in tmp_path.iterdir()] == [a.path.name]  # the dead one's file is gone
    finally:
        holder.kill()
        a.close()


def test_only_forwards_long_enough_borrow(tmp_path):
    share = CoreShare(1, 8, tmp_path, cores=2)
    fixed = CoreShare(2, 2, tmp_path, cores=2)  # borrowing off: the most it may use is its own share
    try:
        assert share.pays_for(MIN_FORWARD_MS * 3)
        assert not share.pays_for(MIN_FORWARD_MS / 10)
        assert not fixed.pays_for(MIN_FORWARD_MS * 3)
        assert fixed.run(torch_threads) == 2
    finally:
        share.close()
        fixed.close()


def test_an_unusable_folder_means_no_borrowing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert CoreShare.open(1, 8, blocker / "cores") is None  # a file where the folder should be
    share = CoreShare.open(1, 8, tmp_path / "cores")
    assert share is not None and share.path.parent == tmp_path / "cores"
    share.close()


def test_a_model_borrows_only_when_it_asks_and_its_forward_is_long_enough(tmp_path):
    """ModelWorker's choice (service/worker.py), with the shipped unet-shapes: it asks; it borrows when
    its timed forward reaches the share's threshold (0 ms here: always; an hour: never)."""
    from service.config import load_repository
    from service.worker import ModelWorker

    repository = load_repository("models/repository.yaml")
    unet = repository.get("unet-shapes")
    assert unet.deployment.borrow_idle_cores
    weights = repository.weights_path(unet)
    unasked = unet.model_copy(
        update={"deployment": unet.deployment.model_copy(update={"borrow_idle_cores": False})}
    )
    share = CoreShare(1, 8, tmp_path, cores=2)
    try:
        share.min_forward_ms = 0.0
        assert ModelWorker(unet, weights, cores=share).borrows
        assert not ModelWorker(unasked, weights, cores=share).borrows  # it does not ask
        assert not ModelWorker(unet, weights).borrows  # no share: the split topology
        share.min_forward_ms = 3_600_000.0
        assert not ModelWorker(unet, weights, cores=share).borrows  # its forward is too short
    finally:
        share.close()
