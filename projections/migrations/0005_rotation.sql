-- Every currency-strength snapshot (from analytics.currency_strength): one row per measured currency.
CREATE TABLE IF NOT EXISTS currency_strength (
    basket      text             NOT NULL,
    timeframe   text             NOT NULL,
    window_bars int              NOT NULL,
    as_of       timestamptz      NOT NULL,
    currency    text             NOT NULL,
    strength    double precision NOT NULL,
    zscore      double precision,
    rank        int              NOT NULL,
    pair_count  int              NOT NULL,
    event_id    uuid             NOT NULL,
    PRIMARY KEY (basket, timeframe, window_bars, as_of, currency)
);
CREATE INDEX IF NOT EXISTS currency_strength_latest ON currency_strength (basket, as_of DESC);

-- Every sector-rotation snapshot (from analytics.sector_rotation): one row per ranked sector.
CREATE TABLE IF NOT EXISTS sector_rotation (
    universe          text             NOT NULL,
    benchmark         text             NOT NULL,
    timeframe         text             NOT NULL,
    window_bars       int              NOT NULL,
    as_of             timestamptz      NOT NULL,
    symbol            text             NOT NULL,
    sector            text             NOT NULL,
    relative_strength double precision NOT NULL,
    momentum          double precision,
    rank              int              NOT NULL,
    quadrant          text             NOT NULL,
    event_id          uuid             NOT NULL,
    PRIMARY KEY (universe, timeframe, window_bars, as_of, symbol)
);
CREATE INDEX IF NOT EXISTS sector_rotation_latest ON sector_rotation (universe, as_of DESC);
