//! The console's CX overview: what BI would ask ClickHouse first, over the
//! last `days` days. The SQL is public so that a test can run exactly what
//! the page shows.
//!
//! Ratios are derived from summed counts (never averaged), rounded in SQL
//! the way `docs/clickhouse.md` rounds them (`floor(x + 0.5)`: the same on
//! ClickHouse 18.16 and current releases), and NULL where there is no
//! answer. Every query runs on 18.16.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// NPS, CSAT and CES per touchpoint. Binds: days.
pub const TOUCHPOINTS_SQL: &str = "\
SELECT tenant, journey, touchpoint,
       sum(promoters) AS p, sum(passives) AS pa, sum(detractors) AS d, p + pa + d AS nps_responses,
       if(nps_responses = 0, NULL, floor(1000 * (p - d) / nps_responses + 0.5) / 10) AS nps,
       sum(csat_responses) AS csat_n,
       if(csat_n = 0, NULL, floor(1000 * sum(csat_top2) / csat_n + 0.5) / 10) AS csat_pct,
       sum(ces_responses) AS ces_n,
       if(ces_n = 0, NULL, floor(100 * sum(ces_sum) / ces_n + 0.5) / 100) AS ces_mean
FROM cx_by_touchpoint_day
WHERE day >= today() - ?
GROUP BY tenant, journey, touchpoint
HAVING nps_responses + csat_n + ces_n > 0
ORDER BY tenant, journey, touchpoint";

/// Per touchpoint, the store with the lowest NPS (and the highest, to
/// compare horizontally), among stores with enough answers. Ties go to
/// the first store id. Binds: days, min answers.
pub const WORST_STORES_SQL: &str = "\
SELECT tenant, journey, touchpoint, count() AS stores,
       min((nps, store_id, n)) AS worst, max((nps, store_id, n)) AS best
FROM
(
    SELECT tenant, journey, touchpoint, store_id,
           sum(promoters) AS p, sum(passives) AS pa, sum(detractors) AS d, p + pa + d AS n,
           floor(1000 * (p - d) / n + 0.5) / 10 AS nps
    FROM cx_by_store_day
    WHERE day >= today() - ? AND store_id != ''
    GROUP BY tenant, journey, touchpoint, store_id
    HAVING n >= ?
)
GROUP BY tenant, journey, touchpoint
ORDER BY tenant, journey, touchpoint";

/// Alerts not resolved, per department. No binds: open is open, however
/// old.
pub const OPEN_ALERTS_SQL: &str = "\
SELECT tenant, department, count() AS open, sum(acknowledged) AS acknowledged,
       toUInt32(min(raised_at)) AS oldest
FROM alerts_open
GROUP BY tenant, department
ORDER BY open DESC, tenant, department";

/// Dead letters by stage and reason, with one example each (the least
/// field and description, so that the example is the same on every read).
/// Binds: seconds back.
pub const DEAD_LETTERS_SQL: &str = "\
SELECT toString(stage) AS stage, toString(reason) AS reason, count() AS records,
       min((toString(field), toString(description))) AS example
FROM dead_letters
WHERE at >= now() - ?
GROUP BY stage, reason
ORDER BY records DESC, stage, reason
LIMIT 20";

/// One row of [`TOUCHPOINTS_SQL`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct Touchpoint {
    pub tenant: String,
    pub journey: String,
    pub touchpoint: String,
    pub p: u64,
    pub pa: u64,
    pub d: u64,
    pub nps_responses: u64,
    pub nps: Option<f64>,
    pub csat_n: u64,
    pub csat_pct: Option<f64>,
    pub ces_n: u64,
    pub ces_mean: Option<f64>,
}

/// One row of [`WORST_STORES_SQL`]: (nps, store, answers) of the worst and
/// of the best store.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct WorstStore {
    pub tenant: String,
    pub journey: String,
    pub touchpoint: String,
    pub stores: u64,
    pub worst: (f64, String, u64),
    pub best: (f64, String, u64),
}

/// One row of [`OPEN_ALERTS_SQL`].
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct OpenAlerts {
    pub tenant: String,
    pub department: String,
    pub open: u64,
    pub acknowledged: u64,
    /// Unix seconds of the oldest open alert's raise.
    pub oldest: u32,
}

/// One row of [`DEAD_LETTERS_SQL`]: (field, description) as the example.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct DeadLetters {
    pub stage: String,
    pub reason: String,
    pub records: u64,
    pub example: (String, String),
}

/// Everything the CX half of the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub days: u32,
    pub min_store_responses: u64,
    pub touchpoints: Vec<Touchpoint>,
    pub worst_stores: Vec<WorstStore>,
    pub open_alerts: Vec<OpenAlerts>,
    pub dead_letters: Vec<DeadLetters>,
}

/// Runs the four queries.
pub async fn overview(
    client: &Client,
    days: u32,
    min_store_responses: u64,
) -> clickhouse::error::Result<Overview> {
    Ok(Overview {
        days,
        min_store_responses,
        touchpoints: client.query(TOUCHPOINTS_SQL).bind(days).fetch_all().await?,
        worst_stores: client
            .query(WORST_STORES_SQL)
            .bind(days)
            .bind(min_store_responses)
            .fetch_all()
            .await?,
        open_alerts: client.query(OPEN_ALERTS_SQL).fetch_all().await?,
        dead_letters: client
            .query(DEAD_LETTERS_SQL)
            .bind(u64::from(days) * 86_400)
            .fetch_all()
            .await?,
    })
}
