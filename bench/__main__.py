"""``python -m bench``: every benchmark, each beside its baseline."""

from bench import patterns, sessions, storage
from bench.pipeline import main

main()
sessions.main()
storage.main()
patterns.main()
