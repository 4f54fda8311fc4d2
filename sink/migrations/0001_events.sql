-- One row per enriched event: the raw layer every aggregate and drill-down
-- starts from. Works on ClickHouse 18.16 and current releases.
--
-- ReplacingMergeTree collapses rows with the same sorting key, which ends in
-- event_id: a redelivered event (after a crash or rebalance) becomes one row
-- once parts merge; queries that must be exact before a merge use FINAL or
-- count distinct event_id.
CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id            String,
    tenant              String,
    source              String,
    kind                Enum8('survey' = 1, 'call' = 2, 'social' = 3, 'order' = 4, 'click' = 5),
    occurred_at         DateTime,
    occurred_ms         Int64,
    received_at         DateTime,
    enriched_at         DateTime,

    customer_id         String,
    resolution          Enum8('unspecified' = 0, 'direct' = 1, 'linked' = 2, 'unresolved' = 3),
    email_hash          String,
    phone_hash          String,
    social_handle_hash  String,
    device_id_hash      String,

    journey             String,
    stage               String,
    touchpoint          String,
    channel             Enum8('unspecified' = 0, 'app' = 1, 'web' = 2, 'store' = 3, 'call_centre' = 4, 'social' = 5, 'email' = 6, 'sms' = 7),
    store_id            String,
    region              String,
    owner_department    String,
    attr_keys           Array(String),
    attr_values         Array(String),

    -- X-data
    survey_id           String,
    nps_score           Nullable(Int8),
    nps_category        Enum8('none' = 0, 'detractor' = 1, 'passive' = 2, 'promoter' = 3),
    csat_score          Nullable(Float64),
    csat_normalised     Nullable(Float64),
    csat_top2           UInt8,
    ces_score           Nullable(Float64),
    ces_normalised      Nullable(Float64),
    sentiment           Nullable(Float64),
    sentiment_label     Enum8('none' = 0, 'negative' = 1, 'neutral' = 2, 'positive' = 3),
    topics              Array(String),
    language            String,
    text                String,
    trigger_order_id    String,
    trigger_call_id     String,
    call_id             String,
    call_agent_id       String,
    call_queue          String,
    call_duration_s     UInt32,
    call_disposition    String,
    social_platform     String,
    social_post_id      String,
    social_url          String,
    social_likes        UInt32,
    social_shares       UInt32,

    -- O-data
    order_id            String,
    order_status        Enum8('none' = 0, 'placed' = 1, 'paid' = 2, 'shipped' = 3, 'delivered' = 4, 'cancelled' = 5, 'returned' = 6),
    amount_minor        Int64,
    currency            String,
    item_count          UInt32,
    promised_delivery_ms Nullable(Int64),
    delivered_ms        Nullable(Int64),
    session_id          String,
    url                 String,
    path                String,
    click_action        Enum8('none' = 0, 'view' = 1, 'click' = 2, 'search' = 3, 'add_to_cart' = 4, 'checkout' = 5, 'purchase' = 6, 'error' = 7),
    duration_ms         UInt32,

    -- Joined context (what enrich knew when the event arrived)
    ctx_order_id        String,
    ctx_order_status    Enum8('none' = 0, 'placed' = 1, 'paid' = 2, 'shipped' = 3, 'delivered' = 4, 'cancelled' = 5, 'returned' = 6),
    ctx_order_amount_minor Int64,
    ctx_delivery_late_s Nullable(Int64),
    ctx_session_id      String,
    ctx_session_errors  UInt32,
    ctx_orders_90d      UInt32,
    ctx_value_90d_minor Int64,
    ctx_support_contacts_30d UInt32,

    -- The accepted event as protobuf, for replay and exact audits.
    event_proto         String,

    -- Lineage
    kafka_topic         String,
    kafka_partition     Int32,
    kafka_offset        Int64,
    inserted_at         DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant, touchpoint, occurred_at, event_id);

-- Records refused at any stage, and rows ClickHouse refused.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    at            DateTime,
    stage         String,
    reason        String,
    field         String,
    description   String,
    tenant        String,
    source        String,
    event_id      String,
    content_type  String,
    payload       String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (tenant, at, reason);
