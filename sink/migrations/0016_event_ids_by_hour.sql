-- The dedup index by the hour of the event, not its day (docs/clickhouse.md,
-- "Exactly once"): a look-up reads the granules of the hours its batch's
-- events fall in, where `event_ids` reads those of their whole days. Within
-- a day the ids are sorted by id, so a batch of a few thousand ids reads
-- every granule of its days (BENCHMARKS.md, "The dedup look-up by the
-- hour"). Every copy of an event has its time, so its hour is known
-- wherever the copy comes from.
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

-- What was stored before the view above is in `event_ids` alone, by its
-- day: its hours cannot be told (retention may have removed its events).
-- Recorded once, after the view exists: the start of the second day after
-- the last `event_ids` holds (Unix seconds, the server's time zone as its
-- view computed the days; 0 when it holds none). A key of a later time
-- cannot be one of those ids, so the sink asks `event_ids` only for batches
-- with a key before it. The day of margin covers an insert already running
-- when the view above was created, which feeds `event_ids` alone (the views
-- an insert feeds are chosen when it starts), with events up to a day past
-- the last stored. `event_ids` is still fed, so that a sink of the previous
-- version, running beside this one in a rolling upgrade or after a
-- rollback, finds every id. Two sinks migrating at once may both record:
-- the sink reads the latest bound, which covers the other.
CREATE TABLE IF NOT EXISTS {db}.event_ids_hourly_from
(
    k   UInt8,
    at  UInt32
)
ENGINE = MergeTree()
ORDER BY k;

INSERT INTO {db}.event_ids_hourly_from (k, at)
SELECT 0, at FROM
(
    SELECT if(count() = 0, 0,
              if(max(day) >= toDate('2106-02-05'), 4294967295,
                 toUInt32(toDateTime(max(day) + 2)))) AS at
    FROM {db}.event_ids
)
WHERE (SELECT count() FROM {db}.event_ids_hourly_from) = 0;
