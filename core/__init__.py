"""The plumbing every layer stands on: settings, Kafka client helpers, the dead-letter contract, the consumed-record
unit, event ids and clocks, market sessions. It imports nothing of Tidemark's own layers, so they import it one way:
core <- schemas <- connectors | streams | projections <- tidemark (tests/test_layers.py keeps it so)."""
