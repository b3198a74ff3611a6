"""``segserve models check``: load each repository entry exactly as a replica would, and try it.

For each entry: the weights path (inside the repository), the runner that a replica builds
(``build_runner``: weights read, architecture built or artefact audited, warm-up forward), one timed
forward at the declared input size whose scores must have one channel per class at the input's
size, and one image through the whole replica path (``Runner.run``: batch, forward, label map at
the original size). A problem raises ``ModelCheckError`` naming the file, the model and the key.
``check_repository`` is what ``segserve serve`` calls before it starts Ray.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from service.config import ConfigError, ModelSpec, Repository, file_digest, load_repository
from service.imaging.geometry import fit_to_policy
from service.models.inference import Runner, configure_threads
from service.models.registry import EntryError
from service.types import PreparedImage, SegmentOptions


class ModelCheckError(ValueError):
    """An entry that a replica could not serve: ``<file>: model '<name>': <key>: <what is wrong>``."""

    def __init__(self, source: str, model: str, key: str, message: str) -> None:
        super().__init__(f"{source}: model {model!r}: {key}: {message}")
        self.source, self.model, self.key = source, model, key

    def __reduce__(self):
        return (type(self), (self.source, self.model, self.key, str(self).split(": ", 3)[-1]))


@dataclass(frozen=True)
class CheckReport:
    name: str
    format: str
    architecture: str
    device: str
    parameters: int | None
    """None for ONNX models (their initializers live inside the runtime's session)."""
    weights_digest: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    forward_ms: float

    def line(self) -> str:
        params = "-" if self.parameters is None else f"{self.parameters / 1e6:.2f} M"
        return (
            f"{self.name}: ok  {self.format} {self.architecture}  params {params}"
            f"  weights {self.weights_digest}"
            f"  input {list(self.input_shape)} -> scores {list(self.output_shape)}"
            f"  forward {self.forward_ms:.1f} ms ({self.device})"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def declared_input(spec: ModelSpec) -> torch.Tensor:
    """The zero image at the declared input size, padded to the divisor (what warm-up runs)."""
    d = spec.input.size_divisor
    side = -(-spec.input.size // d) * d
    return torch.zeros((1, 3, side, side))


def check_entry(
    repository: Repository, spec: ModelSpec, source: str, device: str | None = None
) -> CheckReport:
    """Load and try one entry; ``device`` overrides the entry's (``cpu`` for a machine without GPU)."""
    from service.models.runners import build_runner  # imports the runner modules only when checking

    def fail(key: str, message: str) -> ModelCheckError:
        return ModelCheckError(source, spec.name, key, message)

    try:
        weights = repository.weights_path(spec) if spec.weights else None
    except ConfigError as e:
        raise fail("weights", str(e)) from None
    if weights is not None and not weights.is_file():
        raise fail("weights", f"{weights}: weights file not found")
    if device is not None:
        spec = spec.model_copy(update={"deployment": spec.deployment.model_copy(update={"device": device})})
    configure_threads(spec.deployment.threads)
    try:
        runner = build_runner(spec, weights)
        runner.warm_up()
    except EntryError as e:
        raise fail(e.key, str(e)) from None
    except Exception as e:  # the network itself failed on the declared input (e.g. a size it cannot take)
        raise fail("input", f"the network fails on the declared input: {type(e).__name__}: {e}") from None
    x = declared_input(spec).to(runner.device)
    started = time.perf_counter()
    try:
        scores = runner.forward(x)
    except EntryError as e:
        raise fail(e.key, str(e)) from None
    runner._sync()
    forward_ms = (time.perf_counter() - started) * 1000
    semantic = scores["semantic"] if isinstance(scores, dict) else scores
    _check_scores(spec, x, semantic, fail)
    _check_run(spec, runner, fail)
    params = None if spec.format == "onnx" else sum(p.numel() for p in runner.model.parameters())
    return CheckReport(
        name=spec.name,
        format=spec.format,
        architecture=spec.architecture or "(in the file)",
        device=str(runner.device),
        parameters=params,
        weights_digest=file_digest(weights) if weights else "-",
        input_shape=tuple(x.shape),
        output_shape=tuple(semantic.shape),
        forward_ms=forward_ms,
    )


def _check_scores(spec: ModelSpec, x: torch.Tensor, scores: torch.Tensor, fail) -> None:
    channels = scores.shape[1]
    if channels != spec.num_classes:
        raise fail(
            "classes",
            f"the network gives {channels} score channels, the entry lists {spec.num_classes} classes "
            "(weights trained for another class count, or a missing class in the list?)",
        )
    if tuple(scores.shape[2:]) != tuple(x.shape[2:]):
        raise fail(
            "output",
            f"scores are {tuple(scores.shape[2:])} for a {tuple(x.shape[2:])} input; the runner needs them "
            "at the input's size (export the model with its final upsampling)",
        )
    if spec.output.kind == "probabilities":
        total = scores.float().sum(1)
        if not torch.allclose(total, torch.ones_like(total), atol=1e-2):
            raise fail("output.kind", "declared probabilities, but the channels do not sum to 1")


def _check_run(spec: ModelSpec, runner: Runner, fail) -> None:
    """One odd-sized image through the replica's batch path: a label map at the original size."""
    image = np.random.default_rng(0).integers(
        0, 256, (spec.input.size // 2 + 3, spec.input.size + 5, 3), np.uint8
    )
    pixels, geometry = fit_to_policy(image, spec.input)
    item = PreparedImage(pixels=pixels, geometry=geometry, options=SegmentOptions(model=spec.name))
    try:
        (result,) = runner.run([item], [time.perf_counter()])
    except EntryError as e:
        raise fail(e.key, str(e)) from None
    if result.labels.shape != image.shape[:2] or int(result.labels.max()) >= spec.num_classes:
        raise fail("output", f"the label map is {result.labels.shape}, labels up to {result.labels.max()}")


def check_repository(
    path: str | Path, names: list[str] | None = None, device: str | None = None
) -> list[CheckReport]:
    """Check every entry (or ``names``) of the repository file; the first problem raises."""
    try:
        repository = load_repository(path)
    except ConfigError as e:
        raise ModelCheckError(str(path), "*", "repository", str(e)) from None
    wanted = names or repository.names()
    unknown = [n for n in wanted if repository.get(n) is None]
    if unknown:
        raise ModelCheckError(str(path), unknown[0], "name", f"not in the repository ({repository.names()})")
    return [check_entry(repository, repository.get(n), str(path), device) for n in wanted]
