"""The search spaces: one module per space, each registering itself with
:func:`zoo.search.space.register_space` (every module here is imported when a
space is looked up, so a new space is one new file).

* :mod:`zoo.search.spaces.eradio`: E-RADIO (widths, depths, MRA pattern, heads, windows, neck).
* :mod:`zoo.search.spaces.vit_cpe`: ViT students with cropped position embeddings.
"""
