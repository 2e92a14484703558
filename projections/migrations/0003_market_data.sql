-- Corporate actions (from md.corporate_actions), one row per source action id: a re-announced or amended action
-- replaces its row. Adjusted history is computed on read from these and the raw bars (projections/adjust.py).
CREATE TABLE IF NOT EXISTS corporate_actions (
    action_id        text    PRIMARY KEY,
    symbol           text    NOT NULL,
    action_type      text    NOT NULL,
    ex_date          date    NOT NULL,
    split_from       numeric,
    split_to         numeric,
    cash_amount      numeric,
    currency         text,
    declaration_date date,
    record_date      date,
    pay_date         date,
    frequency        int,
    new_symbol       text,
    source           text    NOT NULL,
    event_id         uuid    NOT NULL
);
CREATE INDEX IF NOT EXISTS corporate_actions_symbol_ex_date ON corporate_actions (symbol, ex_date);

-- Years of minute bars. With TimescaleDB, chunks older than 30 days are compressed, segmented by (symbol, interval)
-- and ordered by start_ts, which is how every bars query reads them. Without it, the plain table's primary key
-- (symbol, interval, start_ts) is the B-tree a range query of one symbol walks; bench/storage.py measures the
-- bytes per symbol-year either way.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        ALTER TABLE bars SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'symbol, interval',
            timescaledb.compress_orderby = 'start_ts'
        );
        PERFORM add_compression_policy('bars', compress_after => interval '30 days', if_not_exists => true);
    END IF;
END
$$;
