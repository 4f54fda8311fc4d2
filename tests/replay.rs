//! Replaying dead letters on the real broker and ClickHouse: orders refused
//! for a known reason (`rmb` is no ISO 4217 code: `INVALID` on
//! `order.currency`), sent over gRPC (protobuf dead letters) and HTTP
//! (canonical JSON dead letters), are fixed by `xoflow replay --map
//! order.currency:rmb=CNY` and stored once each, with their original ids;
//! every dead letter is marked; replaying again (the command line this
//! time) selects and stores nothing.

mod common;

use std::time::Duration;

use xoflow::{
    datagen::load::{self, LoadOptions},
    replay::{Fixup, ReplayOptions, replay},
};
use xoflow_proto::v1::{CustomerIdentity, Event, Order, OrderStatus, event::Payload};

const GRPC: usize = 20;
const HTTP: usize = 3;
const VALID: usize = 10;

fn order(id: String, at: i64, currency: &str) -> Event {
    Event {
        event_id: id.clone(),
        tenant: "acme".into(),
        source: "pos".into(),
        occurred_at: Some(xoflow_proto::from_unix_millis(at)),
        customer: Some(CustomerIdentity {
            customer_id: format!("c-{id}"),
            ..Default::default()
        }),
        payload: Some(Payload::Order(Order {
            order_id: format!("o-{id}"),
            status: OrderStatus::Paid as i32,
            amount_minor: 9_900,
            currency: currency.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn post_ndjson(addr: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /v1/events HTTP/1.0\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn count(ch: &clickhouse::Client, sql: &str) -> u64 {
    ch.query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_fixed_and_replayed_are_stored_once() {
    let (cfg, id) = common::config("");
    let running = common::start(&cfg, xoflow::Stages::ALL).await;
    let grpc = format!("http://{}", running.grpc_addr.expect("grpc"));
    let http = running.http_addr.expect("http").to_string();
    let now = common::now_ms();

    let mut events: Vec<Event> = (0..GRPC)
        .map(|i| order(format!("{id}-g{i}"), now - 60_000, "rmb"))
        .collect();
    events.extend((0..VALID).map(|i| order(format!("{id}-v{i}"), now - 60_000, "CNY")));
    let r = load::send(
        &grpc,
        events,
        &LoadOptions {
            batch: 100,
            rate: None,
            concurrency: 1,
        },
    )
    .await
    .expect("sent");
    assert_eq!((r.accepted, r.rejected), (VALID as u64, GRPC as u64));
    let at = chrono::DateTime::from_timestamp_millis(now - 60_000)
        .expect("time")
        .to_rfc3339();
    let body: String = (0..HTTP)
        .map(|i| {
            format!(
                r#"{{"event_id": "{id}-h{i}", "tenant": "acme", "source": "pos", "occurred_at": "{at}", "customer": {{"customer_id": "c-{id}-h{i}"}}, "order": {{"order_id": "o-{id}-h{i}", "status": "ORDER_STATUS_PAID", "amount_minor": 9900, "currency": "rmb"}}}}"#
            ) + "\n"
        })
        .collect();
    // Every record refused: 422 with the per-record verdicts.
    let status = post_ndjson(&http, &body).await;
    assert!((200..500).contains(&status), "{status}");

    let ch = cfg.clickhouse.client();
    let refused = (GRPC + HTTP) as u64;
    common::wait_for("the refusals stored", Duration::from_secs(60), || {
        let ch = ch.clone();
        async move {
            let q = "SELECT count() FROM dead_letters WHERE field = 'order.currency'";
            ch.query(q)
                .fetch_one::<u64>()
                .await
                .is_ok_and(|n| n == refused)
        }
    })
    .await;
    assert_eq!(
        count(
            &ch,
            "SELECT count() FROM dead_letters WHERE content_type = 'application/json'"
        )
        .await,
        HTTP as u64
    );

    let opts = ReplayOptions {
        tenant: Some("acme".into()),
        reason: Some("INVALID".into()),
        field: Some("order.currency".into()),
        fixups: vec![Fixup::parse_map("order.currency:rmb=CNY").expect("fix-up")],
        limit: 1_000,
        ..Default::default()
    };
    let report = replay(&cfg, &opts).await.expect("replay");
    assert_eq!(
        (
            report.selected,
            report.accepted,
            report.refused,
            report.unreplayable
        ),
        (refused, refused, 0, 0),
        "{report:?}"
    );

    let replayed = format!(
        "SELECT count() FROM events WHERE event_id LIKE '{id}-g%' OR event_id LIKE '{id}-h%'"
    );
    common::wait_for(
        "the replayed orders stored",
        Duration::from_secs(60),
        || {
            let ch = ch.clone();
            let q = replayed.clone();
            async move {
                ch.query(&q)
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|n| n >= refused)
            }
        },
    )
    .await;
    assert_eq!(
        count(
            &ch,
            &format!(
                "SELECT uniqExact(event_id) FROM events WHERE (event_id LIKE '{id}-g%' OR event_id LIKE '{id}-h%') \
                 AND currency = 'CNY' AND revision = 0"
            )
        )
        .await,
        refused,
        "every refused order stored, with its original id, in CNY"
    );
    assert_eq!(
        count(
            &ch,
            "SELECT count() FROM dead_letters WHERE field = 'order.currency' AND replay_outcome = 'accepted'"
        )
        .await,
        refused,
        "every dead letter marked"
    );

    // Again, from the command line: nothing is selected, nothing stored.
    let out = common::xoflow_command(
        &cfg,
        &[
            "replay",
            "--reason",
            "INVALID",
            "--map",
            "order.currency:rmb=CNY",
        ],
    )
    .output()
    .expect("xoflow replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 dead letters selected"), "{stdout}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&ch, &replayed).await, refused, "stored once");
    assert_eq!(
        count(
            &ch,
            "SELECT sumMerge(paid_orders) FROM revenue_metrics WHERE currency = 'CNY'"
        )
        .await,
        (VALID + GRPC + HTTP) as u64,
        "counted once"
    );

    running.stop();
    running.wait().await.expect("clean stop");
    common::drop_database(&cfg).await;
}
