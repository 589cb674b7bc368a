"""``guidelab tune``: search a guider's parameters for the best value of a metric (or the best trade-off of two),
with Optuna, resumably, on common random numbers, then re-score the chosen setting on held-out seeds.

``config`` (the tune file), ``objective`` (a trial's rows → its values and constraints; best settings and Pareto
fronts), ``search`` (the next setting to try: Optuna's samplers and a coordinate search, each a function of the
finished trials), ``runner`` (the loop: trials into the study and the results store, the held-out re-scoring,
``best.yaml`` and ``summary.json``).
"""

from guidelab.tune.config import TuneConfig, TunePlan, check_tune, load_tune

__all__ = ["TuneConfig", "TunePlan", "check_tune", "load_tune"]
