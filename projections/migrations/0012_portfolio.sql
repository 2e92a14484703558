-- Portfolio targets (from portfolio.targets): every proposal of the portfolio agent, stored once per event id, for
-- `tidemark portfolio show`. Weights and exposures keep the event's decimal strings; the source position says which
-- record of the topic each row came from.
CREATE TABLE IF NOT EXISTS portfolio_targets (
    event_id              uuid             NOT NULL PRIMARY KEY,
    account_id            text             NOT NULL,
    ts                    timestamptz      NOT NULL,
    objective             text             NOT NULL,
    method                text             NOT NULL,
    solver                text             NOT NULL,
    reason                text             NOT NULL,
    capital               numeric          NOT NULL,
    buying_power          numeric,
    max_weight            numeric          NOT NULL,
    min_strategies        int              NOT NULL,
    lookback_sessions     int              NOT NULL,
    expected_return       double precision,
    expected_volatility   double precision,
    expected_sharpe       double precision,
    expected_sharpe_se    double precision,
    diversification_ratio double precision,
    weights               jsonb            NOT NULL,
    exposures             jsonb            NOT NULL,
    inputs                text[]           NOT NULL,
    causation_id          text             NOT NULL,
    source_partition      int              NOT NULL,
    source_offset         bigint           NOT NULL
);
CREATE INDEX IF NOT EXISTS portfolio_targets_latest ON portfolio_targets (account_id, ts DESC, source_offset DESC);
