//! The sink rides out a ClickHouse outage far longer than its old retry
//! budget (9 attempts): it never exits, readiness answers 503 with
//! `clickhouse_unreachable` while ClickHouse is away and liveness stays
//! 200 (a restart would not help), and once ClickHouse is back every row
//! arrives exactly once and readiness is 200 again. Real broker; a
//! ClickHouse of the test's own on free ports (the shared one is never
//! stopped), started the way deploy/local/up.sh starts it.
//!
//! The same through a proxy answering for an absent server (502, 503 with
//! a page of its own, no ClickHouse error code): a retry, not a reason to
//! stop, for the look-ups and the inserts alike; the proxy's 413 is.

mod common;

use std::time::Duration;

use clickhouse::Row;
use common::{Gateway, StallingProxy};
use serde::Deserialize;
use xoflow::{Config, Running, Stages};

/// Attempts the sink must make during the outage before ClickHouse comes
/// back: the old budget gave up after 9.
const ATTEMPTS_RIDDEN_OUT: u32 = 70;

fn enriched(id: &str, i: usize) -> (Vec<u8>, String) {
    let key = format!("c{}", i % 97);
    let bytes = common::enriched_click(format!("{id}-{i}"), "shop", &key, &format!("s{}", i % 13));
    (bytes, key)
}

#[derive(Debug, Row, Deserialize, PartialEq)]
struct Counts {
    events: u64,
    distinct_events: u64,
    aggregated: u64,
}

async fn counts(ch: &clickhouse::Client) -> Option<Counts> {
    ch.query(
        "SELECT (SELECT count() FROM events) AS events, \
                (SELECT uniqExact(event_id) FROM events) AS distinct_events, \
                (SELECT toUInt64(sumMerge(events)) FROM touchpoint_metrics) AS aggregated",
    )
    .fetch_one()
    .await
    .ok()
}

/// ClickHouse holds `n` events, each once, and counts each once in the
/// aggregates.
async fn assert_stored_once(ch: &clickhouse::Client, n: u64) {
    assert_eq!(
        counts(ch).await,
        Some(Counts {
            events: n,
            distinct_events: n,
            aggregated: n,
        })
    );
}

/// Waits until ClickHouse (asked through `ch`) counts `n` events in the
/// aggregates.
async fn wait_counted(ch: &clickhouse::Client, what: &str, n: u64, limit: Duration) {
    common::wait_for(what, limit, || {
        let ch = ch.clone();
        async move { counts(&ch).await.is_some_and(|c| c.aggregated >= n) }
    })
    .await;
}

/// The sink started on `cfg` after `n` events were produced, once
/// ClickHouse (asked through `ch`, past any proxy) counts them. Short
/// waits between attempts, so that an outage outlasts many: 100 ms
/// doubling to 1 s, 70 attempts in ~50 s, as long as the old budget (9
/// attempts) at the default waits, and ten times it at these.
async fn started_on_first_events(
    cfg: &mut Config,
    id: &str,
    ch: &clickhouse::Client,
    n: usize,
) -> Running {
    cfg.sink.retry_backoff = Duration::from_millis(100);
    cfg.sink.retry_max_backoff = Duration::from_secs(1);
    let t = &cfg.kafka.topics;
    cfg.kafka
        .ensure_topics(&[&t.enriched, &t.dead_letters])
        .await
        .expect("topics");
    let first: Vec<_> = (0..n).map(|i| enriched(id, i)).collect();
    common::produce_enriched(cfg, &first).await;
    let running = common::start(cfg, Stages::SINK).await;
    wait_counted(ch, "the first rows", n as u64, Duration::from_secs(90)).await;
    running
}

/// The attempt number in the sink's `clickhouse_unreachable` reason.
fn attempt_in(reasons: &[String]) -> Option<u32> {
    let r = reasons
        .iter()
        .find(|r| r.starts_with("sink: clickhouse_unreachable"))?;
    let rest = &r[r.find("attempt ")? + 8..];
    rest[..rest.find(':')?].parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_rides_out_a_clickhouse_outage_and_says_so() {
    let (mut cfg, id) = common::config("");
    let mut ch_server = common::OwnClickHouse::new(&id);
    ch_server.start().await;
    cfg.clickhouse.url = ch_server.url();
    let ch = cfg.clickhouse.client();
    let running = started_on_first_events(&mut cfg, &id, &ch, 2_000).await;
    let admin = running.admin_addr.to_string();

    // ClickHouse goes away; more events arrive.
    ch_server.kill().await;
    let second: Vec<_> = (2_000..4_000).map(|i| enriched(&id, i)).collect();
    common::produce_enriched(&cfg, &second).await;
    common::wait_for(
        "the sink to retry well past its old budget",
        Duration::from_secs(180),
        || {
            let reasons = running.health.check().err().unwrap_or_default();
            async move { attempt_in(&reasons).is_some_and(|a| a >= ATTEMPTS_RIDDEN_OUT) }
        },
    )
    .await;
    let (code, body) = common::http_get(&admin, "/health/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sink: clickhouse_unreachable"), "{body}");
    let (code, body) = common::http_get(&admin, "/health/live").await;
    assert_eq!(code, 200, "an outage is no reason to restart: {body}");
    let (_, metrics) = common::http_get(&admin, "/metrics").await;
    if !metrics.starts_with("metrics recorder not installed") {
        assert!(
            metrics.contains(
                r#"xoflow_stage_not_ready{stage="sink",reason="clickhouse_unreachable"} 1"#
            ),
            "{metrics}"
        );
    }
    assert!(
        !running.shutdown.token.is_cancelled(),
        "the sink must not exit during an outage"
    );

    // ClickHouse returns: progress resumes by itself, every row once.
    ch_server.start().await;
    wait_counted(
        &ch,
        "the rows written during the outage",
        4_000,
        Duration::from_secs(120),
    )
    .await;
    common::wait_ready(&running, "readiness to return", Duration::from_secs(30)).await;
    assert_eq!(common::http_get(&admin, "/health/ready").await.0, 200);
    assert_stored_once(&ch, 4_000).await;
    assert!(!running.shutdown.token.is_cancelled());
    running.stop();
    running.wait().await.expect("clean shutdown");

    let status = xoflow_sink::sink_status(&cfg.kafka, &cfg.clickhouse, &cfg.sink.group_id)
        .await
        .expect("status");
    for s in &status {
        assert_eq!(s.gap(), 0, "{s:?}");
    }
    let rows: u64 = status
        .iter()
        .filter(|s| s.topic == cfg.kafka.topics.enriched)
        .map(|s| s.rows_stored)
        .sum();
    assert_eq!(rows, 4_000);
}

/// A load balancer's page for a server that is away: no ClickHouse code.
const NGINX_503: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_rides_out_a_proxy_answering_for_an_absent_server() {
    let (mut cfg, id) = common::config("");
    // Counted on the server itself, past the proxy.
    let ch = cfg.clickhouse.client();
    let proxy = StallingProxy::start(&cfg.clickhouse.url).await;
    cfg.clickhouse.url = proxy.url();
    let running = started_on_first_events(&mut cfg, &id, &ch, 1_000).await;
    let admin = running.admin_addr.to_string();

    // Every request answered by the proxy with a bare 502 (the look-ups of
    // the batch's ids come first, so they are what fails), then only the
    // inserts with nginx's 503 page (the look-ups pass).
    let phases = [
        (
            Gateway {
                status: "502 Bad Gateway",
                body: "",
                only: None,
            },
            1_000..2_000,
        ),
        (
            Gateway {
                status: "503 Service Temporarily Unavailable",
                body: NGINX_503,
                only: Some("query=INSERT"),
            },
            2_000..3_000,
        ),
    ];
    for (gateway, events) in phases {
        let before = proxy.answered();
        proxy.answer(gateway);
        let batch: Vec<_> = events.map(|i| enriched(&id, i)).collect();
        common::produce_enriched(&cfg, &batch).await;
        common::wait_for(
            &format!("the sink to retry through {}", gateway.status),
            Duration::from_secs(90),
            || {
                let reasons = running.health.check().err().unwrap_or_default();
                let answered = proxy.answered() - before;
                async move { answered >= 5 && attempt_in(&reasons).is_some_and(|a| a >= 3) }
            },
        )
        .await;
        let (code, body) = common::http_get(&admin, "/health/ready").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("sink: clickhouse_unreachable"), "{body}");
        assert!(
            !running.shutdown.token.is_cancelled(),
            "the sink must not exit on a proxy's {}",
            gateway.status
        );
    }

    proxy.resume();
    wait_counted(&ch, "every row", 3_000, Duration::from_secs(90)).await;
    common::wait_ready(&running, "readiness to return", Duration::from_secs(30)).await;
    assert_stored_once(&ch, 3_000).await;

    // A status no retry mends (the proxy's limit on a body's size): the
    // sink stops, with the error, and commits nothing past what it wrote.
    proxy.answer(Gateway {
        status: "413 Request Entity Too Large",
        body: "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n</html>\r\n",
        only: Some("query=INSERT"),
    });
    let last: Vec<_> = (3_000..3_010).map(|i| enriched(&id, i)).collect();
    common::produce_enriched(&cfg, &last).await;
    let error = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the sink stops")
        .expect_err("with an error");
    assert!(format!("{error:#}").contains("413"), "{error:#}");
    assert_eq!(counts(&ch).await.map(|c| c.events), Some(3_000));
}

/// The value of `series` (name and labels as written) in a scrape of
/// `/metrics` from `admin`; 0 when absent.
async fn scraped(admin: &str, series: &str) -> f64 {
    let (_, body) = common::http_get(admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A sink that retries ClickHouse without polling Kafka longer than
/// `max.poll.interval.ms` (6 s here, 300 s by default) is taken out of its
/// group by librdkafka, and another member may be given its partitions
/// and write them from the positions stored in ClickHouse. It then makes
/// no further attempt with its batch (an attempt could store the rows
/// beside the new owner's: see the unit test
/// `no_attempt_is_made_once_the_partitions_are_taken`): it leaves the
/// batch, counted as a rebalance error, polls, rejoins, reads its
/// positions again once ClickHouse answers, and every row is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_out_of_its_group_leaves_its_batch_and_loses_nothing() {
    let (mut cfg, id) = common::config(
        r#"
[kafka.options]
"max.poll.interval.ms" = "6000"
"session.timeout.ms" = "6000"
"#,
    );
    let ch = cfg.clickhouse.client();
    let proxy = StallingProxy::start(&cfg.clickhouse.url).await;
    cfg.clickhouse.url = proxy.url();
    let running = started_on_first_events(&mut cfg, &id, &ch, 1_000).await;
    let admin = running.admin_addr.to_string();
    let left = r#"xoflow_sink_errors_total{error="rebalance"}"#;
    assert_eq!(scraped(&admin, left).await, 0.0);

    proxy.answer(Gateway {
        status: "502 Bad Gateway",
        body: "",
        only: None,
    });
    let more: Vec<_> = (1_000..3_000).map(|i| enriched(&id, i)).collect();
    common::produce_enriched(&cfg, &more).await;
    common::wait_for(
        "the sink to leave its batch once out of its group",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move { scraped(&admin, left).await >= 1.0 }
        },
    )
    .await;
    assert!(
        !running.shutdown.token.is_cancelled(),
        "the sink goes on after leaving its batch"
    );

    proxy.resume();
    wait_counted(&ch, "every row", 3_000, Duration::from_secs(90)).await;
    // Whatever it was still retrying had its chance to land twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_stored_once(&ch, 3_000).await;
    running.shutdown.token.cancel();
}

/// A retried insert into `dead_letters` is taken for landed only when
/// every partition's last row of it is stored. The sink's `DECODE` row of
/// an enriched record it could not read is written again when a restart
/// reads that record again; if such a row was the highest offset of a
/// failed insert, the check found its earlier copy, took the insert for
/// landed, and the dead letters beside it were never written, their
/// offsets committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_insert_is_not_taken_for_landed_on_an_older_row() {
    let (mut cfg, id) = common::config("");
    let ch = cfg.clickhouse.client();
    // Five events, then a record that is no EnrichedEvent, at offset 5 of
    // one partition; stored by a first run of the sink.
    let key = "c-landed".to_owned();
    let mut first: Vec<_> = (0..5)
        .map(|i| {
            let bytes = common::enriched_click(format!("{id}-{i}"), "shop", &key, "s1");
            (bytes, key.clone())
        })
        .collect();
    first.push((b"\xff\xff not an enriched event".to_vec(), key.clone()));
    let running = started_on_first_events(&mut cfg, &id, &ch, 0).await;
    common::produce_enriched(&cfg, &first).await;
    let decode_rows = "SELECT count() FROM dead_letters WHERE reason = 'DECODE'";
    common::wait_for(
        "the first run's DECODE row",
        Duration::from_secs(60),
        || {
            let ch = ch.clone();
            async move {
                ch.query(decode_rows)
                    .fetch_one::<u64>()
                    .await
                    .is_ok_and(|n| n >= 1)
            }
        },
    )
    .await;
    running.shutdown.token.cancel();
    running.wait().await.expect("the sink stops");

    // One more event (offset 6: the second run reads the partition again
    // from its stored position, the DECODE record with it), two dead
    // letters (offsets 0 and 1 of the dead-letter topic, lower than 5),
    // then a second run whose first inserts fail.
    let letters: Vec<Vec<u8>> = (0..2)
        .map(|i| common::dead_letter(format!("{id}-dl-{i}"), "shop", common::now_ms()))
        .collect();
    let more = common::enriched_click(format!("{id}-5"), "shop", &key, "s1");
    common::produce_enriched(&cfg, &[(more, key.clone())]).await;
    let out: Vec<_> = letters
        .iter()
        .map(|l| xoflow_common::kafka::Outgoing::keyed(key.as_bytes(), l))
        .collect();
    cfg.kafka
        .batch_producer()
        .expect("producer")
        .send_all(&cfg.kafka.topics.dead_letters, &out)
        .await
        .expect("produce");
    let proxy = StallingProxy::start(&cfg.clickhouse.url).await;
    proxy.answer(Gateway {
        status: "502 Bad Gateway",
        body: "",
        only: Some("query=INSERT"),
    });
    let mut second = cfg.clone();
    second.clickhouse.url = proxy.url();
    // One batch for all of it: read again, the DECODE record is the
    // highest offset of the dead letters the first insert carries.
    second.sink.batch_max_wait = Duration::from_secs(3);
    let running = common::start(&second, Stages::SINK).await;
    common::wait_for("a failed insert", Duration::from_secs(60), || {
        let answered = proxy.answered();
        async move { answered >= 1 }
    })
    .await;
    proxy.resume();
    let letters_stored =
        format!("SELECT count() FROM dead_letters WHERE event_id IN ('{id}-dl-0', '{id}-dl-1')");
    common::wait_for("both dead letters", Duration::from_secs(60), || {
        let (ch, sql) = (ch.clone(), letters_stored.clone());
        async move {
            ch.query(&sql)
                .fetch_one::<u64>()
                .await
                .is_ok_and(|n| n == 2)
        }
    })
    .await;
    running.shutdown.token.cancel();
    running.wait().await.expect("the sink stops");
}
