"""Distillation recipes shipped as package data (``*.yaml``), read by :func:`zoo.recipe.load_recipe`.

* ``smoke``: tiny random teachers, bundled sample images, 64 px; runs anywhere in about a minute.
* ``table7``: the paper's efficient-backbone protocol (Section 5.1, Table 7).
* ``search-proxy``: a short proxy distillation scoring architecture-search candidates.
"""
