"""``segserve``: the command-line entry point (train, evaluate, serve, and client commands)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_REPOSITORY = "models/repository.yaml"


def _train(args: argparse.Namespace) -> int:
    from service.config import load_repository
    from service.training.semantic import TrainConfig, train

    repo = load_repository(args.repository)
    spec = repo.get(args.model)
    if spec is None:
        print(f"unknown model {args.model!r}; known: {', '.join(repo.names())}", file=sys.stderr)
        return 2
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, threads=args.threads)
    weights = repo.weights_path(spec)
    report = train(spec, weights, Path(args.checkpoints) / spec.name, config)
    print(json.dumps({"model": spec.name, "weights": str(weights), "validation": report.as_dict()}, indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from service.config import load_repository
    from service.models.registry import load_model
    from service.training.semantic import evaluate, held_out_seeds

    repo = load_repository(args.repository)
    spec = repo.get(args.model)
    if spec is None:
        print(f"unknown model {args.model!r}; known: {', '.join(repo.names())}", file=sys.stderr)
        return 2
    model = load_model(spec, repo.weights_path(spec))
    report = evaluate(model, spec, held_out_seeds(args.images), progress=True)
    print(json.dumps({"model": spec.name, "held_out": report.as_dict()}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a demo model on synthetic shapes (CPU)")
    p.add_argument("--model", required=True)
    p.add_argument("--repository", default=DEFAULT_REPOSITORY)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--checkpoints", default="checkpoints", help="resumable checkpoints go here")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="mIoU and per-class IoU on the seeded held-out set")
    p.add_argument("--model", required=True)
    p.add_argument("--repository", default=DEFAULT_REPOSITORY)
    p.add_argument("--images", type=int, default=200)
    p.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
