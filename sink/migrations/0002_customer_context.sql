-- What enrich knew about the customer when the event arrived: lifetime
-- value, recency, last NPS and the churn-risk score, so BI can rank
-- customers at risk and drill down to the events that raised it.
ALTER TABLE {db}.events
    ADD COLUMN ctx_lifetime_value_minor Int64 DEFAULT 0,
    ADD COLUMN ctx_days_since_last_order Nullable(UInt32),
    ADD COLUMN ctx_last_nps Nullable(Int8),
    ADD COLUMN ctx_churn_risk Nullable(Float64);
