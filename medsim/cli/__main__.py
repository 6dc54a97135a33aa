"""``python -m medsim.cli``: the same as the ``medsim`` command."""

from medsim.cli import main

main()
