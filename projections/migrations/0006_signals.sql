-- Every pattern signal (from signals.patterns): one row per PatternSignalDetected event.
CREATE TABLE IF NOT EXISTS pattern_signals (
    pattern_family   text             NOT NULL,
    symbols          text[]           NOT NULL,
    timeframe        text             NOT NULL,
    window_bars      int              NOT NULL,
    as_of            timestamptz      NOT NULL,
    direction        text             NOT NULL,
    test             text             NOT NULL,
    statistic        double precision NOT NULL,
    p_value          double precision NOT NULL,
    adjusted_p_value double precision NOT NULL,
    correction       text             NOT NULL,
    tests_in_family  int              NOT NULL,
    significance     double precision NOT NULL,
    sharpe           double precision NOT NULL,
    psr              double precision NOT NULL,
    half_life        double precision,
    hurst            double precision,
    params           jsonb            NOT NULL,
    event_id         uuid             NOT NULL UNIQUE,
    PRIMARY KEY (pattern_family, symbols, timeframe, window_bars, as_of)
);
CREATE INDEX IF NOT EXISTS pattern_signals_latest ON pattern_signals (as_of DESC);
CREATE INDEX IF NOT EXISTS pattern_signals_symbols ON pattern_signals USING gin (symbols);
