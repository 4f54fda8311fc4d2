-- Local time and currencies. Works on ClickHouse 18.16 and current
-- releases (docs/clickhouse.md, "Local time" and "Revenue").
--
-- Days, weeks and months are the tenant's: ingest stamps every event with
-- its tenant's UTC offset at the event's time (Event.utc_offset_seconds,
-- from ingest.tenants.<tenant>.time_zone, daylight saving included). A
-- time-zone function cannot take its zone from a column (it must be a
-- constant), so the offset is stored and every bucket is computed from the
-- UTC time plus the offset, read as UTC. Rows stored before this migration
-- read 0: UTC.
ALTER TABLE {db}.events
    ADD COLUMN utc_offset_s Int32 DEFAULT 0,
    ADD COLUMN occurred_local DateTime('UTC') DEFAULT toDateTime(toUInt32(occurred_at) + utc_offset_s, 'UTC');

-- touchpoint_metrics keys its rows by the offset too: `hour` is now the
-- UTC instant the tenant's local hour began (the same as before for every
-- zone a whole number of hours from UTC; India's hours start at :30 UTC),
-- and `local_hour` the tenant's wall-clock hour, read as UTC: its toDate,
-- toMonday and toStartOfMonth are the tenant's days, weeks and months. A
-- sorting key is extended only by a column added in the same ALTER and
-- without a default: rows aggregated before this migration read offset 0.
ALTER TABLE {db}.touchpoint_metrics
    ADD COLUMN utc_offset_s Int32,
    MODIFY ORDER BY (tenant, hour, journey, stage, touchpoint, channel, region, store_id, utc_offset_s);

ALTER TABLE {db}.touchpoint_metrics
    ADD COLUMN local_hour DateTime('UTC') ALIAS toDateTime(toUInt32(hour) + utc_offset_s, 'UTC');

-- Revenue is never summed across currencies: touchpoint_metrics loses
-- revenue_minor (which added fen to cents) and revenue_metrics keeps paid
-- orders and their amounts per currency. The view feeding
-- touchpoint_metrics is replaced first (a new name, as in migration 9:
-- two sinks migrating at once leave nothing for the second to undo).
DROP TABLE IF EXISTS {db}.touchpoint_metrics_mv2;

ALTER TABLE {db}.touchpoint_metrics
    DROP COLUMN revenue_minor;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_metrics_mv3 TO {db}.touchpoint_metrics AS
SELECT
    tenant,
    toDateTime(intDiv(toUInt32(occurred_at) + utc_offset_s, 3600) * 3600 - utc_offset_s) AS hour,
    journey,
    stage,
    touchpoint,
    channel,
    region,
    store_id,
    utc_offset_s,
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
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'cancelled')) AS cancellations,
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'returned')) AS returns,
    sumState(toUInt64(revision = 0 AND kind = 'order' AND order_status = 'delivered' AND isNotNull(delivered_ms) AND isNotNull(promised_delivery_ms) AND assumeNotNull(delivered_ms) > assumeNotNull(promised_delivery_ms))) AS late_deliveries,
    uniqStateIf(session_id, toUInt8(kind = 'click')) AS sessions,
    sumState(toUInt64(revision = 0 AND kind = 'click' AND click_action = 'error')) AS error_pages,
    sumState(toUInt64(revision = 0 AND kind = 'call')) AS support_contacts
FROM {db}.events
GROUP BY tenant, hour, journey, stage, touchpoint, channel, region, store_id, utc_offset_s;

-- Paid orders and their amounts per currency (ISO 4217, checked at
-- ingest), per tenant × local-aligned hour × touchpoint × store: one
-- figure per currency, never a sum across them.
CREATE TABLE IF NOT EXISTS {db}.revenue_metrics
(
    tenant            String,
    hour              DateTime,
    journey           String,
    stage             String,
    touchpoint        String,
    channel           Enum8('unspecified' = 0, 'app' = 1, 'web' = 2, 'store' = 3, 'call_centre' = 4, 'social' = 5, 'email' = 6, 'sms' = 7),
    region            String,
    store_id          String,
    utc_offset_s      Int32,
    currency          String,
    local_hour        DateTime('UTC') ALIAS toDateTime(toUInt32(hour) + utc_offset_s, 'UTC'),
    paid_orders       AggregateFunction(sum, UInt64),
    revenue_minor     AggregateFunction(sum, Int64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, journey, stage, touchpoint, channel, region, store_id, utc_offset_s, currency);

-- The paid orders stored before this migration, once: a second run (two
-- sinks migrating at once) finds the table filled and adds nothing. Run
-- with every sink of the previous version stopped (docs/clickhouse.md,
-- "Upgrading").
INSERT INTO {db}.revenue_metrics (tenant, hour, journey, stage, touchpoint, channel, region, store_id, utc_offset_s, currency, paid_orders, revenue_minor)
SELECT
    tenant,
    toDateTime(intDiv(toUInt32(occurred_at) + utc_offset_s, 3600) * 3600 - utc_offset_s) AS hour,
    journey, stage, touchpoint, channel, region, store_id, utc_offset_s, currency,
    sumState(toUInt64(1)) AS paid_orders,
    sumState(amount_minor) AS revenue_minor
FROM {db}.events
WHERE revision = 0 AND kind = 'order' AND order_status = 'paid'
    AND (SELECT count() FROM {db}.revenue_metrics) = 0
GROUP BY tenant, hour, journey, stage, touchpoint, channel, region, store_id, utc_offset_s, currency;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.revenue_metrics_mv TO {db}.revenue_metrics AS
SELECT
    tenant,
    toDateTime(intDiv(toUInt32(occurred_at) + utc_offset_s, 3600) * 3600 - utc_offset_s) AS hour,
    journey, stage, touchpoint, channel, region, store_id, utc_offset_s, currency,
    sumState(toUInt64(1)) AS paid_orders,
    sumState(amount_minor) AS revenue_minor
FROM {db}.events
WHERE revision = 0 AND kind = 'order' AND order_status = 'paid'
GROUP BY tenant, hour, journey, stage, touchpoint, channel, region, store_id, utc_offset_s, currency;

-- The alert stage stamps each alert with its trigger's offset: the closed
-- loop is counted per local day too.
ALTER TABLE {db}.alerts
    ADD COLUMN utc_offset_s Int32 DEFAULT 0;

-- The views, again, with local days. On 18.16 a view's columns are fixed
-- when it is created, so every view over a table that gained a column is
-- created again (a view is no data: a query in the instant between DROP
-- and CREATE fails and can be retried).
DROP TABLE IF EXISTS {db}.events_latest;

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

DROP TABLE IF EXISTS {db}.cx_by_touchpoint_day;

CREATE VIEW IF NOT EXISTS {db}.cx_by_touchpoint_day AS
SELECT
    tenant, toDate(toDateTime(toUInt32(hour) + utc_offset_s, 'UTC')) AS day, journey, stage, touchpoint,
    sumMerge(nps_promoters) AS promoters,
    sumMerge(nps_passives) AS passives,
    sumMerge(nps_detractors) AS detractors,
    promoters + passives + detractors AS nps_responses,
    if(nps_responses = 0, nan, 100 * (promoters - detractors) / nps_responses) AS nps,
    sumMerge(csat_responses) AS csat_responses,
    sumMerge(csat_top2) AS csat_top2,
    if(csat_responses = 0, nan, 100 * csat_top2 / csat_responses) AS csat_pct,
    sumMerge(ces_responses) AS ces_responses,
    sumMerge(ces_sum) AS ces_sum,
    if(ces_responses = 0, nan, ces_sum / ces_responses) AS ces_mean,
    sumMerge(ces_easy) AS ces_easy,
    sumMerge(sentiment_count) AS texts,
    sumMerge(negative_texts) AS negative_texts,
    uniqMerge(customers) AS customers
FROM {db}.touchpoint_metrics
GROUP BY tenant, day, journey, stage, touchpoint;

DROP TABLE IF EXISTS {db}.cx_by_store_day;

CREATE VIEW IF NOT EXISTS {db}.cx_by_store_day AS
SELECT
    tenant, toDate(toDateTime(toUInt32(hour) + utc_offset_s, 'UTC')) AS day, region, store_id, journey, touchpoint,
    sumMerge(nps_promoters) AS promoters,
    sumMerge(nps_passives) AS passives,
    sumMerge(nps_detractors) AS detractors,
    promoters + passives + detractors AS nps_responses,
    if(nps_responses = 0, nan, 100 * (promoters - detractors) / nps_responses) AS nps,
    sumMerge(csat_responses) AS csat_responses,
    sumMerge(csat_top2) AS csat_top2,
    sumMerge(ces_responses) AS ces_responses,
    sumMerge(ces_sum) AS ces_sum
FROM {db}.touchpoint_metrics
GROUP BY tenant, day, region, store_id, journey, touchpoint;

DROP TABLE IF EXISTS {db}.cx_by_region_day;

CREATE VIEW IF NOT EXISTS {db}.cx_by_region_day AS
SELECT
    tenant, toDate(toDateTime(toUInt32(hour) + utc_offset_s, 'UTC')) AS day, region, journey, touchpoint,
    sumMerge(nps_promoters) AS promoters,
    sumMerge(nps_passives) AS passives,
    sumMerge(nps_detractors) AS detractors,
    promoters + passives + detractors AS nps_responses,
    if(nps_responses = 0, nan, 100 * (promoters - detractors) / nps_responses) AS nps,
    sumMerge(csat_responses) AS csat_responses,
    sumMerge(csat_top2) AS csat_top2,
    sumMerge(ces_responses) AS ces_responses,
    sumMerge(ces_sum) AS ces_sum
FROM {db}.touchpoint_metrics
GROUP BY tenant, day, region, journey, touchpoint;

-- The funnel no longer has revenue: revenue_by_currency_day has it, per
-- currency.
DROP TABLE IF EXISTS {db}.journey_funnel_day;

CREATE VIEW IF NOT EXISTS {db}.journey_funnel_day AS
SELECT
    tenant, toDate(toDateTime(toUInt32(hour) + utc_offset_s, 'UTC')) AS day, journey, stage,
    sumMerge(events) AS events,
    uniqMerge(customers) AS customers,
    uniqMerge(sessions) AS sessions,
    sumMerge(error_pages) AS error_pages,
    sumMerge(orders) AS orders,
    sumMerge(cancellations) AS cancellations,
    sumMerge(returns) AS returns,
    sumMerge(late_deliveries) AS late_deliveries,
    sumMerge(support_contacts) AS support_contacts
FROM {db}.touchpoint_metrics
GROUP BY tenant, day, journey, stage;

-- Paid orders and revenue per currency, per local day and store.
CREATE VIEW IF NOT EXISTS {db}.revenue_by_currency_day AS
SELECT
    tenant, toDate(toDateTime(toUInt32(hour) + utc_offset_s, 'UTC')) AS day, journey, stage,
    region, store_id, currency,
    sumMerge(paid_orders) AS paid_orders,
    sumMerge(revenue_minor) AS revenue_minor
FROM {db}.revenue_metrics
GROUP BY tenant, day, journey, stage, region, store_id, currency;

DROP TABLE IF EXISTS {db}.closed_loop;

DROP TABLE IF EXISTS {db}.alert_lifecycle;

CREATE VIEW IF NOT EXISTS {db}.alert_lifecycle AS
SELECT
    alert_id, tenant, department, rule, severity, customer_id, journey, touchpoint,
    store_id, region, raised_at,
    is_acknowledged,
    is_resolved,
    if(is_acknowledged = 1, first_ack_at, NULL) AS acknowledged_at,
    if(is_resolved = 1, first_resolve_at, NULL) AS resolved_at,
    if(is_acknowledged = 1, toInt64(first_ack_at) - toInt64(raised_at), NULL) AS seconds_to_acknowledge,
    if(is_resolved = 1, toInt64(first_resolve_at) - toInt64(raised_at), NULL) AS seconds_to_resolve,
    utc_offset_s
FROM
(
    SELECT alert_id, tenant, department, rule, severity, customer_id, journey, touchpoint,
           store_id, region, raised_at, utc_offset_s
    FROM {db}.alerts FINAL
) AS raised
GLOBAL ANY LEFT JOIN
(
    SELECT
        alert_id,
        toUInt8(countIf(action = 'ack') > 0) AS is_acknowledged,
        toUInt8(countIf(action = 'resolve') > 0) AS is_resolved,
        minIf(at, action = 'ack') AS first_ack_at,
        minIf(at, action = 'resolve') AS first_resolve_at
    FROM {db}.alert_actions
    GROUP BY alert_id
) AS acted USING alert_id;

CREATE VIEW IF NOT EXISTS {db}.closed_loop AS
SELECT
    tenant, department, touchpoint, store_id, toDate(toDateTime(toUInt32(raised_at) + utc_offset_s, 'UTC')) AS day,
    count() AS alerts_raised,
    sum(is_acknowledged) AS alerts_acknowledged,
    sum(is_resolved) AS alerts_resolved,
    alerts_resolved / alerts_raised AS closed_loop_rate,
    if(alerts_resolved = 0, NULL, quantileExactIf(0.5)(ifNull(seconds_to_resolve, 0), is_resolved = 1)) AS median_seconds_to_resolve
FROM {db}.alert_lifecycle
GROUP BY tenant, department, touchpoint, store_id, day;
