-- Alerts: what the alert stage (`xoflow alert`, crate `alert/`) records
-- of the alerts enrich raises: the alerts themselves, every attempt to
-- deliver one to a department's webhook, and what people did about it
-- (acknowledge, resolve) through the case API. BI reads the closed loop
-- (raised → acknowledged → resolved) from the views at the end. Works on
-- ClickHouse 18.16 and current releases; docs/alerts.md.

-- One row per alert. The alert stage writes each alert once: per batch it
-- looks up which of the batch's alert ids are stored already and inserts
-- only the others, so a replay after a crash, or a copy enrich re-sent,
-- is not written again. Two writers can still race (an instance that lost
-- its partition finishing a batch while the new owner reads the same
-- alerts): ReplacingMergeTree keyed by alert_id collapses such copies on
-- merge (their contents are identical: the alert id is derived from the
-- rule and the triggering event), and `written_at` as the version keeps
-- the latest write. Queries that must be exact before merges read FINAL or
-- count uniqExact(alert_id). Partitioned by the month raised: every copy of
-- an alert carries the same raised_at, so copies share a partition.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id              String,
    tenant                String,
    rule                  String,
    severity              Enum8('unspecified' = 0, 'low' = 1, 'medium' = 2, 'high' = 3, 'critical' = 4),
    department            String,
    customer_id           String,
    cause                 Enum8('unspecified' = 0, 'event' = 1, 'silence' = 2),
    reasons               Array(String),
    summary               String,
    raised_at             DateTime,
    raised_ms             Int64,
    written_at            DateTime,
    silent_days           Nullable(UInt32),
    usual_gap_days        Nullable(UInt32),

    -- The triggering event (for a silence: the customer's latest event).
    event_id              String,
    revision              UInt32,
    kind                  Enum8('none' = 0, 'survey' = 1, 'call' = 2, 'social' = 3, 'order' = 4, 'click' = 5),
    occurred_at           DateTime,
    journey               String,
    stage                 String,
    touchpoint            String,
    store_id              String,
    region                String,

    -- What BI filters and groups alerts by.
    nps_score             Nullable(Int8),
    csat_score            Nullable(Float64),
    ces_score             Nullable(Float64),
    sentiment             Nullable(Float64),
    sentiment_label       Enum8('none' = 0, 'negative' = 1, 'neutral' = 2, 'positive' = 3),
    topics                Array(String),
    order_id              String,
    delivery_late_s       Nullable(Int64),
    value_90d_minor       Int64,
    lifetime_value_minor  Int64,
    support_contacts_30d  UInt32,
    churn_risk            Nullable(Float64),
    call_id               String,

    -- The alert as protobuf (xoflow.v1.Alert), trigger included: for
    -- replays and exact audits.
    alert_proto           String
)
ENGINE = ReplacingMergeTree(written_at)
PARTITION BY toYYYYMM(raised_at)
ORDER BY alert_id;

-- The delivery log: one row per attempt to deliver an alert to one webhook
-- (`webhook` is its index in the department's list; `host` its host and
-- port, never the URL, which carries the robot's token), and one
-- `no_webhook` row for an alert whose department has none configured.
-- `outcome`: delivered (2xx, and no error code in a chat robot's answer),
-- retry (a failure that is retried), dead (given up, or refused for good:
-- the alert went to the dead-letter topic), no_webhook. Attempts are
-- inserted in batches; an alert's final row is stored before its offset is
-- committed. Lookups are by alert id (the stage skips webhooks an alert
-- already reached a final outcome at when it reads the alert again).
CREATE TABLE IF NOT EXISTS {db}.alert_deliveries
(
    at                    DateTime,
    at_ms                 Int64,
    alert_id              String,
    tenant                String,
    department            String,
    webhook               UInt16,
    host                  String,
    format                Enum8('none' = 0, 'generic' = 1, 'feishu' = 2, 'dingtalk' = 3, 'wecom' = 4, 'slack' = 5),
    attempt               UInt32,
    status                UInt16,
    outcome               Enum8('delivered' = 1, 'retry' = 2, 'dead' = 3, 'no_webhook' = 4),
    error                 String,
    latency_ms            UInt32,
    raised_at             DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (alert_id, at);

-- The case lifecycle: one row per acknowledgement or resolution recorded
-- through the case API (`POST /v1/alerts/{id}/ack|resolve`). The API
-- records the first of each per alert and answers a repeat with it, so
-- normally an alert has at most one row per action; every view reads the
-- first one all the same (two API instances acting in the same instant
-- could both record).
CREATE TABLE IF NOT EXISTS {db}.alert_actions
(
    at                    DateTime,
    at_ms                 Int64,
    alert_id              String,
    tenant                String,
    department            String,
    action                Enum8('ack' = 1, 'resolve' = 2),
    by                    String,
    note                  String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (alert_id, at);

-- Every alert not resolved yet, one row each: each department's worklist
-- (`WHERE tenant = ... AND department = ...`), acknowledged or not. FINAL:
-- exact before merges; GLOBAL: on a cluster the set of resolved alerts is
-- built once, over every shard.
CREATE VIEW IF NOT EXISTS {db}.alerts_open AS
SELECT
    tenant, department, alert_id, rule, severity, customer_id, summary,
    journey, touchpoint, store_id, region, raised_at,
    toUInt8(alert_id GLOBAL IN (SELECT alert_id FROM {db}.alert_actions WHERE action = 'ack')) AS acknowledged
FROM {db}.alerts FINAL
WHERE alert_id GLOBAL NOT IN (SELECT alert_id FROM {db}.alert_actions WHERE action = 'resolve');

-- Per alert: when it was raised, first acknowledged and first resolved, and
-- how long each took (seconds; NULL until it happened). A resolve without
-- an acknowledgement counts as resolved, not as acknowledged.
CREATE VIEW IF NOT EXISTS {db}.alert_lifecycle AS
SELECT
    alert_id, tenant, department, rule, severity, customer_id, journey, touchpoint,
    store_id, region, raised_at,
    is_acknowledged,
    is_resolved,
    if(is_acknowledged = 1, first_ack_at, NULL) AS acknowledged_at,
    if(is_resolved = 1, first_resolve_at, NULL) AS resolved_at,
    if(is_acknowledged = 1, toInt64(first_ack_at) - toInt64(raised_at), NULL) AS seconds_to_acknowledge,
    if(is_resolved = 1, toInt64(first_resolve_at) - toInt64(raised_at), NULL) AS seconds_to_resolve
FROM
(
    SELECT alert_id, tenant, department, rule, severity, customer_id, journey, touchpoint,
           store_id, region, raised_at
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

-- The closed loop per tenant, department, touchpoint, store and day
-- raised: alerts raised, acknowledged and resolved (so far), the
-- closed-loop rate (resolved / raised) and the median time to resolve
-- (seconds, over the resolved ones; NULL when none is). Counts add up over
-- days and stores; rates and medians do not: derive them again.
CREATE VIEW IF NOT EXISTS {db}.closed_loop AS
SELECT
    tenant, department, touchpoint, store_id, toDate(raised_at) AS day,
    count() AS alerts_raised,
    sum(is_acknowledged) AS alerts_acknowledged,
    sum(is_resolved) AS alerts_resolved,
    alerts_resolved / alerts_raised AS closed_loop_rate,
    if(alerts_resolved = 0, NULL, quantileExactIf(0.5)(ifNull(seconds_to_resolve, 0), is_resolved = 1)) AS median_seconds_to_resolve
FROM {db}.alert_lifecycle
GROUP BY tenant, department, touchpoint, store_id, day;
