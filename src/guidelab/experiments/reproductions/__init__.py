"""Named reproductions of the seed papers' claims, each ``run(size, out_dir) -> dict``.

``size`` is ``"ci"`` (seconds, asserted by the tests) or ``"paper"`` (minutes). A run writes ``<out_dir>/<name>.json``
(atomically: the settings, the numbers, a ``claims`` dict of {claim: bool} and ``notes`` on what did not reproduce)
and its figures as PNG, and returns the JSON's content. Same seed, same numbers (the wall time aside).

=============================  ========================================================  ===================
name                           claim                                                     source
=============================  ========================================================  ===================
``chidambaram-edge``           samples pile up at the far edge α2 as γ grows; the time   arXiv 2409.13074
                               grid decides how many stay in the support
``chidambaram-score-error``    a score error plus large γ puts samples off the support   arXiv 2409.13074
``stagewise``                  early strong guidance kills weak modes, late strong       arXiv 2509.22007
                               guidance kills within-mode variance; TV-CFG vs constant
``variance-shrinkage``         γ ≥ 1 shrinks within-class variance; a negative window    arXiv 2602.00716
                               restores it
``conservation``               divergence of the guidance field as t → 0; AdaMaG vs CFG  arXiv 2605.20079
``adg-norm``                   ‖x0̂‖ grows with γ under CFG, stays bounded under ADG       arXiv 2506.11039
``learned-guidance``           learned guidance weights vs constant and interval          arXiv 2510.00815
``conservation-images``        AdaMaG vs CFG at matched accuracy on digits/MNIST;       arXiv 2605.20079
                               |∇·g| as t → 0 on data on manifolds (planes, boxes, images)
``variance-shrinkage-images``  the negative window restores within-class feature          arXiv 2602.00716
                               variance at matched accuracy
``learned-guidance-images``    learned ω on an image model vs constant and interval       arXiv 2510.00815
``chidambaram-mnist``          on a 0-vs-rest image model samples move past class 0 as   arXiv 2409.13074
                               γ grows; the monotone-trajectory rule picks γ near the
                               best quality
``stagewise-images``           stage-wise claims on the digits model: style clusters,    arXiv 2509.22007
                               within-cluster variation, TV-CFG vs constant
``adg-images``                 ADG keeps accuracy at high γ with less x0̂ norm growth     arXiv 2506.11039
                               and saturation than CFG (digits model)
``tilted-target``              CFG (ODE or SDE) misses p(x|c)^γ p(x)^(1−γ); FKC on the    arXiv 2409.13074,
                               SDE reaches it at the same NFE                             2503.02819
=============================  ========================================================  ===================

Modules are imported on first use, so listing the registry is cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guidelab.validation import did_you_mean

__all__ = ["CLAIMS", "REPRODUCTIONS", "SIZES", "Reproduction", "run_reproduction"]

Reproduction = Callable[[str, Path], dict[str, Any]]
SIZES: tuple[str, ...] = ("ci", "paper")

_TABLE: dict[str, tuple[str, str, str]] = {  # name -> (module, the claim reproduced, its source)
    "chidambaram-edge": (
        "chidambaram_edge",
        "samples pile up at the far edge as γ grows; the grid decides how many stay",
        "arXiv 2409.13074",
    ),
    "chidambaram-score-error": (
        "score_error",
        "a score error plus large γ puts samples off the support",
        "arXiv 2409.13074",
    ),
    "stagewise": (
        "stagewise",
        "early strong guidance kills weak modes, late kills within-mode variance",
        "arXiv 2509.22007",
    ),
    "variance-shrinkage": (
        "variance_shrinkage",
        "γ ≥ 1 shrinks within-class variance; a negative window restores it",
        "arXiv 2602.00716",
    ),
    "conservation": (
        "conservation",
        "the guidance field's divergence grows as t → 0; AdaMaG vs CFG",
        "arXiv 2605.20079",
    ),
    "adg-norm": ("adg_norm", "‖x0̂‖ grows with γ under CFG, stays bounded under ADG", "arXiv 2506.11039"),
    "learned-guidance": (
        "learned_guidance",
        "learned guidance weights vs constant and interval guidance",
        "arXiv 2510.00815",
    ),
    "conservation-images": (
        "conservation_images",
        "AdaMaG vs CFG at matched accuracy on images; |∇·g| as t → 0 where data lie on manifolds",
        "arXiv 2605.20079",
    ),
    "variance-shrinkage-images": (
        "variance_shrinkage_images",
        "a negative-guidance window restores the within-class feature variance at matched accuracy",
        "arXiv 2602.00716",
    ),
    "learned-guidance-images": (
        "learned_guidance_images",
        "learned ω(c, s, t) on an image model vs the best constant γ and interval, FD at matched accuracy",
        "arXiv 2510.00815",
    ),
    "chidambaram-mnist": (
        "chidambaram_mnist",
        "on a 0-vs-rest image model samples move past the positive class as γ grows; the largest γ with a monotone "
        "mean projected x0̂ trajectory is near the best quality",
        "arXiv 2409.13074",
    ),
    "stagewise-images": (
        "stagewise_images",
        "on the digits model, early strong guidance loses style clusters, late strong loses within-cluster "
        "variation; TV-CFG vs constant at equal accuracy",
        "arXiv 2509.22007",
    ),
    "adg-images": (
        "adg_images",
        "on the digits model ADG keeps accuracy at high γ with less x0̂ norm growth and saturation than CFG",
        "arXiv 2506.11039",
    ),
    "tilted-target": (
        "tilted_target",
        "CFG (ODE or SDE) misses the tilted target p(x|c)^γ p(x)^(1−γ); FKC on the SDE reaches it",
        "arXiv 2409.13074, 2503.02819",
    ),
}


def _lazy(name: str, module: str, function: str) -> Reproduction:
    def run(size: str = "ci", out_dir: str | Path = name) -> dict[str, Any]:
        return getattr(importlib.import_module(module), function)(size, out_dir)

    run.__name__ = function.replace("-", "_")
    run.__qualname__ = run.__name__
    run.__doc__ = f"Reproduction {name!r}: ``{module}.{function}(size, out_dir)``, imported on first call."
    return run


REPRODUCTIONS: dict[str, Reproduction] = {
    name: _lazy(name, f"guidelab.experiments.reproductions.{module}", module) for name, (module, _, _) in _TABLE.items()
}
CLAIMS: dict[str, tuple[str, str]] = {name: (claim, source) for name, (_, claim, source) in _TABLE.items()}


def run_reproduction(name: str, size: str = "ci", out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run reproduction ``name`` at ``size`` into ``out_dir`` (default: a folder named after it); errors name the
    accepted values."""
    if name not in REPRODUCTIONS:
        raise ValueError(f"reproduction: unknown name {name!r}{did_you_mean(name, REPRODUCTIONS)}")
    if size not in SIZES:
        raise ValueError(f"size: unknown size {size!r}{did_you_mean(size, SIZES)}")
    return REPRODUCTIONS[name](size, Path(out_dir if out_dir is not None else name))
