//! Erasure: a customer asks to be forgotten (PIPL, GDPR). `xoflow erase
//! --tenant T (--customer ID | --email E | --phone P | --handle H)` and
//! `POST /v1/erasures` run [`erase`]; docs/privacy.md is the user's side.
//!
//! ```text
//! subject ──hash (the tenant's key)──► customers C, identifiers H ◄──┐ expanded twice: the link table,
//!                                          │                         │ and the ids and hashes `events` holds together
//!                                          ├──► ClickHouse: anonymise events, survey_answers, alerts,
//!                                          │    alert_actions, dead_letters; delete customer_profile rows
//!                                          ├──► Kafka: erase notices (running enrich instances forget),
//!                                          │    link and changelog tombstones (xoflow_enrich::erase)
//!                                          └──► erasure_receipts: counts, never the personal data
//! ```
//!
//! Rows that carry a Kafka lineage are anonymised in place rather than
//! deleted: the sink reads its position and its dedup set back from them
//! (docs/clickhouse.md, "Exactly once"), so a deleted row would be read
//! from Kafka and stored again. Anonymised, a row keeps its kind, scores,
//! amounts, times, touchpoint, store and lineage, and loses every column
//! that identifies or describes the person (ids, hashes, texts, attributes,
//! URLs, order, call, session and post ids, the protobuf copy). The
//! aggregates therefore keep counting the customer's events, anonymously,
//! and stay equal to the raw rows. `customer_profile`, one row per customer
//! and derived, loses the customer's rows.
//!
//! Idempotent: a second run finds no id, hash or text left and changes
//! nothing (its receipt counts zeros); an unknown subject is the same
//! no-op.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use xoflow_common::clock;
use xoflow_enrich::{EnrichError, erase::Eraser};
use xoflow_ingest::{normalise::Normaliser, tenant::Tenants};
use xoflow_proto::v1::CustomerIdentity;

use crate::Config;

/// Longest wait for ClickHouse to finish the erasure's mutations.
const MUTATIONS_DEADLINE: Duration = Duration::from_secs(300);

/// Most values in one `IN (...)` list (a query stays far below
/// ClickHouse's 256 KiB `max_query_size`).
const CHUNK: usize = 2_000;

/// Whom to erase: one identifier, as the tenant knows the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Customer(String),
    Email(String),
    Phone(String),
    Handle(String),
}

impl Subject {
    /// The kind of identifier, as the receipt records it (never the value).
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Customer(_) => "customer",
            Subject::Email(_) => "email",
            Subject::Phone(_) => "phone",
            Subject::Handle(_) => "handle",
        }
    }

    fn code(&self) -> i8 {
        match self {
            Subject::Customer(_) => 1,
            Subject::Email(_) => 2,
            Subject::Phone(_) => 3,
            Subject::Handle(_) => 4,
        }
    }
}

/// What an erasure did: returned to the caller and stored (without
/// `found`'s subject) in `erasure_receipts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    pub erasure_id: String,
    pub tenant: String,
    /// `customer`, `email`, `phone` or `handle`.
    pub subject: &'static str,
    pub requested_by: String,
    pub requested_at: String,
    pub completed_at: String,
    /// Whether anything was held for the subject.
    pub found: bool,
    /// Customer ids and hashed identifiers the subject led to.
    pub customers: u32,
    pub identifiers: u32,
    /// Rows anonymised (or, for `customer_profile`, deleted) per table.
    pub rows: BTreeMap<String, u64>,
    pub link_tombstones: u32,
    pub changelog_tombstones: u32,
    pub notices: u32,
}

impl Receipt {
    /// The receipt as pretty-printed JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Why an erasure did not complete. A failed erasure may have done part of
/// its work; running it again finishes it (every step is idempotent).
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// The request itself: an empty value, a malformed e-mail or phone.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("migrating the schema: {0}")]
    Schema(String),
    #[error("kafka: {0}")]
    Kafka(#[from] EnrichError),
    #[error("ClickHouse did not finish the erasure's mutations within {0:?}; run it again")]
    Mutations(Duration),
}

impl EraseError {
    /// Whether retrying later can help (not for a bad request).
    pub fn is_invalid(&self) -> bool {
        matches!(self, EraseError::Invalid { .. })
    }
}

/// The row of `erasure_receipts`.
#[derive(Debug, Row, Serialize)]
struct ReceiptRow {
    erasure_id: String,
    tenant: String,
    subject: i8,
    requested_by: String,
    requested_at: u32,
    completed_at: u32,
    customers: u32,
    identifiers: u32,
    tables: Vec<String>,
    rows: Vec<u64>,
    link_tombstones: u32,
    changelog_tombstones: u32,
    notices: u32,
}

/// Erases `subject` of `tenant` everywhere xoflow keeps it (see the module
/// doc); `requested_by` is recorded on the receipt (an API key's source or
/// `cli`), so do not pass personal data there.
pub async fn erase(
    cfg: &Config,
    tenant: &str,
    subject: Subject,
    requested_by: &str,
) -> Result<Receipt, EraseError> {
    let requested_at = clock::now_unix_secs();
    if tenant.is_empty() {
        return Err(EraseError::Invalid {
            field: "tenant",
            reason: "a tenant is required".into(),
        });
    }
    let (mut customers, mut identifiers) = subject_keys(cfg, tenant, &subject)?;
    // The receipts table (and every column anonymised) exist from
    // migration 13 on.
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .map_err(|e| EraseError::Schema(e.to_string()))?;
    let ch = cfg.clickhouse.client();
    let mut eraser = Eraser::open(&cfg.kafka, &cfg.enrich).await?;
    // Twice: an e-mail leads to a customer, whose other identifiers (and
    // their customers, after a re-point) are the same person's.
    for _ in 0..2 {
        let (c, mut h) = eraser.linked(&customers, &identifiers)?;
        // The link table names a customer by its id alone, so another
        // tenant's customer with the same id brings that tenant's
        // identifiers along. A hash is keyed by its tenant: one stored
        // under another tenant is that tenant's, and is left alone.
        if !h.is_empty() {
            let foreign: BTreeSet<String> = ch
                .query(&format!(
                    "SELECT DISTINCT h FROM events \
                     ARRAY JOIN [email_hash, phone_hash, social_handle_hash, device_id_hash] AS h \
                     WHERE tenant != {} AND h IN {}",
                    lit(tenant),
                    list(&h)
                ))
                .fetch_all::<String>()
                .await?
                .into_iter()
                .collect();
            h.retain(|x| !foreign.contains(x));
        }
        customers.extend(c);
        identifiers.extend(h);
        if !identifiers.is_empty() {
            let more: Vec<String> = ch
                .query(&format!(
                    "SELECT DISTINCT customer_id FROM events WHERE tenant = {} AND customer_id != '' AND ({})",
                    lit(tenant),
                    hashes_in(&identifiers)
                ))
                .fetch_all()
                .await?;
            customers.extend(more);
        }
        if !customers.is_empty() {
            let more: Vec<String> = ch
                .query(&format!(
                    "SELECT DISTINCT h FROM events \
                     ARRAY JOIN [email_hash, phone_hash, social_handle_hash, device_id_hash] AS h \
                     WHERE tenant = {} AND customer_id IN {} AND h != ''",
                    lit(tenant),
                    list(&customers)
                ))
                .fetch_all()
                .await?;
            identifiers.extend(more);
        }
        dedup(&mut customers);
        dedup(&mut identifiers);
    }

    // The events: every revision of every event of the customer or one of
    // the identifiers (revision 0 of an event a link resolved later
    // carries no customer id, only its hash).
    let mut of_subject = Vec::new();
    if !customers.is_empty() {
        of_subject.push(format!("customer_id IN {}", list(&customers)));
    }
    if !identifiers.is_empty() {
        of_subject.push(hashes_in(&identifiers));
    }
    let event_ids: Vec<String> = if of_subject.is_empty() {
        Vec::new()
    } else {
        ch.query(&format!(
            "SELECT DISTINCT event_id FROM events WHERE tenant = {} AND ({})",
            lit(tenant),
            of_subject.join(" OR ")
        ))
        .fetch_all()
        .await?
    };
    let t = lit(tenant);
    let mut alert_ids: Vec<String> = Vec::new();
    if !customers.is_empty() {
        alert_ids.extend(
            ch.query(&format!(
                "SELECT DISTINCT alert_id FROM alerts WHERE tenant = {t} AND customer_id IN {}",
                list(&customers)
            ))
            .fetch_all::<String>()
            .await?,
        );
    }
    for chunk in event_ids.chunks(CHUNK) {
        alert_ids.extend(
            ch.query(&format!(
                "SELECT DISTINCT alert_id FROM alerts WHERE tenant = {t} AND event_id IN {}",
                list(chunk)
            ))
            .fetch_all::<String>()
            .await?,
        );
    }
    dedup(&mut alert_ids);

    let mut m = Mutations::new(cfg);
    for chunk in event_ids.chunks(CHUNK) {
        let ids = list(chunk);
        m.update(
            &ch,
            "events",
            EVENTS_ANONYMISED,
            &format!("tenant = {t} AND event_id IN {ids}"),
        )
        .await?;
        m.update(
            &ch,
            "survey_answers",
            "text = ''",
            &format!("tenant = {t} AND event_id IN {ids}"),
        )
        .await?;
    }
    if !customers.is_empty() {
        m.delete(
            &ch,
            "customer_profile",
            &format!("tenant = {t} AND customer_id IN {}", list(&customers)),
        )
        .await?;
    }
    for chunk in alert_ids.chunks(CHUNK) {
        let ids = list(chunk);
        m.update(
            &ch,
            "alerts",
            "customer_id = '', summary = '', reasons = emptyArrayString(), order_id = '', \
             call_id = '', alert_proto = ''",
            &format!("alert_id IN {ids}"),
        )
        .await?;
        m.update(
            &ch,
            "alert_actions",
            "note = ''",
            &format!("alert_id IN {ids}"),
        )
        .await?;
    }
    // Dead letters: refused records of the subject's events, and any
    // refused record whose payload names the customer (quoted as in JSON,
    // or as protobuf's customer_id field) or carries one of the hashes or
    // the raw identifier. A dead letter whose tenant was missing is
    // searched too.
    let mut needles = Vec::new();
    for c in &customers {
        needles.push(format!(
            "position(payload, {}) > 0",
            lit(&format!("\"{c}\""))
        ));
        if c.len() < 128 {
            let mut framed = vec![0x0a, c.len() as u8];
            framed.extend_from_slice(c.as_bytes());
            needles.push(format!("position(payload, {}) > 0", lit_bytes(&framed)));
        }
    }
    for h in &identifiers {
        needles.push(format!("position(payload, {}) > 0", lit(h)));
    }
    for raw in raw_forms(&subject) {
        needles.push(format!(
            "positionCaseInsensitive(payload, {}) > 0",
            lit(&raw)
        ));
    }
    let by_event = |ids: &[String]| format!("event_id IN {}", list(ids));
    let mut dead_conditions: Vec<String> = event_ids.chunks(CHUNK).map(by_event).collect();
    if !needles.is_empty() {
        dead_conditions.push(needles.join(" OR "));
    }
    for c in dead_conditions {
        m.update(
            &ch,
            "dead_letters",
            "payload = '', description = ''",
            &format!("tenant IN ({t}, '') AND ({c})"),
        )
        .await?;
    }
    m.wait(&ch).await?;

    let kafka = eraser.erase(tenant, &customers, &identifiers).await?;
    let completed_at = clock::now_unix_secs();
    let found = m.rows.values().any(|n| *n > 0)
        || kafka.link_tombstones > 0
        || kafka.changelog_tombstones > 0;
    let receipt = Receipt {
        erasure_id: erasure_id(),
        tenant: tenant.to_owned(),
        subject: subject.kind(),
        requested_by: requested_by.to_owned(),
        requested_at: rfc3339(requested_at),
        completed_at: rfc3339(completed_at),
        found,
        customers: customers.len() as u32,
        identifiers: identifiers.len() as u32,
        rows: m.rows.clone(),
        link_tombstones: kafka.link_tombstones,
        changelog_tombstones: kafka.changelog_tombstones,
        notices: kafka.notices,
    };
    let mut insert = ch.insert::<ReceiptRow>("erasure_receipts").await?;
    insert
        .write(&ReceiptRow {
            erasure_id: receipt.erasure_id.clone(),
            tenant: receipt.tenant.clone(),
            subject: subject.code(),
            requested_by: receipt.requested_by.clone(),
            requested_at,
            completed_at,
            customers: receipt.customers,
            identifiers: receipt.identifiers,
            tables: m.rows.keys().cloned().collect(),
            rows: m.rows.values().copied().collect(),
            link_tombstones: kafka.link_tombstones,
            changelog_tombstones: kafka.changelog_tombstones,
            notices: kafka.notices,
        })
        .await?;
    insert.end().await?;
    // Never the subject, its hash or the customer ids.
    tracing::info!(
        erasure_id = %receipt.erasure_id,
        tenant,
        subject = subject.kind(),
        found,
        "erasure completed"
    );
    Ok(receipt)
}

/// Every column of `events` that identifies or describes the person.
const EVENTS_ANONYMISED: &str = "customer_id = '', email_hash = '', phone_hash = '', \
     social_handle_hash = '', device_id_hash = '', attr_keys = emptyArrayString(), \
     attr_values = emptyArrayString(), text = '', answer_texts = arrayMap(x -> '', answer_texts), \
     url = '', path = '', social_url = '', social_post_id = '', session_id = '', ctx_session_id = '', \
     order_id = '', ctx_order_id = '', trigger_order_id = '', call_id = '', ctx_call_id = '', \
     trigger_call_id = '', event_proto = ''";

/// The subject as customer ids and hashed identifiers, hashed with the
/// tenant's key exactly as the collectors hash events.
fn subject_keys(
    cfg: &Config,
    tenant: &str,
    subject: &Subject,
) -> Result<(Vec<String>, Vec<String>), EraseError> {
    let (field, value) = match subject {
        Subject::Customer(v) => ("customer", v),
        Subject::Email(v) => ("email", v),
        Subject::Phone(v) => ("phone", v),
        Subject::Handle(v) => ("handle", v),
    };
    if value.trim().is_empty() {
        return Err(EraseError::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    if let Subject::Customer(id) = subject {
        return Ok((vec![id.clone()], Vec::new()));
    }
    let tenants = Tenants::from_config(&cfg.ingest).map_err(|e| EraseError::Invalid {
        field: "tenant",
        reason: e.to_string(),
    })?;
    let n = Normaliser::with_tenants(
        std::sync::Arc::new(tenants),
        cfg.ingest.max_future_skew,
        cfg.ingest.max_age,
    );
    let identity = match subject {
        Subject::Email(v) => CustomerIdentity {
            email: v.clone(),
            ..Default::default()
        },
        Subject::Phone(v) => CustomerIdentity {
            phone: v.clone(),
            ..Default::default()
        },
        _ => CustomerIdentity {
            social_handle: value.clone(),
            ..Default::default()
        },
    };
    let hashed = n
        .hash_customer(tenant, identity)
        .map_err(|v| EraseError::Invalid {
            field,
            reason: v
                .first()
                .map_or_else(|| "malformed".into(), |v| v.description.clone()),
        })?;
    let h = [
        hashed.email_hash,
        hashed.phone_hash,
        hashed.social_handle_hash,
        hashed.device_id_hash,
    ]
    .into_iter()
    .filter(|h| !h.is_empty())
    .collect();
    Ok((Vec::new(), h))
}

/// The raw identifier in the forms a refused record may carry it.
fn raw_forms(subject: &Subject) -> Vec<String> {
    match subject {
        Subject::Customer(_) => Vec::new(),
        Subject::Email(e) => {
            let mut v = vec![e.trim().to_owned()];
            if let Some(n) = xoflow_ingest::normalise::normalise_email(e) {
                v.push(n);
            }
            v
        }
        Subject::Phone(p) => {
            let digits: String = p.chars().filter(char::is_ascii_digit).collect();
            let mut v = vec![p.trim().to_owned(), digits];
            if let Some(n) = xoflow_ingest::normalise::normalise_phone(p) {
                // +8613800138000, and the national digits 13800138000.
                v.push(n.trim_start_matches('+').to_owned());
                v.push(n);
            }
            v
        }
        Subject::Handle(h) => vec![h.trim().to_owned()],
    }
    .into_iter()
    .filter(|s| s.len() >= 4)
    .collect()
}

/// Runs the erasure's mutations and counts the rows each touches.
struct Mutations {
    cluster: Option<String>,
    rows: BTreeMap<String, u64>,
    tables: BTreeSet<&'static str>,
}

impl Mutations {
    fn new(cfg: &Config) -> Self {
        let mut rows = BTreeMap::new();
        for t in [
            "events",
            "survey_answers",
            "customer_profile",
            "alerts",
            "alert_actions",
            "dead_letters",
        ] {
            rows.insert(t.to_owned(), 0);
        }
        Mutations {
            cluster: cfg.clickhouse.cluster.clone(),
            rows,
            tables: BTreeSet::new(),
        }
    }

    /// `ALTER TABLE`: on a cluster, of each shard's local table.
    fn target(&self, table: &str) -> String {
        match &self.cluster {
            Some(c) => format!("{table}_local ON CLUSTER {c}"),
            None => table.to_owned(),
        }
    }

    async fn count(
        &mut self,
        ch: &clickhouse::Client,
        table: &'static str,
        condition: &str,
    ) -> Result<u64, EraseError> {
        let n: u64 = ch
            .query(&format!("SELECT count() FROM {table} WHERE {condition}"))
            .fetch_one()
            .await?;
        *self.rows.entry(table.to_owned()).or_default() += n;
        Ok(n)
    }

    async fn update(
        &mut self,
        ch: &clickhouse::Client,
        table: &'static str,
        set: &str,
        condition: &str,
    ) -> Result<(), EraseError> {
        if self.count(ch, table, condition).await? == 0 {
            return Ok(());
        }
        let sql = format!(
            "ALTER TABLE {} UPDATE {set} WHERE {condition}",
            self.target(table)
        );
        ch.query(&sql).execute().await?;
        self.tables.insert(table);
        Ok(())
    }

    async fn delete(
        &mut self,
        ch: &clickhouse::Client,
        table: &'static str,
        condition: &str,
    ) -> Result<(), EraseError> {
        if self.count(ch, table, condition).await? == 0 {
            return Ok(());
        }
        let sql = format!(
            "ALTER TABLE {} DELETE WHERE {condition}",
            self.target(table)
        );
        ch.query(&sql).execute().await?;
        self.tables.insert(table);
        Ok(())
    }

    /// Waits until ClickHouse has applied every mutation of the tables
    /// touched (mutations run in the background, part by part).
    async fn wait(&self, ch: &clickhouse::Client) -> Result<(), EraseError> {
        if self.tables.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self
            .tables
            .iter()
            .map(|t| match &self.cluster {
                Some(_) => format!("{t}_local"),
                None => (*t).to_owned(),
            })
            .collect();
        let sql = format!(
            "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
             AND table IN {} AND is_done = 0",
            list(&names)
        );
        let started = std::time::Instant::now();
        loop {
            let pending: u64 = ch.query(&sql).fetch_one().await?;
            if pending == 0 {
                return Ok(());
            }
            if started.elapsed() > MUTATIONS_DEADLINE {
                return Err(EraseError::Mutations(MUTATIONS_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `(email_hash IN H OR phone_hash IN H OR ...)`.
fn hashes_in(identifiers: &[String]) -> String {
    let l = list(identifiers);
    format!(
        "email_hash IN {l} OR phone_hash IN {l} OR social_handle_hash IN {l} OR device_id_hash IN {l}"
    )
}

/// A ClickHouse string literal.
fn lit(s: &str) -> String {
    lit_bytes(s.as_bytes())
}

/// A ClickHouse string literal of any bytes: printable ASCII as is (quote
/// and backslash escaped), everything else as `\xHH`.
fn lit_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('\'');
    for &c in b {
        match c {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(c as char),
            _ => out.push_str(&format!("\\x{c:02x}")),
        }
    }
    out.push('\'');
    out
}

/// `('a', 'b')`.
fn list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| lit(v)).collect();
    format!("({})", items.join(", "))
}

fn dedup(v: &mut Vec<String>) {
    v.sort();
    v.dedup();
}

/// 32 random hex digits.
fn erasure_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn rfc3339(secs: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(secs), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The body of `POST /v1/erasures`: exactly one of the identifiers; the
/// tenant is the API key's (or `tenant`, when the API is open).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub handle: Option<String>,
}

impl EraseRequest {
    /// The one subject named, or the field at fault.
    pub fn subject(self) -> Result<Subject, EraseError> {
        let given: Vec<Subject> = [
            self.customer_id.map(Subject::Customer),
            self.email.map(Subject::Email),
            self.phone.map(Subject::Phone),
            self.handle.map(Subject::Handle),
        ]
        .into_iter()
        .flatten()
        .collect();
        match <[Subject; 1]>::try_from(given) {
            Ok([s]) => Ok(s),
            Err(_) => Err(EraseError::Invalid {
                field: "customer_id",
                reason: "exactly one of customer_id, email, phone, handle is required".into(),
            }),
        }
    }
}

pub mod api {
    //! `POST /v1/erasures` on the case API's listener (`alert.api_addr`),
    //! authenticated like it: `x-api-key` or `Authorization: Bearer`, and
    //! a key erases only in its own tenant.
    //!
    //! ```text
    //! POST /v1/erasures  {"customer_id": "c-42"} | {"email": ...} | {"phone": ...} | {"handle": ...}
    //!   200 the receipt (JSON) · 400 {"error", "field"} · 401 · 503 (retry: the erasure is idempotent)
    //! ```

    use std::sync::Arc;

    use axum::{
        Json, Router,
        body::Bytes,
        extract::State,
        http::{HeaderMap, StatusCode},
        response::{IntoResponse, Response},
        routing::post,
    };
    use serde_json::json;
    use xoflow_alert::{ApiKeys, Caller, api::auth::key_from_headers};

    use super::{EraseError, EraseRequest, erase};
    use crate::Config;

    #[derive(Clone)]
    struct ApiState {
        cfg: Arc<Config>,
        keys: ApiKeys,
    }

    /// The route, to be merged into the case API's router.
    pub fn router(cfg: Arc<Config>, keys: ApiKeys) -> Router {
        Router::new()
            .route("/v1/erasures", post(handle))
            .with_state(ApiState { cfg, keys })
    }

    fn error(status: StatusCode, error: String, field: Option<&str>) -> Response {
        (status, Json(json!({ "error": error, "field": field }))).into_response()
    }

    async fn handle(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let caller = match s.keys.authenticate(key_from_headers(
            header("x-api-key"),
            header("authorization"),
        )) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::UNAUTHORIZED, e.to_string(), None),
        };
        let req: EraseRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), None),
        };
        let tenant = match (&caller, req.tenant.clone()) {
            (Caller::Tenant(t), None) => t.clone(),
            (Caller::Tenant(t), Some(asked)) if *t == asked => asked,
            (Caller::Tenant(_), Some(_)) => {
                return error(
                    StatusCode::FORBIDDEN,
                    "this key may not erase in that tenant".into(),
                    Some("tenant"),
                );
            }
            (Caller::Anyone, Some(t)) => t,
            (Caller::Anyone, None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "tenant is required".into(),
                    Some("tenant"),
                );
            }
        };
        let subject = match req.subject() {
            Ok(s) => s,
            Err(EraseError::Invalid { field, reason }) => {
                return error(StatusCode::BAD_REQUEST, reason, Some(field));
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), None),
        };
        let by = match &caller {
            Caller::Tenant(t) => format!("api:{t}"),
            Caller::Anyone => "api".to_owned(),
        };
        match erase(&s.cfg, &tenant, subject, &by).await {
            Ok(receipt) => (StatusCode::OK, Json(receipt)).into_response(),
            Err(EraseError::Invalid { field, reason }) => {
                error(StatusCode::BAD_REQUEST, reason, Some(field))
            }
            Err(e) => {
                tracing::warn!(error = %e, "erasure failed; the caller retries");
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_backslashes_and_bytes() {
        assert_eq!(lit("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(lit_bytes(&[0x0a, 3, b'c']), "'\\x0a\\x03c'");
        assert_eq!(list(&["x".into(), "y".into()]), "('x', 'y')");
    }

    #[test]
    fn a_request_names_exactly_one_subject() {
        let r = EraseRequest {
            email: Some("a@b.cn".into()),
            ..Default::default()
        };
        assert_eq!(r.subject().ok(), Some(Subject::Email("a@b.cn".into())));
        assert!(EraseRequest::default().subject().is_err());
        let two = EraseRequest {
            email: Some("a@b.cn".into()),
            customer_id: Some("c".into()),
            ..Default::default()
        };
        assert!(two.subject().is_err());
    }

    #[test]
    fn raw_forms_of_a_phone() {
        let f = raw_forms(&Subject::Phone("138 0013 8000".into()));
        assert!(f.contains(&"+8613800138000".to_owned()), "{f:?}");
        assert!(f.contains(&"8613800138000".to_owned()), "{f:?}");
    }
}
