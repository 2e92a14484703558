-- Execution (issue 14): rebalance proposals and their approvals (orders.rebalances), orders as commanded and as the
-- broker reports them (orders.intents, broker.order_updates), refusals, positions per strategy (positions) and the
-- broker's own view (broker.positions, broker.account). Every row names the event it came from.
CREATE TABLE IF NOT EXISTS rebalances (
    rebalance_id   uuid        NOT NULL PRIMARY KEY,
    account_id     text        NOT NULL,
    ts             timestamptz NOT NULL,
    targets_id     text        NOT NULL,
    capital        numeric     NOT NULL,
    buying_power   numeric,
    broker         text        NOT NULL,
    orders         jsonb       NOT NULL,
    refused        jsonb       NOT NULL,
    skipped        jsonb       NOT NULL,
    auto_approved  boolean     NOT NULL,
    approved_at    timestamptz,
    approved_by    text,
    approval_id    text
);
CREATE INDEX IF NOT EXISTS rebalances_latest ON rebalances (account_id, ts DESC);

CREATE TABLE IF NOT EXISTS orders (
    account_id       text        NOT NULL,
    client_order_id  text        NOT NULL,
    symbol           text        NOT NULL,
    side             text        NOT NULL,
    qty              numeric,
    notional         numeric,
    strategy_id      text,
    rebalance_id     text,
    placed_at        timestamptz,
    place_event_id   text,
    order_id         text,
    status           text        NOT NULL,
    status_rank      int         NOT NULL,
    filled_qty       numeric     NOT NULL DEFAULT 0,
    filled_avg_price numeric,
    reject_reason    text,
    updated_at       timestamptz NOT NULL,
    last_event_id    text        NOT NULL,
    PRIMARY KEY (account_id, client_order_id)
);
CREATE INDEX IF NOT EXISTS orders_recent ON orders (account_id, updated_at DESC);

CREATE TABLE IF NOT EXISTS order_rejections (
    event_id         uuid        NOT NULL PRIMARY KEY,
    account_id       text        NOT NULL,
    ts               timestamptz NOT NULL,
    symbol           text        NOT NULL,
    client_order_id  text        NOT NULL,
    rebalance_id     text        NOT NULL,
    strategy_ids     text[]      NOT NULL,
    reason           text        NOT NULL,
    refused_by       text        NOT NULL
);

CREATE TABLE IF NOT EXISTS position_changes (
    event_id         uuid        NOT NULL PRIMARY KEY,
    account_id       text        NOT NULL,
    ts               timestamptz NOT NULL,
    strategy_id      text        NOT NULL,
    symbol           text        NOT NULL,
    qty              numeric     NOT NULL,
    qty_change       numeric     NOT NULL,
    price            numeric,
    cash_change      numeric     NOT NULL,
    cause            text        NOT NULL,
    client_order_id  text        NOT NULL,
    causation_id     text        NOT NULL
);
CREATE INDEX IF NOT EXISTS position_changes_by_strategy ON position_changes (account_id, strategy_id, symbol, ts);

CREATE TABLE IF NOT EXISTS strategy_positions (
    account_id    text        NOT NULL,
    strategy_id   text        NOT NULL,
    symbol        text        NOT NULL,
    qty           numeric     NOT NULL,
    avg_price     numeric,
    realized_pnl  numeric     NOT NULL,
    updated_at    timestamptz NOT NULL,
    event_id      text        NOT NULL,
    PRIMARY KEY (account_id, strategy_id, symbol)
);

CREATE TABLE IF NOT EXISTS broker_positions (
    account_id       text        NOT NULL,
    symbol           text        NOT NULL,
    qty              numeric     NOT NULL,
    avg_entry_price  numeric     NOT NULL,
    market_value     numeric,
    current_price    numeric,
    reported_at      timestamptz NOT NULL,
    event_id         text        NOT NULL,
    PRIMARY KEY (account_id, symbol)
);

CREATE TABLE IF NOT EXISTS position_corrections (
    event_id     uuid        NOT NULL PRIMARY KEY,
    account_id   text        NOT NULL,
    ts           timestamptz NOT NULL,
    symbol       text        NOT NULL,
    ours         numeric     NOT NULL,
    brokers      numeric     NOT NULL,
    qty_change   numeric     NOT NULL,
    reason       text        NOT NULL
);

CREATE TABLE IF NOT EXISTS broker_accounts (
    account_id    text        NOT NULL PRIMARY KEY,
    currency      text        NOT NULL,
    cash          numeric     NOT NULL,
    buying_power  numeric     NOT NULL,
    equity        numeric     NOT NULL,
    paper         boolean     NOT NULL,
    reported_at   timestamptz NOT NULL,
    event_id      text        NOT NULL
);
