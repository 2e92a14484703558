"""``python -m bench``: every benchmark, each beside its baseline."""

from bench import sessions
from bench.pipeline import main

main()
sessions.main()
