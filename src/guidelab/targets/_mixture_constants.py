"""Constants shared by the mixture targets' torch paths (:mod:`guidelab.targets.box_mixture`,
:mod:`guidelab.targets.gaussian_mixture`), :mod:`guidelab.targets.mixture_jit` and its compiled loops
(:mod:`guidelab.targets._mixture_kernels`, which import numba and so are imported only when first used): one source,
so that the paths switch regimes at the same points."""

from __future__ import annotations

import math

PRUNE = 50.0  # a box component whose log-weight bound is this far below the best is skipped (e^{−50} ≈ 2e-22)

_LOG_2PI = math.log(2 * math.pi)
_HALF_LOG_2PI = 0.5 * _LOG_2PI
_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_PI = 1 / math.sqrt(math.pi)
# Box series region: h < _H_SERIES and |m|·h < _H_SERIES. There the omitted Hermite terms are below 1e-14.
_H_SERIES = 0.02
# Below it erfc(y) is a normal double and e^{y²}·erfc(y) keeps its digits (the compiled loop: erfcx by its table);
# above it the asymptotic series. float32 (only on MPS, which has no float64) switches at 9 on the torch path, where
# erfc is still normal and the series is exact to 1e-9.
_Y_TAIL = 26.0
_WIDTH = 0.25  # the table's intervals
_DEGREE = 10
_FAR_NEGLIGIBLE = 50.0  # e^{−4|m'|h'} below e^{−50}: the far end's term is dropped
_ERFC_NEGLIGIBLE = 6.5  # erfc(6.5) ≈ 4e-20: inside a box, an end this far out adds nothing to 2 − erfc − erfc
_VELTKAMP = 134217729.0

# Modes of the kernels: per-component log p_t (n, K), log p_t(x | c) only (n, 1), or both and the mean.
COMPONENTS, LOG_PROB, MEAN = 0, 1, 2
