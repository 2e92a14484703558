-- The causation index (projections/causation.py) behind `tidemark explain`: where every event of the indexed topics is
-- in the log, the ids it names as its causes, and the business ids it is also known by. Every column is a function
-- of the record and its position (no wall clock), so a rebuild (`tidemark replay --verify`) matches the live tables.
CREATE TABLE IF NOT EXISTS event_index (
    event_id   uuid        NOT NULL PRIMARY KEY,
    schema     text        NOT NULL,
    topic      text        NOT NULL,
    partition  int         NOT NULL,
    "offset"   bigint      NOT NULL,
    ts_event   timestamptz NOT NULL,
    key        text,
    source     text        NOT NULL,
    summary    text        NOT NULL,
    -- schemas.links.BarWindow of an event computed from bars (the bars table holds those); NULL otherwise.
    bars       jsonb
);

-- cause_id: an event id, or an alias of one (event_aliases), as the event names it; relation: the naming field.
CREATE TABLE IF NOT EXISTS event_causes (
    event_id  uuid NOT NULL,
    cause_id  text NOT NULL,
    relation  text NOT NULL,
    PRIMARY KEY (event_id, cause_id, relation)
);
-- What an event caused: the walk forward.
CREATE INDEX IF NOT EXISTS event_causes_by_cause ON event_causes (cause_id);

CREATE TABLE IF NOT EXISTS event_aliases (
    alias     text NOT NULL,
    event_id  uuid NOT NULL,
    PRIMARY KEY (alias, event_id)
);
