"""Metrics: distances between sample sets and statistics against exact targets (vectorized, seeded, offline).

- :mod:`~guidelab.metrics.distances`: energy distance, MMD², W2 (1D exact, POT exact, sliced), Gaussian W2.
- :mod:`~guidelab.metrics.pairwise`: exact sums of pairwise distances (the energy distance's core), a cached
  self-term.
- :mod:`~guidelab.metrics.density`: KL and TV against an exact density on a grid, NLL.
- :mod:`~guidelab.metrics.classes`: class fidelity, mode weights and coverage, within-mode variance.
- :mod:`~guidelab.metrics.support`: in-support fraction, distance to support, edge concentration.
- :mod:`~guidelab.metrics.knn`: k-NN precision, recall, density, coverage.
- :mod:`~guidelab.metrics.diversity`: Vendi score.
- :mod:`~guidelab.metrics.tilted`: the tilted target ``p(x | c)^γ p(x)^{1−γ}``.
"""

from guidelab.metrics.classes import (
    ClassFidelity,
    ModeVariance,
    ModeWeights,
    assign_components,
    class_fidelity,
    component_covariances,
    component_log_responsibilities,
    mode_weights,
    within_mode_variance,
)
from guidelab.metrics.density import (
    CellGrid,
    GridDivergence,
    Likelihood,
    cell_masses,
    grid_divergences,
    histogram,
    negative_log_likelihood,
    target_log_density,
)
from guidelab.metrics.distances import (
    energy_distance,
    gaussian_w2,
    median_heuristic_bandwidth,
    mmd2,
    w2_1d,
    w2_exact,
    w2_sliced,
    wasserstein2,
)
from guidelab.metrics.diversity import vendi_score
from guidelab.metrics.knn import PRDC, knn_radii, prdc
from guidelab.metrics.support import (
    EdgeConcentration,
    SupportDistance,
    class_far_edge,
    distance_to_far_edge,
    distance_to_support,
    edge_concentration,
    in_support_fraction,
)
from guidelab.metrics.tilted import TiltedTarget

__all__ = [
    "PRDC",
    "CellGrid",
    "ClassFidelity",
    "EdgeConcentration",
    "GridDivergence",
    "Likelihood",
    "ModeVariance",
    "ModeWeights",
    "SupportDistance",
    "TiltedTarget",
    "assign_components",
    "cell_masses",
    "class_far_edge",
    "class_fidelity",
    "component_covariances",
    "component_log_responsibilities",
    "distance_to_far_edge",
    "distance_to_support",
    "edge_concentration",
    "energy_distance",
    "gaussian_w2",
    "grid_divergences",
    "histogram",
    "in_support_fraction",
    "knn_radii",
    "median_heuristic_bandwidth",
    "mmd2",
    "mode_weights",
    "negative_log_likelihood",
    "prdc",
    "target_log_density",
    "vendi_score",
    "w2_1d",
    "w2_exact",
    "w2_sliced",
    "wasserstein2",
    "within_mode_variance",
]
