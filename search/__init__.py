"""Optuna architecture search over pluggable spaces (E-RADIO by default, ViT-CPE).

* :mod:`zoo.search.space`: the :class:`SearchSpace` protocol, :class:`Param`, :class:`Candidate`,
  the space registry (``make_space("vit-cpe", ...)``); the spaces live in :mod:`zoo.search.spaces`,
  one file each.
* :mod:`zoo.search.objective`: one trial = measured throughput (zoo.bench) + proxy-distillation FD
  loss, written as the run's one record (``summary.json``, kind ``search-trial``).
* :mod:`zoo.search.study`: storages (SQLite, PostgreSQL/MySQL, journal file with leases), samplers,
  the trial budget shared by parallel workers, stale-trial recovery, the Pareto-optimal trials.
* :mod:`zoo.search.export`: a trial as a backbone file (:mod:`zoo.backbones.files`).

The CLI is ``zoo search run|space|best|export`` (:mod:`zoo.commands.search_cmd`).
"""

from zoo.search.space import Candidate, DeclaredSpace, Param, SearchSpace, list_spaces, make_space, register_space

__all__ = ["Candidate", "DeclaredSpace", "Param", "SearchSpace", "list_spaces", "make_space", "register_space"]
