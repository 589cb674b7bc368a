"""The README's Python example runs as written (so the documentation cannot drift from the API)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs_and_guides():
    block = re.search(r"## Python in ten lines\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README lost its Python example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.x.shape == (4000, 2)
    assert out.nfe == 2 * (2 * 64 - 1)  # Heun, cond + uncond in every evaluation
    assert out.num_diverged == 0
    assert torch.isfinite(out.x).all()
