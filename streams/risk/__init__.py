"""Risk: VaR/CVaR estimators, their backtests, limits and the kill switch."""
