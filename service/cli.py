"""``segserve``: the service's command line (serve, train, evaluate).

The client commands (``segment``, ``models``, ``stream``) are ``segserve-client``, in the client
distribution (clients/python).
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_REPOSITORY = "models/repository.yaml"


def _trainer(args: argparse.Namespace):
    """(repository, spec, trainer module) of ``--model``, or None after printing why it cannot be
    trained or evaluated here: the one place ``train`` and ``evaluate`` look a model up."""
    from service.config import load_repository

    repo = load_repository(args.repository)
    spec = repo.get(args.model)
    if spec is None:
        print(f"unknown model {args.model!r}; known: {', '.join(repo.names())}", file=sys.stderr)
        return None
    if spec.task == "instance":
        print(
            f"{spec.name} is an instance model: train and evaluate it with torchvision, then serve its "
            "state dict as safetensors (docs/instance.md)",
            file=sys.stderr,
        )
        return None
    if spec.format != "pytorch":
        print(f"{spec.name} is an exported artefact ({spec.format}): train its source model", file=sys.stderr)
        return None
    if spec.task == "panoptic":
        from service.training import panoptic as trainer
    else:
        from service.training import semantic as trainer
    return repo, spec, trainer


def _train(args: argparse.Namespace) -> int:
    from service.training.loop import train_command

    found = _trainer(args)
    return 2 if found is None else train_command(args, *found)


def _evaluate(args: argparse.Namespace) -> int:
    found = _trainer(args)
    if found is None:
        return 2
    repo, spec, trainer = found
    return trainer.evaluate_command(args, repo, spec)


def _models_check(args: argparse.Namespace) -> int:
    """Load and try each entry as a replica would; non-zero naming the file, model and key on a problem."""
    from service.models.check import ModelCheckError, check_repository

    try:
        reports = check_repository(args.repository, [args.name] if args.name else None, args.device)
    except ModelCheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for report in reports:
        print(json.dumps(report.as_dict()) if args.json else report.line())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.lifecycle.supervisor import ServeOptions, serve

    options = ServeOptions(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        drain_timeout_s=args.drain_timeout_s,
        wait_stale_s=args.wait_stale_s,
    )
    # A bad repository entry stops the start before Ray, with the file, model and key named.
    check = argparse.Namespace(repository=DEFAULT_REPOSITORY, name=None, device=None, json=False)
    return serve(options, preflight=lambda: _models_check(check) == 0)


def build_parser() -> argparse.ArgumentParser:
    from service.lifecycle.supervisor import ServeOptions as ServeDefaults

    parser = argparse.ArgumentParser(prog="segserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a demo model on synthetic shapes (CPU)")
    p.add_argument("--model", required=True)
    p.add_argument("--repository", default=DEFAULT_REPOSITORY)
    p.add_argument("--steps", type=int, default=None, help="default: the task's training config")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--init-weights",
        default=None,
        help="start from these weights: a second stage of the same model, or (panoptic) a U-Net trunk",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--checkpoints", default="checkpoints", help="resumable checkpoints go here")
    p.add_argument("--stop-at", type=int, default=None, help="end early at this step (same LR schedule)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="mIoU and per-class IoU on the seeded held-out set")
    p.add_argument("--model", required=True)
    p.add_argument("--repository", default=DEFAULT_REPOSITORY)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="panoptic: keep the COCO panoptic files here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "models", help="the model repository (segserve-client models lists a running service's)"
    )
    check = p.add_subparsers(dest="models_command", required=True).add_parser(
        "check", help="load each repository entry as a replica would and run one forward (no service needed)"
    )
    check.add_argument("name", nargs="?", help="only this model (default: every entry)")
    check.add_argument("--repository", default=DEFAULT_REPOSITORY)
    check.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: each entry's own")
    check.add_argument("--json", action="store_true", help="one JSON object per model")
    check.set_defaults(func=_models_check)

    p = sub.add_parser("serve", help="run the service on a local Ray with the shipped models (CPU)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=9000)
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=ServeDefaults.drain_timeout_s,
        help="on Ctrl-C / SIGTERM, how long requests in flight get to finish (default %(default)s)",
    )
    p.add_argument(
        "--wait-stale-s",
        type=float,
        default=ServeDefaults.wait_stale_s,
        help="wait this long for an earlier segserve that is stopping to free the ports (%(default)s)",
    )
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
