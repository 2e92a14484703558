-- Strategy candidates (from strategies.candidates): one row per discovery task, passed or rejected, with the
-- evidence. A republished candidate (the same event id: a task redone after a worker died) is stored once.
CREATE TABLE IF NOT EXISTS strategy_candidates (
    strategy_id          text             NOT NULL,
    event_id             uuid             NOT NULL PRIMARY KEY,
    task_id              text             NOT NULL,
    discovered_at        timestamptz      NOT NULL,
    family               text             NOT NULL,
    asset_class          text             NOT NULL,
    symbols              text[]           NOT NULL,
    timeframe            text             NOT NULL,
    complexity           int              NOT NULL,
    params               jsonb            NOT NULL,
    passed               boolean          NOT NULL,
    rejections           text[]           NOT NULL,
    score                double precision NOT NULL,
    sharpe_in_sample     double precision NOT NULL,
    sharpe_out_of_sample double precision NOT NULL,
    sharpe_oos_se        double precision,
    psr                  double precision NOT NULL,
    deflated_sharpe      double precision NOT NULL,
    dsr_benchmark        double precision,
    pbo                  double precision,
    trials               int              NOT NULL,
    annual_return        double precision NOT NULL,
    annual_volatility    double precision NOT NULL,
    max_drawdown         double precision NOT NULL,
    turnover             double precision,
    capacity_adv_share   double precision,
    live_correlation     double precision,
    cost_bp              double precision,
    data_start           timestamptz      NOT NULL,
    data_end             timestamptz      NOT NULL,
    evidence             jsonb            NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS strategy_candidates_task ON strategy_candidates (task_id);
CREATE INDEX IF NOT EXISTS strategy_candidates_rank ON strategy_candidates (passed DESC, score DESC);

-- Discovery tasks (from discovery.progress): the latest stage of each task, for `tidemark discover status`.
CREATE TABLE IF NOT EXISTS discovery_tasks (
    task_id        text        NOT NULL PRIMARY KEY,
    family         text        NOT NULL,
    symbols        text[]      NOT NULL,
    stage          text        NOT NULL,
    trials_done    int         NOT NULL,
    trials_planned int         NOT NULL,
    worker         text        NOT NULL,
    reason         text        NOT NULL,
    candidate_id   text        NOT NULL,
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL
);
