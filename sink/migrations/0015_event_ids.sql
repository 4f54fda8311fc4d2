-- Idempotency without a horizon (docs/clickhouse.md, "Exactly once"): an
-- index of every (tenant, event id, revision) ever stored in `events`, fed
-- by a materialized view on the same inserts, sorted so that the sink can
-- look a batch's ids up by their primary key before it inserts. The day of
-- the event leads the key after the tenant: every copy of an event has its
-- time, and a batch's events fall on few days, so a lookup reads the
-- granules of those days only, however long the history. A copy of
-- a stored revision is then dropped however far behind its original it
-- arrives (a re-run import months later), not only within
-- `sink.dedup_window` offsets. Ids only: neither retention nor erasure
-- removes them (an event id carries no personal data; docs/privacy.md).
-- Works on ClickHouse 18.16 and current releases.
CREATE TABLE IF NOT EXISTS {db}.event_ids
(
    tenant        String,
    day           Date,
    event_id      String,
    revision      UInt32,
    first_stored  DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (tenant, day, event_id, revision);

-- The ids already stored, once: a second run (two sinks migrating at
-- once) finds the table filled and adds nothing. No GROUP BY (it would
-- hold every id in memory): the rare copies collapse on merge.
INSERT INTO {db}.event_ids (tenant, day, event_id, revision, first_stored)
SELECT tenant, toDate(occurred_at), event_id, revision, inserted_at
FROM {db}.events
WHERE (SELECT count() FROM {db}.event_ids) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.event_ids_mv TO {db}.event_ids AS
SELECT tenant, toDate(occurred_at) AS day, event_id, revision, now() AS first_stored
FROM {db}.events;
