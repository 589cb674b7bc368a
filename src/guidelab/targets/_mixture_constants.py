"""Constants shared by :mod:`guidelab.targets.mixture_jit` and its compiled loops
(:mod:`guidelab.targets._mixture_kernels`), which import numba and so are imported only when first used."""

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
_H_SERIES = 0.02  # as box_mixture: the Hermite series where h < 0.02 and |m|·h < 0.02
_Y_TAIL = 26.0  # erfcx by the table below, by the asymptotic series above
_WIDTH = 0.25  # the table's intervals
_DEGREE = 10
_FAR_NEGLIGIBLE = 50.0  # e^{−4|m'|h'} below e^{−50}: the far end's term is dropped
_ERFC_NEGLIGIBLE = 6.5  # erfc(6.5) ≈ 4e-20: inside a box, an end this far out adds nothing to 2 − erfc − erfc
_VELTKAMP = 134217729.0

# Modes of the kernels: per-component log p_t (n, K), log p_t(x | c) only (n, 1), or both and the mean.
COMPONENTS, LOG_PROB, MEAN = 0, 1, 2
