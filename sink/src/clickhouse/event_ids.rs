//! The `event_ids` look-up: which of a batch's (tenant, event id,
//! revision) ClickHouse already stores (docs/clickhouse.md, "Exactly
//! once", idempotency without a horizon), in `event_ids_by_time` by the
//! second of each event; for a batch reaching back before migration 17, in
//! `event_ids_hourly` by its hour too, and before migration 16 in
//! `event_ids` by its day as well.
//!
//! In: the batch's keys (tenant, event time in seconds, event id), less
//! the rows enrich vouched for as new revisions ([`EventIds::keys`]). Out:
//! the (tenant, event id, revision) triples the index holds for them. The
//! keys travel as HTTP *external data*: a tab-separated file part of a
//! multipart request that ClickHouse reads as a temporary table. Sent as a
//! string literal inside the query instead, 50,000 keys made a 2.4 MB
//! query that ClickHouse 18.16 took 0.35 s to parse and 0.65 s in all to
//! answer against an empty table; as external data the same look-up takes
//! 0.07 s. The `clickhouse` crate sends no file parts, so this module
//! speaks to the HTTP interface itself, with the crate's credentials
//! headers, over the same plain-HTTP connection pool kind, whose idle
//! connections it keeps as briefly ([`POOL_IDLE_TIMEOUT`]).

use std::{io::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{ClickHouseConfig, SinkError, row::RowRef};

/// The table name the keys take inside the query.
const KEYS: &str = "batch_keys";

/// Where migrations 17 and 16 recorded the event time from which the
/// index they added holds every id ([`EventIds::bound`]).
const BY_TIME_FROM: &str = "event_ids_by_time_from";
const HOURLY_FROM: &str = "event_ids_hourly_from";

/// The multipart boundary around the keys' file part.
const BOUNDARY: &str = "xoflow-event-ids-5c0f3b7e9a1d4e26";

/// How long an idle connection is kept for the next look-up: under the
/// server's `keep_alive_timeout` (3 s in ClickHouse 18.16's default
/// config, which `deploy/local` runs), as the `clickhouse` crate's own
/// client keeps its connections 2 s. With hyper's default of 90 s a
/// look-up could be written into a connection the server was closing, and
/// fail (`SendRequest`, seen once in a run of P): the batch was then
/// looked up again, whole, at its flush.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Looks batches up in the dedup index on one server (or, on a cluster, through
/// its `Distributed` table: ClickHouse sends external data on to every
/// shard).
#[derive(Clone)]
pub(super) struct EventIds {
    http: Client<HttpConnector, Full<Bytes>>,
    /// The look-up in `event_ids_by_time` alone.
    by_time: String,
    /// The look-up in `event_ids_by_time` and `event_ids_hourly`.
    since_hourly: String,
    /// The look-up in `event_ids_by_time`, `event_ids_hourly` and
    /// `event_ids`.
    all: String,
    /// Reads the bounds ([`EventIds::bound`]): plain queries, no keys.
    client: clickhouse::Client,
    user: String,
    password: String,
    /// Unix seconds of event time from which `event_ids` need not be
    /// asked, and from which `event_ids_hourly` need not be: each read
    /// once, at the first look-up that needs it (see [`EventIds::bound`]).
    hourly_from: Arc<tokio::sync::OnceCell<u32>>,
    by_time_from: Arc<tokio::sync::OnceCell<u32>>,
    /// Ask for rows enrich vouched for as new revisions too
    /// (`sink.look_up_new_revisions`).
    new_revisions: bool,
}

/// A look-up's request body ([`EventIds::body`]) and the earliest event
/// time among its keys, which says which indexes are asked.
pub(super) struct Lookup {
    body: Vec<u8>,
    earliest: u32,
    /// How many keys it holds: none, and nothing is sent.
    keys: usize,
}

/// One key of a batch: what the index is sorted by.
pub(super) struct Key<'a> {
    pub tenant: &'a str,
    /// The event time, Unix seconds: its hour and its day (in the server's
    /// time zone, as the materialized views compute them) prune the
    /// indexes.
    pub occurred_at: u32,
    pub event_id: &'a str,
}

/// The (tenant, event id, revision) triples a look-up found stored.
pub(super) type Stored = Vec<(String, String, u32)>;

/// A look-up running on a task of its own.
pub(super) type Pending = tokio::task::JoinHandle<Result<Stored, SinkError>>;

/// The look-ups' connection pool: a connection idle longer than `idle` is
/// not used again.
fn http_client(idle: Duration) -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .build_http()
}

impl EventIds {
    /// `new_revisions`: look up the rows enrich vouched for as new
    /// revisions too (`sink.look_up_new_revisions`).
    pub fn new(ch: &ClickHouseConfig, new_revisions: bool) -> Self {
        // By the second in `event_ids_by_time`, fed since migration 17; by
        // the hour in `event_ids_hourly` (migration 16) and by the day in
        // `event_ids` too, for the ids stored before each, only when a key
        // falls before the bound its successor recorded: asking more tables
        // builds more sets from the keys (17 ms of the server's CPU for
        // 5,000 keys against 9, measured before the `PREWHERE` below) and
        // reads their granules as well.
        //
        // The tuple `IN` of `WHERE` picks the granules (the sorting key's
        // prefix); `PREWHERE` then reads the event id first and tests it
        // against a set of single strings: the other columns are read only
        // for granules with a row that passes, and the tuple test runs only
        // on the rows that pass. By the second, a batch's live keys fall in
        // the granules of a few seconds; by the hour they fell in most of
        // their hour's, and a look-up of 5,000 live keys against an hour
        // of 20 million ids took 0.40-0.46 s where by the second it takes
        // 9-11 ms (BENCHMARKS.md, "The dedup index by the second"). The
        // repairs of a batch, events of up to the order window before, fall
        // in a granule each, where they are asked for at all (most are
        // vouched for as new, [`EventIds::keys`]).
        let by_time = format!(
            "SELECT tenant, event_id, revision FROM event_ids_by_time \
             PREWHERE event_id IN (SELECT event_id FROM {KEYS}) \
             WHERE (tenant, occurred_at, event_id) IN \
             (SELECT tenant, toDateTime(occurred_at), event_id FROM {KEYS})"
        );
        let by_hour = format!(
            "SELECT tenant, event_id, revision FROM event_ids_hourly \
             PREWHERE event_id IN (SELECT event_id FROM {KEYS}) \
             WHERE (tenant, hour, event_id) IN \
             (SELECT tenant, toStartOfHour(toDateTime(occurred_at)), event_id FROM {KEYS})"
        );
        let by_day = format!(
            "SELECT tenant, event_id, revision FROM event_ids \
             PREWHERE event_id IN (SELECT event_id FROM {KEYS}) \
             WHERE (tenant, day, event_id) IN \
             (SELECT tenant, toDate(toDateTime(occurred_at)), event_id FROM {KEYS})"
        );
        let (structure, format) = (format!("{KEYS}_structure"), format!("{KEYS}_format"));
        let uri = |sql: &str| {
            let params = [
                ("database", ch.database.as_str()),
                ("query", sql),
                // The whole answer before the status line: an error found
                // while reading is a status code, not a truncated body.
                ("wait_end_of_query", "1"),
                (
                    structure.as_str(),
                    "tenant String, occurred_at UInt32, event_id String",
                ),
                (format.as_str(), "TabSeparated"),
            ];
            let mut uri = ch.url.trim_end_matches('/').to_owned();
            uri.push('/');
            for (i, (name, value)) in params.iter().enumerate() {
                uri.push(if i == 0 { '?' } else { '&' });
                uri.extend(utf8_percent_encode(name, QUERY_VALUE));
                uri.push('=');
                uri.extend(utf8_percent_encode(value, QUERY_VALUE));
            }
            uri
        };
        EventIds {
            http: http_client(POOL_IDLE_TIMEOUT),
            by_time: uri(&format!("{by_time} FORMAT RowBinary")),
            since_hourly: uri(&format!("{by_time} UNION ALL {by_hour} FORMAT RowBinary")),
            all: uri(&format!(
                "{by_time} UNION ALL {by_hour} UNION ALL {by_day} FORMAT RowBinary"
            )),
            client: ch.client(),
            user: ch.user.clone(),
            password: ch.password.clone(),
            hourly_from: Arc::new(tokio::sync::OnceCell::new()),
            by_time_from: Arc::new(tokio::sync::OnceCell::new()),
            new_revisions,
        }
    }

    /// The keys of `rows` to look up: all but those enrich vouched for as
    /// new revisions (`EnrichedEvent.new_revision`), unless told to ask for
    /// them too. A vouched row is a revision enrich raised now (a repair,
    /// or a moved event's first output) of an event its history held
    /// without a gap since the event's time, so no copy of it can be
    /// stored (docs/clickhouse.md, "Revisions enrich vouches for"). Those
    /// are what made a look-up read every hour they touch, each in an hour
    /// of its own (BENCHMARKS.md, "Revisions enrich vouches for are not
    /// looked up").
    pub fn keys<'a>(
        &self,
        rows: impl Iterator<Item = RowRef<'a>>,
    ) -> impl Iterator<Item = Key<'a>> {
        let all = self.new_revisions;
        rows.filter(move |r| all || !r.new_revision).map(|r| Key {
            tenant: r.tenant,
            occurred_at: r.occurred_at,
            event_id: r.event_id,
        })
    }

    /// How many of `rows` [`EventIds::keys`] leaves out.
    pub fn vouched<'a>(&self, rows: impl Iterator<Item = RowRef<'a>>) -> u64 {
        if self.new_revisions {
            return 0;
        }
        rows.filter(|r| r.new_revision).count() as u64
    }

    /// Unix seconds of event time from which every stored id is in the
    /// index a migration added: what it recorded in `table` (16:
    /// `event_ids_hourly_from`, 17: `event_ids_by_time_from`; every sink
    /// runs the migrations before it reads). Read until it is there, then
    /// kept in `cell`: on a cluster the migration's row goes through a
    /// `Distributed` table and may reach its shard after this sink
    /// migrated, and until then every look-up asks the older index too.
    async fn bound(
        &self,
        cell: &tokio::sync::OnceCell<u32>,
        table: &str,
    ) -> Result<u32, SinkError> {
        if let Some(bound) = cell.get() {
            return Ok(*bound);
        }
        // The latest, should two sinks have migrated at once.
        let (rows, at) = self
            .client
            .query(&format!("SELECT count(), max(at) FROM {table}"))
            .fetch_one::<(u64, u32)>()
            .await
            .map_err(SinkError::clickhouse)?;
        if rows == 0 {
            return Ok(u32::MAX);
        }
        Ok(*cell.get_or_init(|| async { at }).await)
    }

    /// The stored (tenant, event id, revision) of `keys`' events.
    pub async fn stored<'a>(
        &self,
        keys: impl Iterator<Item = Key<'a>>,
    ) -> Result<Stored, SinkError> {
        self.send(Self::body(keys)).await
    }

    /// The look-up of `keys` as the request body [`Self::send`] takes:
    /// built where the keys are borrowed, sent from a task that owns it.
    pub fn body<'a>(keys: impl Iterator<Item = Key<'a>>) -> Lookup {
        // About 60 bytes a key (tenant, time, a 20-40 byte id): one
        // allocation for the whole body.
        let mut body = Vec::with_capacity(1024 + 64 * keys.size_hint().0);
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{KEYS}\"; \
                 filename=\"{KEYS}\"\r\nContent-Type: text/tab-separated-values\r\n\r\n"
            )
            .as_bytes(),
        );
        let (mut earliest, mut n) = (u32::MAX, 0);
        for k in keys {
            n += 1;
            earliest = earliest.min(k.occurred_at);
            push_escaped(&mut body, k.tenant);
            body.push(b'\t');
            // Into the body itself: no string per key.
            let _ = write!(body, "{}", k.occurred_at);
            body.push(b'\t');
            push_escaped(&mut body, k.event_id);
            body.push(b'\n');
        }
        // The escaped keys hold no CR, so no line of them can be the
        // boundary.
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        Lookup {
            body,
            earliest,
            keys: n,
        }
    }

    /// Sends a look-up built by [`Self::body`]: in `event_ids_by_time`,
    /// and in the older indexes too when a key falls before the bound
    /// their successor recorded ([`Self::bound`]).
    pub async fn send(&self, lookup: Lookup) -> Result<Stored, SinkError> {
        if lookup.keys == 0 {
            return Ok(Vec::new());
        }
        let uri = if lookup.earliest >= self.bound(&self.by_time_from, BY_TIME_FROM).await? {
            &self.by_time
        } else if lookup.earliest >= self.bound(&self.hourly_from, HOURLY_FROM).await? {
            &self.since_hourly
        } else {
            &self.all
        };
        let answer = self.request(uri, lookup.body).await?;
        // A whole 200 answer (`wait_end_of_query`) that does not read is no
        // passing trouble: not retried.
        parse_rows(&answer).ok_or_else(|| {
            SinkError::clickhouse(clickhouse::error::Error::Custom(format!(
                "event_ids look-up: unreadable answer of {} bytes",
                answer.len()
            )))
        })
    }

    /// POSTs to `uri` `keys` (a [`Lookup`]'s body) as its external data
    /// and returns the answer of a 200.
    async fn request(&self, uri: &str, keys: Vec<u8>) -> Result<Bytes, SinkError> {
        let request = Request::post(uri)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header("X-ClickHouse-User", &self.user)
            .header("X-ClickHouse-Key", &self.password)
            .body(Full::new(Bytes::from(keys)))
            .map_err(|e| {
                SinkError::clickhouse(clickhouse::error::Error::InvalidParams(Box::new(e)))
            })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| SinkError::clickhouse(e.into()))?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SinkError::clickhouse(e.into()))?
            .to_bytes();
        if status != StatusCode::OK {
            // ClickHouse's own errors carry their code in the body; another
            // answer (a proxy's) is named by its status, as the client does.
            let text = String::from_utf8_lossy(&answer);
            let message = if text.contains("Code: ") {
                text.trim().to_owned()
            } else {
                format!("{status} {}", text.trim()).trim_end().to_owned()
            };
            return Err(SinkError::clickhouse(
                clickhouse::error::Error::BadResponse(message),
            ));
        }
        Ok(answer)
    }
}

/// Appends `s` as a TabSeparated field: backslash, tab, newline and
/// carriage return escaped.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

/// What a query-string value may hold unescaped: RFC 3986's unreserved
/// characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Reads RowBinary (String, String, UInt32) rows; `None` when the answer
/// is cut or not such rows.
fn parse_rows(mut data: &[u8]) -> Option<Vec<(String, String, u32)>> {
    fn string(data: &mut &[u8]) -> Option<String> {
        let mut len: usize = 0;
        let mut shift = 0;
        loop {
            let (&b, rest) = data.split_first()?;
            *data = rest;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        if data.len() < len {
            return None;
        }
        let (s, rest) = data.split_at(len);
        *data = rest;
        String::from_utf8(s.to_vec()).ok()
    }
    let mut rows = Vec::new();
    while !data.is_empty() {
        let tenant = string(&mut data)?;
        let event_id = string(&mut data)?;
        let (revision, rest) = data.split_first_chunk::<4>()?;
        data = rest;
        rows.push((tenant, event_id, u32::from_le_bytes(*revision)));
    }
    Some(rows)
}

/// Rows and a look-up client for the tests of the look-ups sent ahead
/// (`consume` and `insert`).
#[cfg(test)]
pub(super) mod testing {
    use xoflow_proto::v1::{EnrichedEvent, Event, SurveyResponse, event::Payload};

    use super::{
        super::row::{EventRows, Lineage},
        *,
    };

    /// Appends the row of `partition` at `offset` (event `e-<offset>` of
    /// tenant "shop").
    pub fn push(rows: &mut EventRows, partition: i32, offset: i64) {
        let en = EnrichedEvent {
            event: Some(Event {
                event_id: format!("e-{offset}"),
                tenant: "shop".into(),
                occurred_at: Some(xoflow_proto::from_unix_millis(1_700_000_000_000)),
                payload: Some(Payload::Survey(SurveyResponse::default())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let lineage = Lineage {
            topic: "enriched",
            partition,
            offset,
        };
        rows.push(&xoflow_proto::Message::encode_to_vec(&en), lineage)
            .expect("a row");
    }

    /// The rows of `partition` at `offsets`.
    pub fn rows(partition: i32, offsets: impl IntoIterator<Item = i64>) -> EventRows {
        let mut rows = EventRows::default();
        for offset in offsets {
            push(&mut rows, partition, offset);
        }
        rows
    }

    /// A client of a port nothing listens on: every look-up fails as
    /// transient (connection refused).
    pub fn unreachable() -> EventIds {
        EventIds::new(
            &ClickHouseConfig {
                url: "http://127.0.0.1:9".into(),
                database: "d".into(),
                user: "default".into(),
                password: String::new(),
                cluster: None,
                compression: Default::default(),
            },
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that keeps every connection open and answers each request
    /// with an empty 200; counts the connections it accepted.
    async fn counting_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        // Requests without a body: one per blank line.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if conn.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_pool_timeout_is_not_used_again() {
        // ClickHouse closes a connection idle for its keep_alive_timeout;
        // one the pool kept longer could take a look-up as it closes.
        let (addr, accepted) = counting_server().await;
        let client = http_client(Duration::from_millis(50));
        let get = || async {
            let req = Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let res = client.request(req).await.expect("answer");
            assert_eq!(res.status(), StatusCode::OK);
            res.into_body().collect().await.expect("body");
        };
        get().await;
        // The connection goes back to the pool from a task of hyper's,
        // soon after the answer: a second ahead of the next request is a
        // margin no loaded machine eats.
        tokio::time::sleep(Duration::from_secs(1)).await;
        get().await;
        // hyper's default (90 s) would have sent both on one connection.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// The rows of `(event id, revision, vouched for as new)`.
    fn vouched_rows(rows: &[(&str, u32, bool)]) -> super::super::row::EventRows {
        use xoflow_proto::v1::{EnrichedEvent, Event, SurveyResponse, event::Payload};
        let mut out = super::super::row::EventRows::default();
        for (i, &(id, revision, new_revision)) in rows.iter().enumerate() {
            let en = EnrichedEvent {
                event: Some(Event {
                    event_id: id.into(),
                    tenant: "shop".into(),
                    occurred_at: Some(xoflow_proto::from_unix_millis(1_700_000_000_000)),
                    payload: Some(Payload::Survey(SurveyResponse::default())),
                    ..Default::default()
                }),
                revision,
                new_revision,
                ..Default::default()
            };
            let lineage = super::super::row::Lineage {
                topic: "enriched",
                partition: 0,
                offset: i as i64,
            };
            out.push(&xoflow_proto::Message::encode_to_vec(&en), lineage)
                .expect("a row");
        }
        out
    }

    #[tokio::test]
    async fn rows_vouched_for_as_new_revisions_are_not_asked_for() {
        let rows = vouched_rows(&[("a", 0, false), ("a", 1, true), ("b", 2, false)]);
        let ids = testing::unreachable();
        let asked: Vec<&str> = ids.keys(rows.iter()).map(|k| k.event_id).collect();
        assert_eq!(asked, ["a", "b"]);
        assert_eq!(ids.vouched(rows.iter()), 1);
        // A look-up of vouched rows alone sends nothing: this client's
        // server is unreachable, and it answers all the same.
        let vouched = vouched_rows(&[("c", 1, true), ("d", 3, true)]);
        assert_eq!(
            ids.stored(ids.keys(vouched.iter())).await.ok(),
            Some(vec![])
        );
        // `sink.look_up_new_revisions`: every row is asked for.
        let all = EventIds {
            new_revisions: true,
            ..ids
        };
        assert_eq!(all.keys(rows.iter()).count(), 3);
        assert_eq!(all.vouched(rows.iter()), 0);
        assert!(all.stored(all.keys(vouched.iter())).await.is_err());
    }

    #[test]
    fn keys_are_escaped_as_tab_separated_fields() {
        let mut out = Vec::new();
        push_escaped(&mut out, "a\\b\tc\nd\re'f");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re'f");
    }

    #[test]
    fn the_query_string_is_percent_encoded() {
        let out: String = utf8_percent_encode("a b,(c)=d&é-_.~", QUERY_VALUE).collect();
        assert_eq!(out, "a%20b%2C%28c%29%3Dd%26%C3%A9-_.~");
    }

    #[test]
    fn row_binary_answers_are_read_and_cut_ones_refused() {
        let mut data = vec![4];
        data.extend_from_slice(b"shop");
        data.push(2);
        data.extend_from_slice(b"e1");
        data.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            parse_rows(&data),
            Some(vec![("shop".to_owned(), "e1".to_owned(), 7)])
        );
        assert_eq!(parse_rows(&data[..data.len() - 1]), None);
        assert_eq!(parse_rows(&[]), Some(vec![]));
    }
}
