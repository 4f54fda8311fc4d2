-- The dedup index by the second of the event, not its hour (docs/clickhouse.md,
-- "Exactly once"): a look-up's live keys are ids of the last seconds,
-- random within their hour, so sorted by (hour, id) they touch most of the
-- hour's granules, a few million ids into a busy hour; sorted by (second,
-- id) they touch the granules of those seconds (BENCHMARKS.md, "The dedup
-- index by the second"). Every copy of an event has its time, so its
-- second is known wherever the copy comes from.
CREATE TABLE IF NOT EXISTS {db}.event_ids_by_time
(
    tenant        String,
    occurred_at   DateTime,
    event_id      String,
    revision      UInt32,
    first_stored  DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant, occurred_at, event_id, revision);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_ids_by_time_mv TO {db}.event_ids_by_time AS
SELECT tenant, occurred_at, event_id, revision, now() AS first_stored
FROM {db}.events;

-- What was stored before the view above is in `event_ids_hourly` (and, before
-- migration 16, in `event_ids`). Recorded once, after the view exists: the end
-- of the last hour `event_ids_hourly` holds, or a day past the migration if
-- later (Unix seconds; 0 when it holds nothing). A key of a later time cannot
-- be one of those ids, so the sink asks `event_ids_hourly` only for batches
-- with a key before it. The day covers an insert already running when the
-- view was created, which feeds `event_ids_hourly` alone (the views an insert
-- feeds are chosen when it starts), with events up to ingest's
-- max_future_skew past the wall clock. `event_ids_hourly` is still fed, so
-- that a sink of the previous version, running beside this one in a rolling
-- upgrade or after a rollback, finds every id. Two sinks migrating at once
-- may both record: the sink reads the latest bound, which covers the other.
CREATE TABLE IF NOT EXISTS {db}.event_ids_by_time_from
(
    k   UInt8,
    at  UInt32
)
ENGINE = MergeTree()
ORDER BY k;

INSERT INTO {db}.event_ids_by_time_from (k, at)
SELECT 0, at FROM
(
    SELECT toUInt32(if(count() = 0, 0,
              least(4294967295,
                    greatest(toUInt64(max(hour)) + 3600, toUInt64(now()) + 86400)))) AS at
    FROM {db}.event_ids_hourly
)
WHERE (SELECT count() FROM {db}.event_ids_by_time_from) = 0;
