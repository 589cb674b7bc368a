"""Seeded Gaussian noise whose value for sample k depends only on (seed, k, draw count): not on the batch
size, the batch order, the other samples or the dtype.

Noise is drawn in float32 and cast, so a float32 and a float64 run start from the same numbers (to float32
rounding). Samples are grouped in fixed-size blocks of ``block`` consecutive stream indices; block b has its
own generator seeded from ``(seed, b)``, and each call draws one (block, ...) tensor per block in use. The
block size is fixed by the per-sample size (``max(1, 2^14 // D)``, at most 4096), never by the batch, so for
image batches every sample has its own generator (EDM2's ``StackedRandomGenerator``, Karras et al. 2024,
arXiv 2312.02696, ``generate_images.py``) and for 10⁵ two-dimensional particles a draw costs 25 vectorised
calls. Two samples given the same stream index get the same noise at every draw (common random numbers
for paired comparisons).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["NoiseSource", "block_size"]

_BLOCK_ELEMENTS = 1 << 14  # elements per block draw for small samples
_MAX_BLOCK = 4096


def block_size(per_sample: int) -> int:
    """Samples per generator block for samples of ``per_sample`` elements: ``clamp(2^14 // D, 1, 4096)``."""
    return max(1, min(_MAX_BLOCK, _BLOCK_ELEMENTS // max(1, per_sample)))


def _block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for block ``block`` of stream ``seed`` (numpy's SeedSequence hash of the pair)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(block)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class NoiseSource:
    """Standard normal noise, per sample reproducible: same seed, same numbers for every sample.

    Args:
        seed: the stream's seed (an integer).
        device: where generators live and noise is drawn.
        ids: stream index of each sample (batch,) (default ``arange(batch)``); samples with equal ids receive
            equal noise.

    Calling ``noise(like)`` returns a tensor shaped and typed like ``like`` (batch, ...); the k-th call's
    noise for a sample with id j is the k-th draw of j's row in its block's generator.
    """

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu", ids: Tensor | None = None):
        self.seed = int(seed)
        self.device = torch.device(device)
        self.ids = None if ids is None else torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
        if self.ids is not None and self.ids.numel() and int(self.ids.min()) < 0:
            raise ValueError("ids: stream indices must be ≥ 0")
        self._generators: dict[tuple[int, int], torch.Generator] = {}

    def _generator(self, per_sample: int, block: int) -> torch.Generator:
        key = (per_sample, block)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(_block_seed(self.seed ^ (per_sample << 32), block))
            self._generators[key] = gen
        return gen

    def __call__(self, like: Tensor) -> Tensor:
        batch, shape = like.shape[0], tuple(like.shape[1:])
        per_sample = int(np.prod(shape, dtype=np.int64)) if shape else 1
        ids = torch.arange(batch) if self.ids is None else self.ids
        if ids.numel() != batch:
            raise ValueError(f"ids: {ids.numel()} stream indices for a batch of {batch}")
        size = block_size(per_sample)
        block_of = ids // size
        blocks = torch.unique(block_of)  # sorted
        drawn = torch.cat(
            [
                torch.randn((size, per_sample), generator=self._generator(per_sample, b), device=self.device)
                for b in blocks.tolist()
            ]
        )
        if self.ids is None:  # ids 0..batch−1: blocks 0..B−1 in order, one slice
            out = drawn[:batch]
        else:
            rows = torch.searchsorted(blocks, block_of) * size + ids % size
            out = drawn[rows.to(self.device)]
        return out.reshape(batch, *shape).to(dtype=like.dtype, device=like.device)
