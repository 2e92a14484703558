"""``python -m bench``: every benchmark, each beside its baseline."""

from bench.pipeline import main

main()
