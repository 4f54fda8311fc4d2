-- Mergeable CX aggregates per tenant × hour × journey × stage × touchpoint
-- × channel × region × store, fed by a materialized view on `events`.
--
-- Every measure is an aggregate-function state (sumState, uniqState,
-- quantilesState), merged with -Merge at query time. Any roll-up (hour →
-- day → month, store → region, touchpoint → stage → journey) is computed
-- from these states and is exact: NPS is stored as its three counts, CSAT
-- as responses and top-two-box count, CES as sum and count — never as a
-- ratio. (ClickHouse 18.16 has no SimpleAggregateFunction, so plain sums
-- are sumState too; and its -StateIf states are typed as the plain
-- function's, e.g. uniqStateIf is stored as AggregateFunction(uniq, String).
-- Current releases accept the same DDL.)
CREATE TABLE IF NOT EXISTS {db}.touchpoint_metrics
(
    tenant            String,
    hour              DateTime,
    journey           String,
    stage             String,
    touchpoint        String,
    channel           Enum8('unspecified' = 0, 'app' = 1, 'web' = 2, 'store' = 3, 'call_centre' = 4, 'social' = 5, 'email' = 6, 'sms' = 7),
    region            String,
    store_id          String,

    events            AggregateFunction(sum, UInt64),
    nps_promoters     AggregateFunction(sum, UInt64),
    nps_passives      AggregateFunction(sum, UInt64),
    nps_detractors    AggregateFunction(sum, UInt64),
    nps_quantiles     AggregateFunction(quantiles(0.5, 0.9), Float64),
    csat_responses    AggregateFunction(sum, UInt64),
    csat_top2         AggregateFunction(sum, UInt64),
    ces_responses     AggregateFunction(sum, UInt64),
    ces_sum           AggregateFunction(sum, Float64),
    ces_easy          AggregateFunction(sum, UInt64),
    sentiment_count   AggregateFunction(sum, UInt64),
    sentiment_sum     AggregateFunction(sum, Float64),
    negative_texts    AggregateFunction(sum, UInt64),
    customers         AggregateFunction(uniq, String),
    orders            AggregateFunction(sum, UInt64),
    revenue_minor     AggregateFunction(sum, Int64),
    cancellations     AggregateFunction(sum, UInt64),
    returns           AggregateFunction(sum, UInt64),
    late_deliveries   AggregateFunction(sum, UInt64),
    sessions          AggregateFunction(uniq, String),
    error_pages       AggregateFunction(sum, UInt64),
    support_contacts  AggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant, hour, journey, stage, touchpoint, channel, region, store_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoint_metrics_mv TO {db}.touchpoint_metrics AS
SELECT
    tenant,
    toStartOfHour(occurred_at) AS hour,
    journey,
    stage,
    touchpoint,
    channel,
    region,
    store_id,
    sumState(toUInt64(1)) AS events,
    sumState(toUInt64(nps_category = 'promoter')) AS nps_promoters,
    sumState(toUInt64(nps_category = 'passive')) AS nps_passives,
    sumState(toUInt64(nps_category = 'detractor')) AS nps_detractors,
    quantilesStateIf(0.5, 0.9)(toFloat64(ifNull(nps_score, 0)), toUInt8(isNotNull(nps_score))) AS nps_quantiles,
    sumState(toUInt64(isNotNull(csat_score))) AS csat_responses,
    sumState(toUInt64(csat_top2)) AS csat_top2,
    sumState(toUInt64(isNotNull(ces_score))) AS ces_responses,
    sumState(toFloat64(ifNull(ces_score, 0))) AS ces_sum,
    sumState(toUInt64(ifNull(ces_score, 0) >= 5)) AS ces_easy,
    sumState(toUInt64(isNotNull(sentiment))) AS sentiment_count,
    sumState(toFloat64(ifNull(sentiment, 0))) AS sentiment_sum,
    sumState(toUInt64(sentiment_label = 'negative')) AS negative_texts,
    uniqStateIf(customer_id, toUInt8(customer_id != '')) AS customers,
    sumState(toUInt64(kind = 'order' AND order_status = 'placed')) AS orders,
    sumState(toInt64(if(kind = 'order' AND order_status = 'paid', amount_minor, 0))) AS revenue_minor,
    sumState(toUInt64(kind = 'order' AND order_status = 'cancelled')) AS cancellations,
    sumState(toUInt64(kind = 'order' AND order_status = 'returned')) AS returns,
    sumState(toUInt64(kind = 'order' AND order_status = 'delivered' AND isNotNull(delivered_ms) AND isNotNull(promised_delivery_ms) AND assumeNotNull(delivered_ms) > assumeNotNull(promised_delivery_ms))) AS late_deliveries,
    uniqStateIf(session_id, toUInt8(kind = 'click')) AS sessions,
    sumState(toUInt64(kind = 'click' AND click_action = 'error')) AS error_pages,
    sumState(toUInt64(kind = 'call')) AS support_contacts
FROM {db}.events
GROUP BY tenant, hour, journey, stage, touchpoint, channel, region, store_id;
