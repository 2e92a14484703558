-- Latest rolling statistics per symbol, timeframe and window (from analytics.stats).
CREATE TABLE IF NOT EXISTS symbol_stats (
    symbol            text             NOT NULL,
    timeframe         text             NOT NULL,
    window_bars       int              NOT NULL,
    as_of             timestamptz      NOT NULL,
    bar_count         int              NOT NULL,
    last_close        double precision NOT NULL,
    window_return     double precision,
    mean_return       double precision,
    stdev_return      double precision,
    volatility_annual double precision,
    max_drawdown      double precision,
    event_id          uuid             NOT NULL,
    PRIMARY KEY (symbol, timeframe, window_bars)
);

-- Every correlation snapshot (from analytics.correlations); the matrix is its strict upper triangle, row-major,
-- exactly as the event carries it.
CREATE TABLE IF NOT EXISTS correlation_snapshots (
    universe        text               NOT NULL,
    timeframe       text               NOT NULL,
    as_of           timestamptz        NOT NULL,
    window_bars     int                NOT NULL,
    symbols         text[]             NOT NULL,
    upper_triangle  double precision[] NOT NULL,
    observations    int                NOT NULL,
    avg_correlation double precision,
    eigen_share     double precision,
    diversification_ratio double precision,
    event_id        uuid               NOT NULL,
    PRIMARY KEY (universe, timeframe, as_of)
);
