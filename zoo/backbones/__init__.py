"""Backbone wrappers: every student family behind the one contract of
:mod:`zoo.backbone`. Registry entries live in :mod:`zoo.registry`."""
