"""``make gpu-check``: on a machine with CUDA, the GPU tests and a short benchmark, results in one file.

    python loadtests/gpu_check.py [--budget-s 480] [--out-dir loadtests/results]

1. The machine: GPU name, driver and memory (nvidia-smi), torch and CUDA versions.
2. ``pytest -m gpu tests/gpu``: reduced-precision label maps against fp32 (>= 99.5 % of pixels), the
   GPU against the CPU, channels_last weights and the pinned host copy, panoptic post-processing on
   the device, the device-memory gauges, CUDA-synchronized stage timings.
3. A short ``loadtests/bench.py`` run in the split topology (the GPU layout: codec deployment on the
   CPU, segmenters sharing the GPU), with whatever time the budget has left.
4. Writes ``<out-dir>/<date>-gpu-check.md`` (and the bench's own report files beside it).

Without CUDA it writes nothing and exits 2, saying so: nothing here is meaningful on a CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def run(command: list[str], timeout_s: float) -> tuple[int, str, float]:
    """(exit code, combined output, seconds); a timeout is exit code 124."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout_s, 1), check=False
        )
        output = done.stdout + done.stderr
        code = done.returncode
    except subprocess.TimeoutExpired as e:
        output = (
            (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        )
        code = 124
    return code, output, time.monotonic() - started


def machine() -> list[str]:
    import torch

    lines = [
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- device 0: {torch.cuda.get_device_name(0)}, "
        f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB",
    ]
    code, out, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"], 30)
    if code == 0:
        lines.append("- nvidia-smi: " + " | ".join(out.strip().splitlines()[1:]))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=480, help="whole run, tests and bench (8 minutes)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "loadtests" / "results")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a machine with a GPU", file=sys.stderr)
        return 2
    started = time.monotonic()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = [f"# GPU check, {datetime.now():%Y-%m-%d %H:%M}", "", "## Machine", "", *machine(), ""]

    code, out, seconds = run([PYTHON, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rA", "-s"], 240)
    print(out)
    report += [f"## GPU tests (exit {code}, {seconds:.0f} s)", "", "```", *_tail(out, 60), "```", ""]

    left = args.budget_s - (time.monotonic() - started) - 30
    bench = [
        PYTHON,
        "loadtests/bench.py",
        "--topology",
        "split",
        "--gpus-per-replica",
        "0.25",
        "--concurrency",
        "1,16,64",
        "--duration-s",
        "8",
        "--warmup-s",
        "3",
        "--raw-duration-s",
        "2",
        "--metrics-settle-s",
        "0",
        "--label",
        "gpu",
        "--out-dir",
        str(args.out_dir),
    ]
    code_b, out_b, seconds_b = run(bench, left)
    print(out_b)
    report += [
        f"## Benchmark, split topology (exit {code_b}, {seconds_b:.0f} s)",
        "",
        "```",
        *_tail(out_b, 80),
    ]
    report += ["```", "", f"Command: `{' '.join(bench[1:])}`", ""]
    path = args.out_dir / f"{datetime.now():%Y-%m-%d}-gpu-check.md"
    path.write_text("\n".join(report))
    print(f"written: {path}")
    return code or code_b


def _tail(text: str, lines: int) -> list[str]:
    return text.strip().splitlines()[-lines:]


if __name__ == "__main__":
    sys.exit(main())
