-- The latest state of every customer, one row per customer once parts
-- merge (ReplacingMergeTree keyed on the customer, versioned by event
-- time): last contact, last NPS, value, support load and churn risk, as
-- enrich knew them at the customer's most recent event. Read with FINAL (or
-- argMax) for exact answers before merges.
CREATE TABLE IF NOT EXISTS {db}.customer_profile
(
    tenant                   String,
    customer_id              String,
    version_ms               Int64,
    last_event_at            DateTime,
    last_kind                Enum8('survey' = 1, 'call' = 2, 'social' = 3, 'order' = 4, 'click' = 5),
    last_touchpoint          String,
    last_store_id            String,
    region                   String,
    last_nps                 Nullable(Int8),
    lifetime_value_minor     Int64,
    value_90d_minor          Int64,
    orders_90d               UInt32,
    days_since_last_order    Nullable(UInt32),
    support_contacts_30d     UInt32,
    churn_risk               Nullable(Float64)
)
ENGINE = ReplacingMergeTree(version_ms)
ORDER BY (tenant, customer_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_profile_mv TO {db}.customer_profile AS
SELECT
    tenant,
    customer_id,
    occurred_ms AS version_ms,
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
