"""Metrics: distances between sample sets and against exact targets."""

from guidelab.metrics.distances import energy_distance

__all__ = ["energy_distance"]
