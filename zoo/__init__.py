"""zoo: which vision backbone gives the most quality per unit of speed once
distilled from foundation models (the AM-RADIO recipe as a tool)."""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """A distilled student from a run folder or an exported timm/hf folder (:func:`zoo.export.load.load`).

    Returns a :class:`zoo.loading.LoadedRun` in eval mode: ``out, adaptors = student(images)``.
    """
    from zoo.export.load import load as _load  # torch loads only here: ``import zoo`` stays light

    return _load(path, device)
