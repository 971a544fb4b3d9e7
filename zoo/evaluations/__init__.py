"""Evaluations of students and teachers beyond FD loss, one module per kind.

* :mod:`~zoo.evaluations.labelled`: labelled image sets (folders, ``sklearn:digits``) and their splits.
* :mod:`~zoo.evaluations.embedding`: how a student or a teacher sees an image, and the embedding loop.
* :mod:`~zoo.evaluations.knn`: DINO's weighted k-NN on summaries.
* :mod:`~zoo.evaluations.zeroshot`: CLIP zero-shot through the text tower.
* :mod:`~zoo.evaluations.metrics`: shared metrics (top-k accuracy).

Runs are loaded by :mod:`zoo.loading`; results go into the run record with
:func:`zoo.runs.update_record`. A new evaluation is a new module here plus a
``zoo eval`` subcommand in :mod:`zoo.commands.eval_cmd`.
"""
