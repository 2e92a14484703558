-- Each Paper or Live strategy's booked sessions (from strategies.performance): net returns, costs, drawdown and
-- the rolling Sharpe ratio with its standard error, one row per strategy and period, for the portfolio's return
-- streams and `tidemark lifecycle history`.
CREATE TABLE IF NOT EXISTS strategy_performance (
    strategy_id       text             NOT NULL,
    period_end        timestamptz      NOT NULL,
    period_start      timestamptz      NOT NULL,
    state             text             NOT NULL,
    period_return     double precision NOT NULL,
    cost              double precision NOT NULL,
    cumulative_return double precision NOT NULL,
    pnl               numeric          NOT NULL,
    drawdown          double precision NOT NULL,
    rolling_sharpe    double precision,
    rolling_sharpe_se double precision,
    sessions          integer          NOT NULL,
    trades            integer          NOT NULL,
    positions         jsonb            NOT NULL,
    event_id          uuid             NOT NULL,
    PRIMARY KEY (strategy_id, period_end)
);

-- A hypertable when TimescaleDB is available; the primary key index serves plain PostgreSQL.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('strategy_performance', 'period_end', chunk_time_interval => interval '90 days',
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
