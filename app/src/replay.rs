//! `xoflow replay`: dead letters fixed and sent through ingest again.
//!
//! ```text
//! dead_letters (not replayed yet, filtered) ──► payload → JSON ──► fix-ups ──► ingest (validation, masking,
//!        ▲                                                                     the backfill lane, original ids)
//!        └──────────── marked: replay_outcome, replayed_at, replay_id ◄────────── accepted / refused
//! ```
//!
//! Reads the `dead_letters` table (the sink stores every dead letter of the
//! topic there), selects the rows never replayed that match the filters
//! (tenant, reason, field, stage, time), turns each payload into the JSON of
//! its event — a protobuf `Event` as its canonical JSON, a JSON record as
//! it is — applies the fix-ups in order, and sends the records through the
//! same judgement as a live request, on the backfill lane, keeping their
//! event ids (canonical events carry theirs, native records derive theirs
//! from their natural ids). Every row tried is then marked; a later replay
//! never selects it again. A record refused again gets a new dead letter
//! (with the new reason), which a later replay with a better fix-up can
//! take.
//!
//! Fix-ups: `--set PATH=VALUE` sets a field of every selected record,
//! `--map PATH:FROM=TO` replaces one value by another, `--drop PATH` removes
//! a field. PATH is dotted (`order.currency`, `customer.customer_id`,
//! `survey.answers.0.score`); a name matches the JSON key in snake or
//! camel case. VALUE is JSON when it parses as JSON (`5`, `true`,
//! `"5"`), else a string.
//!
//! Identifiers masked in a refused record (`[EMAIL]`, `[PHONE]`,
//! `[HANDLE]`: ingest masks a dead letter's payload) cannot be restored;
//! they are dropped from the replayed record, which keeps its customer id.
//!
//! At most once per row, at least once per record: ingest's
//! acknowledgement comes before the mark, so a crash in between replays
//! the rows again next time, with the same event ids, and the sink stores
//! each event once (docs/clickhouse.md, "Exactly once").

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use serde_json::Value;
use xoflow_common::{clock, dead_letter};
use xoflow_ingest::{
    core::Record,
    delivery::Lane,
    framing::decode_events,
    normalise::pii::PiiKind,
    sources::{self, Origin},
};
use xoflow_proto::{EventKind, Message, v1::Event};

use crate::Config;

/// One change applied to every selected record.
#[derive(Debug, Clone, PartialEq)]
pub enum Fixup {
    Set {
        path: String,
        value: Value,
    },
    Map {
        path: String,
        from: Value,
        to: Value,
    },
    Drop {
        path: String,
    },
}

impl Fixup {
    /// `PATH=VALUE`.
    pub fn parse_set(s: &str) -> Result<Self, String> {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s:?}: PATH=VALUE"))?;
        Ok(Fixup::Set {
            path: path.trim().to_owned(),
            value: json_or_string(value),
        })
    }

    /// `PATH:FROM=TO`.
    pub fn parse_map(s: &str) -> Result<Self, String> {
        let (path, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("--map {s:?}: PATH:FROM=TO"))?;
        let (from, to) = rest
            .split_once('=')
            .ok_or_else(|| format!("--map {s:?}: PATH:FROM=TO"))?;
        Ok(Fixup::Map {
            path: path.trim().to_owned(),
            from: json_or_string(from),
            to: json_or_string(to),
        })
    }

    fn apply(&self, v: &mut Value) {
        match self {
            Fixup::Set { path, value } => {
                if let Some(slot) = slot(v, path, true) {
                    *slot = value.clone();
                }
            }
            Fixup::Map { path, from, to } => {
                if let Some(slot) = slot(v, path, false)
                    && same(slot, from)
                {
                    *slot = to.clone();
                }
            }
            Fixup::Drop { path } => {
                let (parent, last) = match path.rsplit_once('.') {
                    Some((p, l)) => (slot(v, p, false), l),
                    None => (Some(v), path.as_str()),
                };
                if let Some(Value::Object(m)) = parent {
                    let key = key_in(m, last);
                    m.remove(&key);
                }
            }
        }
    }
}

fn json_or_string(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|_| Value::String(s.to_owned()))
}

/// Equal, a number and its string form counting as one (`5` and `"5"`).
fn same(a: &Value, b: &Value) -> bool {
    a == b
        || match (a, b) {
            (Value::String(s), other) | (other, Value::String(s)) => other
                .as_f64()
                .is_some_and(|n| s.trim().parse::<f64>().ok() == Some(n)),
            _ => false,
        }
}

/// `customer_id` → `customerId`.
fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The key of `m` a path segment names: as written, or in camel case.
fn key_in(m: &serde_json::Map<String, Value>, name: &str) -> String {
    if m.contains_key(name) {
        return name.to_owned();
    }
    let c = camel(name);
    if m.contains_key(&c) {
        return c;
    }
    name.to_owned()
}

/// The value at a dotted path; `create` makes missing objects on the way.
fn slot<'a>(v: &'a mut Value, path: &str, create: bool) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = match cur {
            Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            Value::Object(m) => {
                let key = key_in(m, seg);
                if !m.contains_key(&key) {
                    if !create {
                        return None;
                    }
                    m.insert(key.clone(), Value::Object(Default::default()));
                }
                m.get_mut(&key)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Which dead letters to replay, and how to fix them.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub field: Option<String>,
    /// Unix seconds: refused at or after / before.
    pub since: Option<u32>,
    pub until: Option<u32>,
    /// The records are a source's native JSON of this kind (as posted to
    /// `/v1/sources/{kind}/{source}`), not canonical events.
    pub kind: Option<EventKind>,
    pub fixups: Vec<Fixup>,
    /// Most rows per run.
    pub limit: u64,
    /// Only show what would be sent.
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replay_id: String,
    pub selected: u64,
    pub accepted: u64,
    pub refused: u64,
    pub unreplayable: u64,
    /// The first refusals: (event id, field, reason).
    pub first_refusals: Vec<(String, String, String)>,
}

#[derive(Debug, Row, Deserialize)]
struct Letter {
    kafka_topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    content_type: String,
    payload_hex: String,
    tenant: String,
    source: String,
}

/// Why a replay stopped. Rows not marked yet are selected again next time.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("migrating the schema: {0}")]
    Schema(String),
    #[error("ingest: {0}")]
    Ingest(String),
    #[error("ClickHouse did not apply the replay marks within 300 s; they apply later")]
    Marks,
}

/// Replays the dead letters `opts` selects (see the module doc).
pub async fn replay(cfg: &Config, opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    xoflow_sink::migrate(&cfg.clickhouse)
        .await
        .map_err(|e| ReplayError::Schema(e.to_string()))?;
    let ch = cfg.clickhouse.client();
    let mut filter = vec![
        "replay_outcome = ''".to_owned(),
        "kafka_offset >= 0".to_owned(),
        format!(
            "content_type IN ({}, {}, {})",
            lit(dead_letter::PROTOBUF),
            lit(dead_letter::PROTOBUF_EVENT),
            lit(dead_letter::JSON)
        ),
    ];
    if let Some(t) = &opts.tenant {
        filter.push(format!("tenant = {}", lit(t)));
    }
    if let Some(r) = &opts.reason {
        filter.push(format!("reason = {}", lit(r)));
    }
    if let Some(f) = &opts.field {
        filter.push(format!("field = {}", lit(f)));
    }
    if let Some(s) = opts.since {
        filter.push(format!("toUInt32(at) >= {s}"));
    }
    if let Some(u) = opts.until {
        filter.push(format!("toUInt32(at) < {u}"));
    }
    // One row per dead letter: the sink may have stored one twice after a
    // crash (docs/clickhouse.md, "Exactly once", point 2).
    let letters: Vec<Letter> = ch
        .query(&format!(
            "SELECT kafka_topic, kafka_partition, kafka_offset, any(content_type), hex(any(payload)), \
                    any(tenant), any(source) \
             FROM dead_letters WHERE {} \
             GROUP BY kafka_topic, kafka_partition, kafka_offset \
             ORDER BY kafka_topic, kafka_partition, kafka_offset LIMIT {}",
            filter.join(" AND "),
            opts.limit.max(1)
        ))
        .fetch_all()
        .await?;
    let mut report = ReplayReport {
        replay_id: replay_id(),
        selected: letters.len() as u64,
        ..Default::default()
    };
    if letters.is_empty() || opts.dry_run {
        return Ok(report);
    }
    let ingestor = xoflow_ingest::build(&cfg.ingest, &cfg.kafka)
        .map_err(|e| ReplayError::Ingest(e.to_string()))?;
    let mut outcomes: Vec<(&Letter, &'static str)> = Vec::with_capacity(letters.len());
    let chunk = ingestor.max_batch_events().clamp(1, 1_000);
    for batch in letters.chunks(chunk) {
        let mut records = Vec::new();
        let mut sent = Vec::new();
        for l in batch {
            match record(l, opts) {
                Some(r) => {
                    records.push(r);
                    sent.push(l);
                }
                None => {
                    report.unreplayable += 1;
                    outcomes.push((l, "unreplayable"));
                }
            }
        }
        if records.is_empty() {
            continue;
        }
        let results = ingestor
            .ingest(records, 0, None, Lane::Backfill)
            .await
            .map_err(|e| ReplayError::Ingest(e.to_string()))?;
        for (l, r) in sent.into_iter().zip(results) {
            if r.accepted {
                report.accepted += 1;
                outcomes.push((l, "accepted"));
            } else {
                report.refused += 1;
                outcomes.push((l, "refused"));
                if report.first_refusals.len() < 10
                    && let Some(v) = r.violations.first()
                {
                    report.first_refusals.push((
                        r.event_id.clone(),
                        v.field.clone(),
                        v.reason.clone(),
                    ));
                }
            }
        }
    }
    mark(&ch, cfg, &report.replay_id, &outcomes).await?;
    tracing::info!(
        replay_id = %report.replay_id,
        selected = report.selected,
        accepted = report.accepted,
        refused = report.refused,
        unreplayable = report.unreplayable,
        "dead letters replayed"
    );
    Ok(report)
}

/// The dead letter as a record to judge again, fixed; `None` when its
/// payload holds no event.
fn record(l: &Letter, opts: &ReplayOptions) -> Option<Record> {
    let bytes = hex::decode(&l.payload_hex).ok()?;
    let mut v: Value = if l.content_type == dead_letter::JSON {
        serde_json::from_slice(&bytes).ok()?
    } else {
        serde_json::to_value(Event::decode(bytes.as_slice()).ok()?).ok()?
    };
    drop_masked_identifiers(&mut v);
    for f in &opts.fixups {
        f.apply(&mut v);
    }
    let json = serde_json::to_vec(&v).ok()?;
    Some(match opts.kind {
        Some(kind) => sources::decode(
            kind,
            &json,
            Origin {
                tenant: &l.tenant,
                source: &l.source,
            },
        ),
        None => {
            let mut r = decode_events(&json, true).pop()?;
            // A canonical event sent with an API key may leave its tenant
            // and source to the key; the dead letter recorded them, and
            // the replay, which has no key, takes them from there.
            if let Some(e) = r.event.as_mut() {
                for (field, recorded) in [(&mut e.tenant, &l.tenant), (&mut e.source, &l.source)] {
                    if field.is_empty() {
                        field.clone_from(recorded);
                    }
                }
            }
            r
        }
    })
}

/// Identifiers ingest masked whole in the dead letter (`"email":
/// "[EMAIL]"`): unrecoverable, dropped wherever they are (a canonical
/// event's `customer`, a native record's `respondent`, `caller` or
/// top-level `email`), so that the record is judged on the rest. Only
/// identifier fields: free text masked whole (a comment that was only a
/// phone number) stays, as it was accepted live.
fn drop_masked_identifiers(v: &mut Value) {
    /// Identifier fields, by their snake-case names (camel case is matched
    /// too, as the fix-ups match it).
    const IDENTIFIERS: [&str; 8] = [
        "email",
        "phone",
        "mobile",
        "social_handle",
        "handle",
        "device_id",
        "name",
        "id_number",
    ];
    let camels = IDENTIFIERS.map(camel);
    let identifier =
        |key: &str| IDENTIFIERS.contains(&key) || camels.iter().any(|c| c.as_str() == key);
    fn walk(v: &mut Value, identifier: &dyn Fn(&str) -> bool) {
        let masked = |x: &Value| {
            x.as_str().is_some_and(|s| {
                PiiKind::ALL.iter().any(|k| k.placeholder() == s) || s == "[HANDLE]"
            })
        };
        match v {
            Value::Object(m) => {
                m.retain(|k, x| !(identifier(k) && masked(x)));
                m.values_mut().for_each(|x| walk(x, identifier));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, identifier)),
            _ => {}
        }
    }
    walk(v, &identifier);
}

/// Marks the rows tried, by their lineage, and waits until ClickHouse has
/// applied the marks.
async fn mark(
    ch: &clickhouse::Client,
    cfg: &Config,
    replay_id: &str,
    outcomes: &[(&Letter, &'static str)],
) -> Result<(), ReplayError> {
    let table = match &cfg.clickhouse.cluster {
        Some(c) => format!("dead_letters_local ON CLUSTER {c}"),
        None => "dead_letters".to_owned(),
    };
    let now = clock::now_unix_secs();
    for outcome in ["accepted", "refused", "unreplayable"] {
        let rows: Vec<String> = outcomes
            .iter()
            .filter(|(_, o)| *o == outcome)
            .map(|(l, _)| {
                format!(
                    "({}, {}, {})",
                    lit(&l.kafka_topic),
                    l.kafka_partition,
                    l.kafka_offset
                )
            })
            .collect();
        for chunk in rows.chunks(2_000) {
            ch.query(&format!(
                "ALTER TABLE {table} UPDATE replay_outcome = {}, replayed_at = toDateTime({now}), \
                 replay_id = {} WHERE (kafka_topic, kafka_partition, kafka_offset) IN ({})",
                lit(outcome),
                lit(replay_id),
                chunk.join(", ")
            ))
            .execute()
            .await?;
        }
    }
    let started = std::time::Instant::now();
    loop {
        let pending: u64 = ch
            .query(
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
                 AND table IN ('dead_letters', 'dead_letters_local') AND is_done = 0",
            )
            .fetch_one()
            .await?;
        if pending == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(ReplayError::Marks);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A time given on the command line: RFC 3339 (`2026-11-14T00:00:00+08:00`)
/// or Unix seconds.
pub fn parse_time(s: &str) -> Result<u32, String> {
    if let Ok(secs) = s.parse::<u32>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{s:?}: RFC 3339 or Unix seconds ({e})"))
        .and_then(|t| u32::try_from(t.timestamp()).map_err(|_| format!("{s:?}: out of range")))
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn replay_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fixups_find_snake_and_camel_keys_and_map_only_the_value_named() {
        let mut v = json!({"eventId": "e1", "order": {"currency": "rmb", "amountMinor": "100"},
                           "customer": {"customerId": "c1", "email": "[EMAIL]"}});
        Fixup::parse_map("order.currency:rmb=CNY")
            .expect("map")
            .apply(&mut v);
        Fixup::parse_map("order.amount_minor:100=200")
            .expect("map")
            .apply(&mut v);
        Fixup::parse_map("order.currency:usd=USD")
            .expect("map")
            .apply(&mut v);
        Fixup::parse_set("location.store_id=sz-01")
            .expect("set")
            .apply(&mut v);
        Fixup::Drop {
            path: "customer.customer_id".into(),
        }
        .apply(&mut v);
        drop_masked_identifiers(&mut v);
        assert_eq!(
            v,
            json!({"eventId": "e1", "order": {"currency": "CNY", "amountMinor": 200},
                   "customer": {}, "location": {"store_id": "sz-01"}})
        );
        // A native record's masked identifiers too, wherever they are;
        // free text stays, masked whole or not.
        let mut native = json!({"respondent": {"id": "r1", "email": "[EMAIL]", "phone": "[PHONE]"},
                                "answers": [{"text": "call me at [PHONE]"}], "comment": "[PHONE]",
                                "caller": {"deviceId": "[PHONE]"}, "email": "[EMAIL]"});
        drop_masked_identifiers(&mut native);
        assert_eq!(
            native,
            json!({"respondent": {"id": "r1"}, "answers": [{"text": "call me at [PHONE]"}],
                   "comment": "[PHONE]", "caller": {}})
        );
        assert!(Fixup::parse_set("no-equals").is_err());
        assert!(Fixup::parse_map("a=b").is_err());
    }
}
