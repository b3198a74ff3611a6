"""``segserve``: the service's command line (serve, train, evaluate).

The client commands (``segment``, ``models``, ``stream``) are ``segserve-client``, in the client
distribution (clients/python).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_REPOSITORY = "models/repository.yaml"


def _model(args: argparse.Namespace):
    """(repository, spec) of ``--model``, or None after printing why it is unknown."""
    from service.config import load_repository

    repo = load_repository(args.repository)
    spec = repo.get(args.model)
    if spec is None:
        print(f"unknown model {args.model!r}; known: {', '.join(repo.names())}", file=sys.stderr)
        return None
    return repo, spec


def _train(args: argparse.Namespace) -> int:
    found = _model(args)
    if found is None:
        return 2
    repo, spec = found
    if spec.task == "instance":
        return _trained_elsewhere(spec.name)
    if spec.task == "panoptic":
        from service.training import panoptic

        return panoptic.train_command(args, repo, spec)
    from service.training.semantic import TrainConfig, train

    if args.init_weights:
        print("--init-weights is for panoptic models (a semantic model trains from scratch)", file=sys.stderr)
        return 2
    config = TrainConfig(
        steps=args.steps or TrainConfig.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads
    )
    weights = repo.weights_path(spec)
    report = train(spec, weights, Path(args.checkpoints) / spec.name, config, stop_at=args.stop_at)
    print(json.dumps({"model": spec.name, "weights": str(weights), "validation": report.as_dict()}, indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    found = _model(args)
    if found is None:
        return 2
    repo, spec = found
    if spec.task == "instance":
        return _trained_elsewhere(spec.name)
    if spec.task == "panoptic":
        from service.training import panoptic

        return panoptic.evaluate_command(args, repo, spec)
    from service.models.registry import load_model
    from service.training.semantic import evaluate, held_out_seeds

    model = load_model(spec, repo.weights_path(spec))
    report = evaluate(model, spec, held_out_seeds(args.images), progress=True)
    print(json.dumps({"model": spec.name, "held_out": report.as_dict()}, indent=1))
    return 0


def _trained_elsewhere(name: str) -> int:
    print(
        f"{name} is an instance model: train and evaluate it with torchvision, then serve its state dict "
        "as safetensors (docs/instance.md)",
        file=sys.stderr,
    )
    return 2


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
    return serve(options)


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
        "--init-weights", default=None, help="panoptic: start from these weights (e.g. a U-Net trunk)"
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
