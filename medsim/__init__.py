"""medsim: uncertainty-aware in-silico treatment evaluation.

``medsim`` owns the world: cohort data (``medsim.data``), physiology models
(``medsim.models``), the batched SDE simulator (``medsim.simulate``), virtual populations and the
command line (``medsim.cli``). It imports jax, numpy and pandas; torch only inside the neural
model. It never imports ``inference`` or ``policies`` (they build on it), except lazily in the CLI.
"""

__version__ = "0.1.0"
