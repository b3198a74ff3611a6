"""The facts of the machine a benchmark ran on, and where its result files go."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtests.common import ROOT


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except Exception:
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict[str, str | None]:
    """The serving stacks in the run (a peer's package may be missing when its phase is skipped)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("torch", "ray", "fastapi", "uvicorn", "litserve"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def machine_meta(label: str | None) -> dict[str, Any]:
    import torch

    host = socket.gethostname()
    versions = _versions()
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "started": datetime.now().isoformat(timespec="seconds"),
        "machine": re.sub(r"[^A-Za-z0-9_.-]+", "-", label or host).strip("-") or "machine",
        "hostname": host,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": versions["ray"],
        "versions": versions,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")),
    }


def result_stem(out_dir: Path, meta: dict[str, Any]) -> Path:
    stem = out_dir / f"{meta['date']}-{meta['machine']}"
    if (out_dir / f"{stem.name}.json").exists():  # never overwrite an earlier run of the same day
        stem = out_dir / f"{stem.name}-{datetime.now():%H%M%S}"
    return stem
