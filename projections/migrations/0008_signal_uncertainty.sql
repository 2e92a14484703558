-- Pattern signals carry the standard error of their (net) Sharpe ratio and their deflated Sharpe ratio.
ALTER TABLE pattern_signals ADD COLUMN IF NOT EXISTS sharpe_se double precision;
ALTER TABLE pattern_signals ADD COLUMN IF NOT EXISTS deflated_sharpe double precision;
