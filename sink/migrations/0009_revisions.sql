-- Revisions. Enrich emits an event again, with `revision` one higher, when
-- something that arrived later (an order, a call, an identity link)
-- changed the context it was joined with (docs/enrich.md). The event itself
-- is the same in every revision; customer_id, resolution and the ctx_*
-- columns may differ. Works on ClickHouse 18.16 and current releases.
--
-- `events` becomes the log of every revision: `revision` joins the end of
-- the sorting key, so merges still collapse copies of one revision (a
-- redelivery) but never two revisions of an event. A sorting key can only
-- be extended by a column added in the same ALTER, and both 18.16 and
-- current releases refuse one added with a default expression: the column
-- has no DEFAULT clause; its implicit default, 0, is what every row stored
-- before this migration reads.
ALTER TABLE {db}.events
    ADD COLUMN revision UInt32,
    MODIFY ORDER BY (tenant, touchpoint, occurred_at, event_id, revision);

-- The support call a survey was triggered by, once enrich has seen it.
ALTER TABLE {db}.events
    ADD COLUMN ctx_call_id String,
    ADD COLUMN ctx_call_queue String,
    ADD COLUMN ctx_call_disposition String,
    ADD COLUMN ctx_call_duration_s UInt32,
    ADD COLUMN ctx_call_sentiment_label Enum8('none' = 0, 'negative' = 1, 'neutral' = 2, 'positive' = 3);

-- Which revision a row ClickHouse refused was (0 for every other dead
-- letter): the sink's dedup key of the enriched topic is (event_id,
-- revision), and refused rows are part of that topic's stored position.
ALTER TABLE {db}.dead_letters
    ADD COLUMN revision UInt32 DEFAULT 0;

-- One row per event, its highest revision: what BI reads by default for
-- row-level questions. Exact before merges: FINAL collapses copies of a
-- revision, and the filter drops every revision below an event's highest.
-- The set it filters against holds only revisions that were superseded
-- (events with a revision above 0 are few), never the whole table; GLOBAL,
-- so that on a cluster the set is built once over every shard (an event's
-- revisions can live on different shards when a revision resolved its
-- customer). On 18.16 a view's columns are fixed when it is created: a
-- migration adding a column to `events` recreates this view.
CREATE VIEW IF NOT EXISTS {db}.events_latest AS
SELECT *
FROM {db}.events FINAL
WHERE (tenant, event_id, revision) GLOBAL NOT IN
(
    SELECT tenant, event_id, arrayJoin(range(latest)) AS superseded
    FROM
    (
        SELECT tenant, event_id, max(revision) AS latest
        FROM {db}.events
        WHERE revision > 0
        GROUP BY tenant, event_id
    )
);

-- touchpoint_metrics counts each event once although `events` now receives
-- it once per revision. Additive measures depend only on the event itself,
-- the same in every revision, and count revision 0, which enrich always
-- emits first; the distinct counts take every revision (uniq is
-- idempotent), so a customer resolved only by a later revision is counted,
-- and one an identifier was re-pointed away from stays counted.
--
-- A new name rather than dropping and re-creating touchpoint_metrics_mv:
-- two sinks starting at once both run this migration, and the second
-- dropping the view after the first began inserting would lose rows from
-- the aggregates; DROP IF EXISTS of the old name and CREATE IF NOT EXISTS of
-- the new one leave nothing for the second to undo. Rows inserted by a sink
-- of an earlier version between the two statements are not aggregated
-- (docs/clickhouse.md, "Upgrading to revisions").
DROP TABLE IF EXISTS {db}.touchpoint_metrics_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_metrics_mv2 TO {db}.touchpoint_metrics AS
SELECT
    tenant,
    toStartOfHour(occurred_at) AS hour,
    journey,
    stage,
    touchpoint,
    channel,
    region,
    store_id,
    sumState(toUInt64(revision = 0)) AS events,
    sumState(toUInt64(revision = 0 AND nps_category = 'promoter')) AS nps_promoters,
    sumState(toUInt64(revision = 0 AND nps_category = 'passive')) AS nps_passives,
    sumState(toUInt64(revision = 0 AND nps_category = 'detractor')) AS nps_detractors,
    quantilesStateIf(0.5, 0.9)(toFloat64(ifNull(nps_score, 0)), toUInt8(revision = 0 AND isNotNull(nps_score))) AS nps_quantiles,
    sumState(toUInt64(revision = 0 AND isNotNull(csat_score))) AS csat_responses,
    sumState(toUInt64(if(revision = 0, csat_top2, 0))) AS csat_top2,
    sumState(toUInt64(revision = 0 AND isNotNull(ces_score))) AS ces_responses,
    sumState(toFloat64(if(revision = 0, ifNull(ces_score, 0), 0))) AS ces_sum,
    sumState(toUInt64(revision = 0 AND ifNull(ces_score, 0) >= 5)) AS ces_easy,
    sumState(toUInt64(revision = 0 AND isNotNull(sentiment))) AS sentiment_count,
    sumState(toFloat64(if(revision = 0, ifNull(sentiment, 0), 0))) AS sentiment_sum,
    sumState(toUInt64(revision = 0 AND sentiment_label = 'negative')) AS negative_texts,
    uniqStateIf(customer_id, toUInt8(customer_id != '')) AS customers,
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'placed')) AS orders,
    sumState(toInt64(if(revision = 0 AND kind = 'order' AND order_status = 'paid', amount_minor, 0))) AS revenue_minor,
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'cancelled')) AS cancellations,
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'returned')) AS returns,
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'delivered' AND isNotNull(delivered_ms) AND isNotNull(promised_delivery_ms) AND assumeNotNull(delivered_ms) > assumeNotNull(promised_delivery_ms))) AS late_deliveries,
    uniqStateIf(session_id, toUInt8(kind = 'click')) AS sessions,
    sumState(toUInt64(revision = 0 AND kind = 'click' AND click_action = 'error')) AS error_pages,
    sumState(toUInt64(revision = 0 AND kind = 'call')) AS support_contacts
FROM {db}.events
GROUP BY tenant, hour, journey, stage, touchpoint, channel, region, store_id;

-- customer_profile keeps, per customer, the row of the highest version.
-- Every revision of an event has the same event time, and among rows of
-- equal version inserted in one block the one kept is not reliably the
-- last (the block is sorted by the table's key on insert, not stably):
-- the version now ranks revisions within an event time. version_ms =
-- occurred_ms × 1024 + revision (revisions above 1023 rank as 1023); rows
-- stored before this migration are written again on that scale (the
-- filter keeps a second run of this statement from scaling them twice:
-- every scaled version is above 10^14, every unscaled one below).
DROP TABLE IF EXISTS {db}.customer_profile_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_profile_mv2 TO {db}.customer_profile AS
SELECT
    tenant,
    customer_id,
    occurred_ms * 1024 + least(revision, 1023) AS version_ms,
    occurred_at AS last_event_at,
    kind AS last_kind,
    touchpoint AS last_touchpoint,
    store_id AS last_store_id,
    region,
    ctx_last_nps AS last_nps,
    ctx_lifetime_value_minor AS lifetime_value_minor,
    ctx_value_90d_minor AS value_90d_minor,
    ctx_orders_90d AS orders_90d,
    ctx_days_since_last_order AS days_since_last_order,
    ctx_support_contacts_30d AS support_contacts_30d,
    ctx_churn_risk AS churn_risk
FROM {db}.events
WHERE customer_id != '';

INSERT INTO {db}.customer_profile
SELECT
    tenant, customer_id, version_ms * 1024, last_event_at, last_kind, last_touchpoint, last_store_id,
    region, last_nps, lifetime_value_minor, value_90d_minor, orders_90d, days_since_last_order,
    support_contacts_30d, churn_risk
FROM {db}.customer_profile
WHERE version_ms < 100000000000000;
