-- Risk: every measurement of an account (risk.metrics) and every answer of the execution desk to a halt or
-- resume command (risk.controls), for `tidemark risk`, `halt` and `resume`. The commands themselves are not kept:
-- an answer names the command it answers (command_id). The source position orders an account's rows as its
-- partition does, whatever clock their times come from (a breach's market time, a person's wall clock).
CREATE TABLE IF NOT EXISTS risk_measurements (
    event_id           uuid             NOT NULL,
    account_id         text             NOT NULL,
    ts                 timestamptz      NOT NULL,
    horizon_days       int              NOT NULL,
    observations       int              NOT NULL,
    equity             numeric          NOT NULL,
    gross_exposure     numeric          NOT NULL,
    net_exposure       numeric          NOT NULL,
    peak_equity        numeric          NOT NULL,
    leverage           double precision NOT NULL,
    drawdown           double precision NOT NULL,
    max_drawdown       double precision NOT NULL,
    kupiec_p_value     double precision,
    covariance_var_95  double precision NOT NULL,
    covariance_var_99  double precision NOT NULL,
    kill_switch        boolean          NOT NULL,
    halt_reason        text             NOT NULL,
    breaches           text[]           NOT NULL,
    estimates          jsonb            NOT NULL,
    strategies         jsonb            NOT NULL,
    limits             jsonb            NOT NULL,
    missing_history    text[]           NOT NULL,
    source_partition   int              NOT NULL,
    source_offset      bigint           NOT NULL,
    -- ts is in the key because a hypertable's unique indexes must hold its time column; an event id has one ts.
    PRIMARY KEY (event_id, ts)
);
CREATE INDEX IF NOT EXISTS risk_measurements_by_account ON risk_measurements (account_id, ts);

-- A hypertable when TimescaleDB is available, like the other histories (bars, strategy_performance).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('risk_measurements', 'ts', chunk_time_interval => interval '30 days',
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS trading_controls (
    event_id              uuid        NOT NULL PRIMARY KEY,
    account_id            text        NOT NULL,
    ts                    timestamptz NOT NULL,
    kind                  text        NOT NULL CHECK (kind IN ('halted', 'resumed')),
    reason                text        NOT NULL,
    flatten               boolean     NOT NULL,
    flatten_rebalance_id  text        NOT NULL,
    requested_by          text        NOT NULL,
    breaches              text[]      NOT NULL,
    command_id            text        NOT NULL,
    source_partition      int         NOT NULL,
    source_offset         bigint      NOT NULL
);
CREATE INDEX IF NOT EXISTS trading_controls_latest ON trading_controls (account_id, source_offset DESC);
CREATE INDEX IF NOT EXISTS trading_controls_by_command ON trading_controls (command_id);
