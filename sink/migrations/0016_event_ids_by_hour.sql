-- The dedup index by the hour of the event, not its day (docs/clickhouse.md,
-- "Exactly once"): a look-up reads the granules of the hours its batch's
-- events fall in, where `event_ids` read those of their whole days. Within a
-- day the ids are sorted by id, so a batch of a few thousand ids read every
-- granule of the day: 155,648 rows for 5,000 keys against a day of 142,858
-- ids on 18.16, 16,384 keyed by the hour (BENCHMARKS.md, "The dedup
-- look-up by the hour"). Every copy of an event has its time, so its hour
-- is known wherever the copy comes from.
CREATE TABLE IF NOT EXISTS {db}.event_ids_hourly
(
    tenant        String,
    hour          DateTime,
    event_id      String,
    revision      UInt32,
    first_stored  DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, event_id, revision);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_ids_hourly_mv TO {db}.event_ids_hourly AS
SELECT tenant, toStartOfHour(occurred_at) AS hour, event_id, revision, now() AS first_stored
FROM {db}.events;

-- `event_ids` is kept, no longer fed: it holds every id stored before this
-- migration, whose hours it never recorded (and whose events retention may
-- have removed since), and the sink looks a batch up in both. Its days after
-- this migration hold nothing, so live traffic reads none of its rows.
-- Between the view above and this drop an insert may feed both: an id in
-- both tables is still one id stored.
DROP TABLE IF EXISTS {db}.event_ids_mv;
