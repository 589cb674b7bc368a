"""Diagnostics along recorded trajectories.

- :mod:`~guidelab.diagnostics.conservation`: divergence, score-parallel flux and conservation residual of a
  guidance field (arXiv 2605.20079).
- :mod:`~guidelab.diagnostics.stages`: stage probes of arXiv 2509.22007 (distance to the amplified mean, mode
  posterior mass, pairwise contraction).
- :mod:`~guidelab.diagnostics.prescriptions`: largest in-support γ and monotone mean projected trajectory
  (arXiv 2409.13074).
- :mod:`~guidelab.diagnostics.norms`: norm of x0̂ over time.
"""

from guidelab.diagnostics._series import Series
from guidelab.diagnostics.conservation import (
    ConservationTerms,
    ConservationTrajectory,
    Field,
    HutchinsonEstimate,
    conservation_along_trajectory,
    conservation_terms,
    divergence_exact,
    divergence_hutchinson,
    guidance_field,
)
from guidelab.diagnostics.norms import norm_trajectory, per_sample_norms
from guidelab.diagnostics.prescriptions import (
    ProjectedTrajectory,
    ScaleSearch,
    is_monotone,
    largest_scale,
    largest_scale_in_support,
    largest_scale_monotone,
    mean_projected_trajectory,
)
from guidelab.diagnostics.stages import (
    Contraction,
    ModeMass,
    amplified_mean,
    class_mean,
    distance_to_amplified_mean,
    distance_to_center,
    mode_posterior_mass,
    nearest_neighbour_pairs,
    pairwise_contraction,
)

__all__ = [
    "ConservationTerms",
    "ConservationTrajectory",
    "Contraction",
    "Field",
    "HutchinsonEstimate",
    "ModeMass",
    "ProjectedTrajectory",
    "ScaleSearch",
    "Series",
    "amplified_mean",
    "class_mean",
    "conservation_along_trajectory",
    "conservation_terms",
    "distance_to_amplified_mean",
    "distance_to_center",
    "divergence_exact",
    "divergence_hutchinson",
    "guidance_field",
    "is_monotone",
    "largest_scale",
    "largest_scale_in_support",
    "largest_scale_monotone",
    "mean_projected_trajectory",
    "mode_posterior_mass",
    "nearest_neighbour_pairs",
    "norm_trajectory",
    "pairwise_contraction",
    "per_sample_norms",
]
