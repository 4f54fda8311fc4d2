-- Consent and erasure (docs/privacy.md). Works on ClickHouse 18.16 and
-- current releases.
--
-- Consent: the event's own contact statement (Event.contact_consent) and
-- the customer's standing one as enrich knew it (CustomerContext.
-- do_not_contact: their latest statement by event time), so that BI's
-- follow-up lists can leave out whoever opted out. Rows stored before this
-- migration read 'unspecified' and 0.
ALTER TABLE {db}.events
    ADD COLUMN contact_consent Enum8('unspecified' = 0, 'granted' = 1, 'withdrawn' = 2),
    ADD COLUMN ctx_do_not_contact UInt8;

ALTER TABLE {db}.customer_profile
    ADD COLUMN do_not_contact UInt8;

-- customer_profile's view again, with do_not_contact (a new name, as in
-- migration 9: two sinks migrating at once leave nothing to undo).
DROP TABLE IF EXISTS {db}.customer_profile_mv2;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_profile_mv3 TO {db}.customer_profile AS
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
    ctx_churn_risk AS churn_risk,
    ctx_do_not_contact AS do_not_contact
FROM {db}.events
WHERE customer_id != '';

-- Erasure receipts: one row per erasure request (`xoflow erase`, `POST
-- /v1/erasures`), the audit trail that a customer's data was removed,
-- without the personal data itself: no customer id, no identifier, no
-- hash. `subject` says which kind of identifier the request named;
-- `tables` and `rows` (parallel arrays) how many rows each table lost;
-- the Kafka side in `link_tombstones`, `changelog_tombstones` and
-- `notices` (messages to running enrich instances). A second request for
-- the same subject finds nothing and records zeros.
CREATE TABLE IF NOT EXISTS {db}.erasure_receipts
(
    erasure_id            String,
    tenant                String,
    subject               Enum8('customer' = 1, 'email' = 2, 'phone' = 3, 'handle' = 4),
    requested_by          String,
    requested_at          DateTime,
    completed_at          DateTime,
    customers             UInt32,
    identifiers           UInt32,
    tables                Array(String),
    rows                  Array(UInt64),
    link_tombstones       UInt32,
    changelog_tombstones  UInt32,
    notices               UInt32
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(requested_at)
ORDER BY (tenant, requested_at, erasure_id);

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
