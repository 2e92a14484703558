-- Every projection writer records the next Kafka offset it must apply, per (consumer, topic, partition), in
-- the same transaction as the rows it wrote: a replay or a restart skips what is already applied.
CREATE TABLE IF NOT EXISTS applied_offsets (
    consumer    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Raw bars exactly as published; never rewritten (adjustments are computed on read).
CREATE TABLE IF NOT EXISTS bars (
    symbol          text             NOT NULL,
    interval        text             NOT NULL,
    start_ts        timestamptz      NOT NULL,
    end_ts          timestamptz      NOT NULL,
    asset_class     text             NOT NULL,
    open            double precision NOT NULL,
    high            double precision NOT NULL,
    low             double precision NOT NULL,
    close           double precision NOT NULL,
    volume          double precision NOT NULL,
    vwap            double precision,
    trade_count     bigint,
    regular_session boolean          NOT NULL,
    source_offset   bigint           NOT NULL,
    PRIMARY KEY (symbol, interval, start_ts)
);

-- A hypertable when TimescaleDB is available; the primary key index serves plain PostgreSQL.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('bars', 'start_ts', chunk_time_interval => interval '7 days',
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;

-- Duplicate bars (same symbol, interval and start) that the projection recognised and ignored.
CREATE TABLE IF NOT EXISTS projection_counters (
    consumer text   NOT NULL,
    counter  text   NOT NULL,
    value    bigint NOT NULL,
    PRIMARY KEY (consumer, counter)
);
