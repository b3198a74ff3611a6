"""The benchmark's peers phase: each peer app (``PEER_APPS``) on each peer model, started on a free
port, its label maps checked against the direct call, then the same closed-loop sweep as ours
(HTTP, the label-map PNG as the body), with CPU by process (the peer's tree gets its own roles)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests import closed_loop, labelmaps, proc_cpu
from loadtests.common import log
from loadtests.images import TestImage
from loadtests.peers import PEER_LABELS
from loadtests.peers.launch import PeerProcess


def run_peer(args, peer: str, model: str, paths: tuple[Path, Path], images, reference) -> dict[str, Any]:
    """One peer on one model: start, check its label maps, sweep the concurrency levels, stop."""
    repository, logs = paths
    log(f"  starting {PEER_LABELS[peer]} for {model} ...")
    options = args.peer_args.get(peer, ())
    with PeerProcess(peer, repository, model, logs / f"peer-{peer}-{model}.log", options) as process:
        log(f"  {PEER_LABELS[peer]} ready after {process.startup_s:.1f} s")
        maps = labelmaps.check(process.url, model, images, reference)
        if maps["mismatches"]:
            log(f"  LABEL MAPS DIFFER ({PEER_LABELS[peer]}, {model}): {maps['mismatches'][:3]}")
        roles = proc_cpu.Roles(peers={process.pid: PEER_LABELS[peer]}, outside_by_name=False)
        points = closed_loop.measure(
            [closed_loop.PointSpec("http", model, c) for c in args.concurrency],
            images,
            url=process.url,
            roles=roles,
            **sweep_settings(args),
            log=log,
        )
    return {
        "peer": peer,
        "model": model,
        "startup_s": process.startup_s,
        "label_maps": maps,
        "points": points,
    }


def sweep_settings(args) -> dict[str, Any]:
    """The closed-loop settings every system gets (``LoadConfig`` fields)."""
    return {
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "timeout_s": args.timeout_s,
        "seed": args.seed,
        "verify_png": args.verify_png,
    }


def run_peers(
    args, repository: Path, models: Sequence[str], images: Sequence[TestImage], references: dict, logs: Path
) -> list[dict[str, Any]]:
    """Every peer on every model; a peer that does not start is recorded as failed, the rest go on."""
    runs = []
    for model in models:
        for peer in args.peers:
            try:
                runs.append(run_peer(args, peer, model, (repository, logs), images, references[model]))
            except RuntimeError as e:
                log(f"  {PEER_LABELS[peer]} on {model} failed: {e}")
                runs.append({"peer": peer, "model": model, "error": str(e)[-2000:], "points": []})
    return runs
