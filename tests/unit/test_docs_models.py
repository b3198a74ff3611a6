"""docs/models.md's worked example runs as written: from a notebook's model to entries that pass the check.

The section "From a notebook to an endpoint" is executed block by block in an empty folder: the
Python blocks in order in one interpreter, the YAML block written to the file its first line names,
then its ``segserve models check`` command (as ``python -m service.cli``), which must pass for all
four entries (smp, torchvision, torch.export, ONNX).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DOC = ROOT / "docs" / "models.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def example_blocks() -> list[tuple[str, str]]:
    text = DOC.read_text()
    start = text.index("## From a notebook to an endpoint")
    end = text.index("\n## ", start)
    return BLOCK.findall(text[start:end])


def test_the_example_has_every_kind_of_block():
    kinds = [kind for kind, _ in example_blocks()]
    assert kinds.count("python") >= 3 and kinds.count("yaml") == 1 and kinds.count("bash") == 1


@pytest.mark.slow
def test_worked_example_runs_and_passes_the_check(tmp_path):
    blocks = example_blocks()
    script = "\n\n".join(code for kind, code in blocks if kind == "python")
    run = subprocess.run(
        [sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + script],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (yaml_block,) = [code for kind, code in blocks if kind == "yaml"]
    target = yaml_block.splitlines()[0].removeprefix("# ").strip()
    (tmp_path / target).write_text(yaml_block)
    (bash_block,) = [code for kind, code in blocks if kind == "bash"]
    command = bash_block.strip().split()
    assert command[:3] == ["segserve", "models", "check"]
    check = subprocess.run(
        [sys.executable, "-m", "service.cli", *command[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    lines = check.stdout.strip().splitlines()
    for name in ("shapes-unet", "shapes-lraspp", "shapes-unet-export", "shapes-lraspp-onnx"):
        assert any(line.startswith(f"{name}: ok") for line in lines), check.stdout
