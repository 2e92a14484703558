-- BarClosed.kind: CLOSE_ONLY bars (from a table of closing prices) observed only the close; their open, high and
-- low repeat it and their volume is 0. Rows projected before the field existed are OHLCV bars.
ALTER TABLE bars ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'OHLCV';
