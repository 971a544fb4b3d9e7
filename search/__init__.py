"""Optuna architecture search over E-RADIO.

* :mod:`zoo.search.space`: the search space as data; ``SearchSpace.sample(trial)`` -> ``Candidate``
  (always buildable); the paper's variants are points of it (``config_to_params``).
* :mod:`zoo.search.objective`: one trial = measured throughput (zoo.bench) + proxy-distillation FD loss.
* :mod:`zoo.search.study`: storages (SQLite, PostgreSQL/MySQL, journal file), samplers, the trial
  budget shared by parallel workers, heartbeats, the Pareto-optimal trials.
* :mod:`zoo.search.export`: a trial as a backbone YAML file, and its loader.

The CLI is ``zoo search`` (:mod:`zoo.commands.search_cmd`).
"""

from zoo.search.space import Candidate, Param, SearchSpace, window_choices

__all__ = ["Candidate", "Param", "SearchSpace", "window_choices"]
