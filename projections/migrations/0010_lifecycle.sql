-- The strategy lifecycle (from strategies.lifecycle): every answer to a command, accepted or refused, for
-- `tidemark lifecycle history`; and each strategy's current state. A transition is stored once per event id and
-- once per (strategy, version); the state only moves to a newer version.
CREATE TABLE IF NOT EXISTS strategy_transitions (
    event_id         uuid        NOT NULL PRIMARY KEY,
    strategy_id      text        NOT NULL,
    accepted         boolean     NOT NULL,
    from_state       text,
    to_state         text        NOT NULL,
    version          bigint,
    expected_version bigint,
    reason           text        NOT NULL,
    evidence         jsonb       NOT NULL,
    requested_by     text        NOT NULL,
    causation_id     text        NOT NULL,
    decided_at       timestamptz NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS strategy_transitions_version
    ON strategy_transitions (strategy_id, version) WHERE version IS NOT NULL;
CREATE INDEX IF NOT EXISTS strategy_transitions_history ON strategy_transitions (strategy_id, decided_at);

CREATE TABLE IF NOT EXISTS strategy_states (
    strategy_id text        NOT NULL PRIMARY KEY,
    state       text        NOT NULL,
    version     bigint      NOT NULL,
    since       timestamptz NOT NULL,
    reason      text        NOT NULL,
    event_id    uuid        NOT NULL
);
CREATE INDEX IF NOT EXISTS strategy_states_state ON strategy_states (state);
