"""What the load tests and the benchmark share: paths, option parsing, model lists, small helpers.

Nothing here imports gevent, locust or Ray, so the benchmark (asyncio) and the locustfile (gevent)
can both use it. The seeded images are in ``images.py``, the answer checks in ``checks.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "models" / "repository.yaml"
RESULTS_DIR = ROOT / "loadtests" / "results"
TMP_DIR = RESULTS_DIR / "tmp"  # gitignored: smoke runs, locust CSVs, the benchmark's temporary repository

DEFAULT_IMAGE_SIZES = "128x128:3,256x256:3,512x384:2,1024x768:1"
STAGES = ("decode", "preprocess", "queue", "forward", "postprocess", "encode", "total")


def log(message: str) -> None:
    print(message, flush=True)


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: floats to ``digits`` places, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(head: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> list[str]:
    """Markdown table lines: the first ``left`` columns text, the others right-aligned numbers."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


# --- parsing ----------------------------------------------------------------------------------------


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """``"a:3,b,c:0.5"`` -> ``[("a", 3.0), ("b", 1.0), ("c", 0.5)]``; weights must be > 0."""
    out: list[tuple[str, float]] = []
    for part in split_list(text):
        name, sep, weight = part.partition(":")
        value = float(weight) if sep else 1.0
        if value <= 0:
            raise ValueError(f"weight of {name!r} must be > 0, got {weight!r}")
        out.append((name.strip(), value))
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> ``(512, 384)`` as (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not sep:
        raise ValueError(f"image size must be WIDTHxHEIGHT, got {text!r}")
    width, height = int(w), int(h)
    if width < 8 or height < 8:
        raise ValueError(f"image size {text!r} is too small")
    return width, height


def parse_int_list(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; ``"1-4"`` -> ``[1, 2, 3, 4]``."""
    out: list[int] = []
    for part in split_list(text):
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
    if not out or min(out) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return out


def split_list(text: str) -> list[str]:
    """``" a, b,,c "`` -> ``["a", "b", "c"]``."""
    return [p.strip() for p in text.split(",") if p.strip()]


# --- models -----------------------------------------------------------------------------------------


def servable_models(repository_path: str | Path = DEFAULT_REPOSITORY) -> tuple[list[str], dict[str, str]]:
    """Models of the repository that can be loaded (weights present, or the null model), and the
    ones skipped with the reason."""
    from service.config import load_repository

    repository = load_repository(repository_path)
    ok: list[str] = []
    skipped: dict[str, str] = {}
    for spec in repository.models:
        path = repository.weights_path(spec) if spec.weights is not None else None
        if path is None or path.is_file():
            ok.append(spec.name)
        else:
            skipped[spec.name] = f"weights missing: {path}"
    return ok, skipped


def select_models(
    requested: Sequence[str] | None, available: Sequence[str], skipped: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The requested models that are available (all available ones when none are requested).

    Returns the selection and the requested-but-unavailable ones with a reason.
    """
    skipped = dict(skipped or {})
    if not requested:
        return list(available), skipped
    chosen = [m for m in requested if m in available]
    dropped = {m: skipped.get(m, "not served") for m in requested if m not in available}
    return chosen, dropped
