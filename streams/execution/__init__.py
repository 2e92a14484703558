"""Execution: target exposures into orders (the rebalancer), fills into positions per strategy (the position
tracker), and the comparison of both with the broker (reconciliation). Pure modules here; wiring in
``streams.execution.agent`` and ``connectors``."""
