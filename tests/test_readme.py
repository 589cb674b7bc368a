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


def test_the_own_guider_example_registers_builds_and_samples():
    from guidelab.grids import make_grid
    from guidelab.guiders import GUIDERS, build_guider
    from guidelab.paths import get_path
    from guidelab.sampling import sample
    from guidelab.targets import get_target

    block = re.search(r"### Your own guider\n.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README lost its guider example"
    try:
        exec(compile(block.group(1), "README.md", "exec"), {})
        guider = build_guider("halfway-cfg", schedule="tv-cfg", scale=3.0)
        target, path = get_target("multimodal-2d"), get_path("ve")
        grid = make_grid("edm", 12, path)
        for solver in ("heun", "dpm++2m", "euler-ancestral"):
            out = sample(target.denoiser(path), guider, grid=grid, n=64, shape=(2,), cond=0, solver=solver)
            assert torch.isfinite(out.x).all() and out.num_diverged == 0
        assert build_guider(**guider.config()).config() == guider.config()
    finally:
        GUIDERS.pop("halfway-cfg", None)
