-- Views for BI, all computed from the merged aggregate states of
-- touchpoint_metrics: ratios are derived after summing counts, never
-- averaged. NPS = 100 × (promoters − detractors) / responses.

-- NPS, CSAT and CES per touchpoint and day.
CREATE VIEW IF NOT EXISTS {db}.cx_by_touchpoint_day AS
SELECT
    tenant, toDate(hour) AS day, journey, stage, touchpoint,
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

-- The same per store and day: horizontal comparison across stores.
CREATE VIEW IF NOT EXISTS {db}.cx_by_store_day AS
SELECT
    tenant, toDate(hour) AS day, region, store_id, journey, touchpoint,
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

-- The same per region and day.
CREATE VIEW IF NOT EXISTS {db}.cx_by_region_day AS
SELECT
    tenant, toDate(hour) AS day, region, journey, touchpoint,
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

-- One touchpoint across every store, all time: which store is worst where.
CREATE VIEW IF NOT EXISTS {db}.touchpoint_store_comparison AS
SELECT
    tenant, journey, touchpoint, store_id, region,
    sumMerge(nps_promoters) AS promoters,
    sumMerge(nps_passives) AS passives,
    sumMerge(nps_detractors) AS detractors,
    promoters + passives + detractors AS nps_responses,
    if(nps_responses = 0, nan, 100 * (promoters - detractors) / nps_responses) AS nps
FROM {db}.touchpoint_metrics
GROUP BY tenant, journey, touchpoint, store_id, region;

-- The journey funnel: activity, customers and outcomes per stage and day.
CREATE VIEW IF NOT EXISTS {db}.journey_funnel_day AS
SELECT
    tenant, toDate(hour) AS day, journey, stage,
    sumMerge(events) AS events,
    uniqMerge(customers) AS customers,
    uniqMerge(sessions) AS sessions,
    sumMerge(error_pages) AS error_pages,
    sumMerge(orders) AS orders,
    sumMerge(revenue_minor) AS revenue_minor,
    sumMerge(cancellations) AS cancellations,
    sumMerge(returns) AS returns,
    sumMerge(late_deliveries) AS late_deliveries,
    sumMerge(support_contacts) AS support_contacts
FROM {db}.touchpoint_metrics
GROUP BY tenant, day, journey, stage;
