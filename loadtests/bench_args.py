"""The benchmark's command line (``python loadtests/bench.py --help``) and which models it runs."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

from loadtests.closed_loop import PROTOCOLS
from loadtests.common import DEFAULT_REPOSITORY, RESULTS_DIR, TMP_DIR, parse_int_list, split_list
from loadtests.peers import PEER_APPS
from loadtests.repository import NULL_MODEL

FULL = {
    "concurrency": "1,4,16,64",
    "duration_s": 20.0,
    "warmup_s": 5.0,
    "raw_duration_s": 5.0,
    "raw_batch_sizes": "",  # powers of two up to each model's max_batch_size, and the max
    "raw_layouts": "",  # default_layouts(cpus, replica threads)
    "metrics_settle_s": 15.0,
    "large_image": 4096,
}
QUICK = {
    "concurrency": "1,4",
    "duration_s": 2.0,
    "warmup_s": 0.5,
    "raw_duration_s": 0.3,
    "raw_batch_sizes": "1,2",
    "raw_layouts": "",  # only the replicas' own layout in quick mode
    "metrics_settle_s": 0.0,
    "large_image": 2048,  # the shipped tiled models tile from 2048 px
}


def _add_phase_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per phase")
    p.add_argument("--models", default="", help="comma-separated models (default: every servable one)")
    p.add_argument("--no-null", action="store_true", help="leave out the null model")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="http (PNG body), http-json, grpc")
    p.add_argument("--concurrency", default=None, help="closed-loop concurrency levels (1,4,16,64)")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per served point (20)")
    p.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds before each point (5)")
    p.add_argument("--raw-duration-s", type=float, default=None, help="seconds per raw batch size (5)")
    p.add_argument("--raw-batch-sizes", default=None, help="e.g. 1,2,4,8 or 1-8 (default 1,2,4,..,max)")
    p.add_argument("--raw-layouts", default=None, help="processes x threads, e.g. 1x2,2x1 (default: auto)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw measurement")
    p.add_argument("--no-served", action="store_true", help="skip the measurement of our service")
    p.add_argument("--peers", default=",".join(PEER_APPS), help="peer stacks: litserve,fastapi,rayserve")
    p.add_argument("--no-peers", action="store_true", help="skip the peers phase")
    p.add_argument("--peer-models", default="", help="models the peers serve (default: semantic + null)")
    p.add_argument(
        "--peer-args",
        action="append",
        default=[],
        metavar="PEER=ARGS",
        help="more options for a peer app, e.g. 'litserve=--batch-timeout-s 0.01 --fast-queue' (repeatable)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=256, help="side of the square test images")
    p.add_argument("--images", type=int, default=8, help="synthetic images (plus 3 real photographs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    p.add_argument("--verify-png", action="store_true", help="decode every mask PNG (client CPU)")
    p.add_argument("--metrics-settle-s", type=float, default=None, help="wait before the last scrape (15)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--num-cpus", type=float, default=None, help="Ray's logical CPUs (default: enough)")
    p.add_argument("--topology", choices=("auto", "fused", "split"), default=None, help="app arg topology")
    p.add_argument(
        "--gpus-per-replica", type=float, default=None, help="num_gpus of each model's replicas (GPU runs)"
    )
    p.add_argument(
        "--large-image", type=int, default=None, help="side of the large-image point (4096; 0: none)"
    )
    p.add_argument("--large-model", default=None, help="the tiled model of that point (default: the first)")
    p.add_argument("--url", default=None, help="measure a running service at this HTTP URL instead")
    p.add_argument("--grpc-target", default=None, help="... and this gRPC target")
    p.add_argument("--metrics-url", default=None, help="... and this metrics endpoint")
    p.add_argument("--out-dir", type=Path, default=None, help="default loadtests/results (quick: .../tmp)")
    p.add_argument("--label", default=None, help="machine name in the file name (default: host name)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary model repository")


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_phase_options(p)
    _add_run_options(p)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.concurrency = parse_int_list(args.concurrency)
    args.protocols = split_list(args.protocols)
    if not args.protocols or set(args.protocols) - set(PROTOCOLS):
        p.error(f"--protocols: some of {', '.join(PROTOCOLS)}")
    args.peers = [] if args.no_peers else split_list(args.peers)
    if set(args.peers) - set(PEER_APPS):
        p.error(f"--peers: some of {', '.join(PEER_APPS)}")
    args.peer_args = _peer_args(p, args.peer_args)
    if args.url is None and args.grpc_target is not None:
        p.error("--grpc-target needs --url (a running service)")
    if args.out_dir is None:
        args.out_dir = TMP_DIR if args.quick else RESULTS_DIR
    return args


def _peer_args(p: argparse.ArgumentParser, values: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for value in values:
        peer, sep, options = value.partition("=")
        if not sep or peer.strip() not in PEER_APPS:
            p.error(f"--peer-args: PEER=ARGS with PEER one of {', '.join(PEER_APPS)}, got {value!r}")
        out[peer.strip()] = out.get(peer.strip(), ()) + tuple(shlex.split(options))
    return out


@dataclass
class Plan:
    """The models of a run: ``models`` of the repository (or the running service), those skipped and
    why, and whether the null model is added."""

    models: list[str]
    skipped: dict[str, str]
    with_null: bool


def plan_models(args: argparse.Namespace, available: list[str], skipped: dict[str, str]) -> Plan:
    """``available``: servable models (of the repository, or of the running service with ``--url``)."""
    from loadtests.common import select_models

    requested = split_list(args.models)
    with_null = not args.no_null or (NULL_MODEL in requested and not args.url)
    if requested == [NULL_MODEL] and not args.url:  # "--models null": the null model alone
        return Plan([], {}, True)
    if not args.url:
        requested = [m for m in requested if m != NULL_MODEL]
    models, skipped = select_models(requested, available, skipped)
    if args.quick and not requested:
        models = models[:1]
    return Plan(models, skipped, with_null and not args.url)
