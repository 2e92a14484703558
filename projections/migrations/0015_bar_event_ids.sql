-- Where each bar came from in the log: its BarClosed event_id and the partition of md.bars.INTERVAL it was read from
-- (beside source_offset), so that `tidemark explain` can show the exact bars behind an analytics event. Nullable:
-- rows projected before this migration keep NULL (a replay into a fresh database fills them). No index on event_id:
-- it would cost every bar write, and explaining one bar id may scan.
ALTER TABLE bars ADD COLUMN IF NOT EXISTS event_id uuid;
ALTER TABLE bars ADD COLUMN IF NOT EXISTS source_partition int;
