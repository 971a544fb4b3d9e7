"""zoo: which vision backbone gives the most quality per unit of speed once
distilled from foundation models (the AM-RADIO recipe as a tool)."""

__version__ = "0.1.0"
