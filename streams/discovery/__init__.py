"""Strategy discovery: backtests of strategy variants, their out-of-sample search, and the overfitting tests."""
