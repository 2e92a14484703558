-- Correlation snapshots, multi-timeframe: a compact history for regime analysis, and the latest at full precision.
-- The history keeps the strict upper triangle quantised to int16 (little-endian, value = q / 32767, -32768 = NaN):
-- 2 bytes a pair instead of 8 (about 1 MB for 1,000 symbols), with a resolution of 3e-5.
-- 0002's double precision[] table is replaced; the projection's offsets are cleared so the sink refills it from
-- analytics.correlations (kept forever).
DROP TABLE IF EXISTS correlation_snapshots;
DELETE FROM applied_offsets WHERE consumer = 'projection.correlations';

CREATE TABLE correlation_snapshots (
    universe              text             NOT NULL,
    timeframe             text             NOT NULL,
    window_bars           int              NOT NULL,
    as_of                 timestamptz      NOT NULL,
    observations          int              NOT NULL,
    symbols               text[]           NOT NULL,
    upper_q               bytea            NOT NULL,
    avg_correlation       double precision,
    eigen_share           double precision,
    diversification_ratio double precision,
    event_id              uuid             NOT NULL,
    PRIMARY KEY (universe, timeframe, window_bars, as_of)
);
ALTER TABLE correlation_snapshots ALTER COLUMN upper_q SET STORAGE EXTERNAL; -- quantised noise does not compress

-- The latest snapshot per window, upper triangle as float64 little-endian bytes: what queries and plots read.
CREATE TABLE correlation_latest (
    universe              text             NOT NULL,
    timeframe             text             NOT NULL,
    window_bars           int              NOT NULL,
    as_of                 timestamptz      NOT NULL,
    observations          int              NOT NULL,
    symbols               text[]           NOT NULL,
    upper_f64             bytea            NOT NULL,
    avg_correlation       double precision,
    eigen_share           double precision,
    diversification_ratio double precision,
    event_id              uuid             NOT NULL,
    PRIMARY KEY (universe, timeframe, window_bars)
);

-- Every alert (from the alerts topic), once per event id.
CREATE TABLE alerts (
    event_id     uuid             PRIMARY KEY,
    ts_event     timestamptz      NOT NULL,
    kind         text             NOT NULL,
    severity     text             NOT NULL,
    subject      text             NOT NULL,
    message      text             NOT NULL,
    from_value   double precision,
    to_value     double precision,
    since        timestamptz,
    details      jsonb            NOT NULL DEFAULT '{}',
    source       text             NOT NULL,
    causation_id text             NOT NULL DEFAULT ''
);
CREATE INDEX alerts_by_time ON alerts (ts_event DESC);
CREATE INDEX alerts_by_kind ON alerts (kind, ts_event DESC);
