//! ClickHouse: the three tables the alert stage writes and the API reads.
//!
//! In: the `clickhouse::Client` the process builds for its database (on a
//! cluster it inserts through the `Distributed` tables synchronously).
//! Out: [`Store`]'s reads and inserts, each failing with a [`StoreError`]
//! that knows whether a retry can help. The tables are created by the
//! sink's migrations (`xoflow migrate`, migration 10): this crate never
//! creates them, it waits for them ([`Store::missing_tables`]).
//!
//! Alert ids are spliced into `IN (...)` lists (ClickHouse 18.16 has no
//! array parameter there), so only ids of [`is_valid_id`]'s alphabet are
//! ever let through to here.

pub mod row;

use std::collections::HashSet;

use clickhouse::{Client, Row};
use serde::Deserialize;
use xoflow_common::clickhouse_errors;

pub use row::{Action, ActionRow, AlertRow, DeliveryRow, Outcome};

/// The tables the stage needs, as migration 10 names them.
pub const TABLES: [&str; 3] = ["alerts", "alert_deliveries", "alert_actions"];

/// A ClickHouse call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
    /// The server's error code, when it answered one.
    pub code: Option<u32>,
    /// Whether the same call later can succeed (network trouble, overload).
    pub transient: bool,
}

/// "Database doesn't exist" and "table doesn't exist": the schema is not
/// there yet.
pub const MISSING_CODES: &[u32] = &[60, 81];

impl StoreError {
    /// Classified as the sink classifies its calls
    /// ([`clickhouse_errors`]): an answer without a server code by its
    /// HTTP status, so that a proxy's 502 while ClickHouse restarts is
    /// waited out here too.
    fn of(e: clickhouse::error::Error) -> Self {
        let c = clickhouse_errors::classify(&e);
        StoreError {
            message: c.message,
            code: c.code,
            transient: c.transient,
        }
    }

    /// Whether the error says a table or the database is missing.
    pub fn is_missing_schema(&self) -> bool {
        self.code.is_some_and(|c| MISSING_CODES.contains(&c))
    }
}

/// Whether `id` may name an alert: 1-64 characters of `[0-9A-Za-z_-]`
/// (enrich's are 32 lower-case hex). Anything else is refused before it
/// reaches a query.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `('a','b')` of ids already checked by [`is_valid_id`].
fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = ids
        .into_iter()
        .filter(|id| is_valid_id(id))
        .map(|id| format!("'{id}'"))
        .collect();
    format!("({})", quoted.join(","))
}

/// The first action of each kind recorded for an alert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lifecycle {
    pub acknowledged: Option<ActionRow>,
    pub resolved: Option<ActionRow>,
}

/// What the API shows of an alert.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct AlertSummary {
    pub alert_id: String,
    pub tenant: String,
    pub department: String,
    pub rule: String,
    pub severity: i8,
    pub customer_id: String,
    pub summary: String,
    pub reasons: Vec<String>,
    pub raised_ms: i64,
}

/// Where an alert's delivery to one webhook stands.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct DeliveryState {
    pub webhook: u16,
    pub host: String,
    pub format: i8,
    pub attempts: u64,
    /// The latest attempt's outcome code (`Outcome as i8`).
    pub outcome: i8,
    pub status: u16,
    pub last_ms: i64,
}

/// The alert stage's tables in one database.
#[derive(Clone)]
pub struct Store {
    client: Client,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(client: Client) -> Self {
        Store { client }
    }

    /// The tables of [`TABLES`] the database lacks (all of them when the
    /// database itself is missing).
    pub async fn missing_tables(&self) -> Result<Vec<&'static str>, StoreError> {
        let sql = format!(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND name IN {}",
            id_list(TABLES)
        );
        let present: Vec<String> = match self.client.query(&sql).fetch_all().await {
            Ok(p) => p,
            Err(e) => {
                let e = StoreError::of(e);
                if e.is_missing_schema() {
                    return Ok(TABLES.to_vec());
                }
                return Err(e);
            }
        };
        Ok(TABLES
            .into_iter()
            .filter(|t| !present.iter().any(|p| p == t))
            .collect())
    }

    /// Which of `ids` `alerts` holds already.
    pub async fn stored_alerts(&self, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT DISTINCT alert_id FROM alerts WHERE alert_id IN {}",
            id_list(ids.iter().copied())
        );
        let found: Vec<String> = self
            .client
            .query(&sql)
            .fetch_all()
            .await
            .map_err(StoreError::of)?;
        Ok(found.into_iter().collect())
    }

    /// Per alert of `ids`, the webhooks (index, host) its delivery reached a
    /// final outcome at (`no_webhook` rows as index 0, host "").
    pub async fn final_deliveries(
        &self,
        ids: &[&str],
    ) -> Result<HashSet<(String, u16, String)>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        #[derive(Row, Deserialize)]
        struct Final {
            alert_id: String,
            webhook: u16,
            host: String,
        }
        let sql = format!(
            "SELECT alert_id, webhook, host FROM alert_deliveries \
             WHERE alert_id IN {} AND outcome IN ('delivered', 'dead', 'no_webhook') \
             GROUP BY alert_id, webhook, host",
            id_list(ids.iter().copied())
        );
        let found: Vec<Final> = self
            .client
            .query(&sql)
            .fetch_all()
            .await
            .map_err(StoreError::of)?;
        Ok(found
            .into_iter()
            .map(|f| (f.alert_id, f.webhook, f.host))
            .collect())
    }

    pub async fn insert_alerts(&self, rows: &[AlertRow]) -> Result<(), StoreError> {
        self.insert("alerts", rows).await
    }

    pub async fn insert_deliveries(&self, rows: &[DeliveryRow]) -> Result<(), StoreError> {
        self.insert("alert_deliveries", rows).await
    }

    pub async fn insert_action(&self, row: &ActionRow) -> Result<(), StoreError> {
        self.insert("alert_actions", std::slice::from_ref(row))
            .await
    }

    /// The alert `id`, if stored.
    pub async fn alert(&self, id: &str) -> Result<Option<AlertSummary>, StoreError> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        self.client
            .query(
                "SELECT alert_id, tenant, department, rule, severity, customer_id, summary, \
                 reasons, raised_ms FROM alerts WHERE alert_id = ? LIMIT 1",
            )
            .bind(id)
            .fetch_optional()
            .await
            .map_err(StoreError::of)
    }

    /// The first acknowledgement and the first resolution of alert `id`.
    pub async fn lifecycle(&self, id: &str) -> Result<Lifecycle, StoreError> {
        let rows: Vec<ActionRow> = self
            .client
            .query(
                "SELECT at, at_ms, alert_id, tenant, department, action, by, note \
                 FROM alert_actions WHERE alert_id = ? ORDER BY at_ms",
            )
            .bind(id)
            .fetch_all()
            .await
            .map_err(StoreError::of)?;
        let first = |a: Action| rows.iter().find(|r| r.action == a as i8).cloned();
        Ok(Lifecycle {
            acknowledged: first(Action::Ack),
            resolved: first(Action::Resolve),
        })
    }

    /// Where alert `id`'s delivery to each webhook stands.
    pub async fn deliveries(&self, id: &str) -> Result<Vec<DeliveryState>, StoreError> {
        self.client
            .query(
                "SELECT webhook, any(host) AS host, any(format) AS format, count() AS attempts, \
                 argMax(outcome, at_ms) AS outcome, argMax(status, at_ms) AS status, \
                 max(at_ms) AS last_ms \
                 FROM alert_deliveries WHERE alert_id = ? GROUP BY webhook ORDER BY webhook",
            )
            .bind(id)
            .fetch_all()
            .await
            .map_err(StoreError::of)
    }

    async fn insert<T>(&self, table: &str, rows: &[T]) -> Result<(), StoreError>
    where
        T: serde::Serialize + for<'a> Row<Value<'a> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<T>(table)
            .await
            .map_err(StoreError::of)?;
        for r in rows {
            insert.write(r).await.map_err(StoreError::of)?;
        }
        insert.end().await.map_err(StoreError::of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_reach_a_query() {
        assert!(is_valid_id("0123456789abcdef0123456789abcdef"));
        assert!(is_valid_id("a-b_C"));
        for bad in ["", "a'b", "a b", "a,b", "x\\", &"a".repeat(65), "配送"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        assert_eq!(id_list(["a", "x'); DROP", "b"]), "('a','b')");
    }

    #[test]
    fn errors_know_their_code_and_whether_they_pass() {
        let e = StoreError::of(clickhouse::error::Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table x.alerts doesn't exist.".into(),
        ));
        assert_eq!(e.code, Some(60));
        assert!(e.is_missing_schema() && !e.transient);
        let e = StoreError::of(clickhouse::error::Error::BadResponse(
            "Code: 241. DB::Exception: Memory limit exceeded".into(),
        ));
        assert!(e.transient && !e.is_missing_schema());
        assert!(StoreError::of(clickhouse::error::Error::TimedOut).transient);
    }
}
