//! Planted PII never reaches Kafka unmasked: e-mails, phones, card numbers
//! and resident ID numbers planted in transcripts, posts and comments, sent
//! over gRPC (canonical events) and HTTP (native payloads), accepted or
//! refused, are read back from the events and dead-letter topics and
//! searched for as raw bytes.

mod common;
#[path = "ingest_support/mod.rs"]
mod support;

use xoflow::Stages;
use xoflow_proto::v1::{
    CallTranscript, Event, IngestRequest, MetricKind, SocialPost, Speaker, SurveyAnswer,
    SurveyResponse, TranscriptSegment, collector_client::CollectorClient, event::Payload,
};

const PLANTED: [&str; 10] = [
    "zhang.wei@example.cn",
    "John.Doe@Example.com",
    "13912345678",
    "139 1234 5678",
    "+1 415 555 2671",
    "5500 0000 0000 0004",
    "4111111111111111",
    "11010519491231002X",
    "wang.fang@163.com",
    "020-87654321",
];

fn texts() -> Vec<String> {
    vec![
        format!("我的邮箱是{}，手机{}，请尽快退款", PLANTED[0], PLANTED[2]),
        format!("Reach me at {} or {} any time.", PLANTED[1], PLANTED[4]),
        format!("卡号 {} 被扣了两次，身份证{}", PLANTED[5], PLANTED[7]),
        format!("card {} charged twice; landline {}", PLANTED[6], PLANTED[9]),
        format!("打 {} 找我，或者发到 {}", PLANTED[3], PLANTED[8]),
    ]
}

fn events(prefix: &str, now: i64) -> Vec<Event> {
    let at = Some(xoflow_proto::from_unix_millis(now - 60_000));
    let mut out = Vec::new();
    for (i, t) in texts().into_iter().enumerate() {
        let base = |payload| Event {
            event_id: String::new(),
            tenant: "acme".into(),
            source: "pii-test".into(),
            occurred_at: at,
            payload: Some(payload),
            ..Default::default()
        };
        out.push(Event {
            event_id: format!("{prefix}-s{i}"),
            ..base(Payload::Survey(SurveyResponse {
                survey_id: "post-delivery".into(),
                comment: t.clone(),
                answers: vec![SurveyAnswer {
                    question_id: "why".into(),
                    kind: MetricKind::Other as i32,
                    text: t.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            }))
        });
        out.push(base(Payload::Call(CallTranscript {
            call_id: format!("{prefix}-c{i}"),
            segments: vec![TranscriptSegment {
                speaker: Speaker::Customer as i32,
                start_ms: 0,
                end_ms: 5000,
                text: t.clone(),
            }],
            ..Default::default()
        })));
        out.push(base(Payload::Social(SocialPost {
            platform: "weibo".into(),
            post_id: format!("{prefix}-p{i}"),
            text: t.clone(),
            url: format!("https://weibo.example/p?contact={}", t.replace(' ', "+")),
            ..Default::default()
        })));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_pii_never_reaches_kafka_unmasked() {
    let (cfg, id) = common::config("");
    let running = common::start(&cfg, Stages::INGEST).await;
    let now = common::now_ms();
    let mut client =
        CollectorClient::connect(format!("http://{}", running.grpc_addr.expect("grpc")))
            .await
            .expect("connect");
    let mut sent = events(&id, now);
    // One refused record carrying PII: its dead letter must be masked too.
    let mut refused = sent[0].clone();
    refused.event_id = format!("{id}-refused");
    refused.occurred_at = None;
    sent.push(refused);
    let n = sent.len();
    let r = client
        .ingest(IngestRequest { events: sent })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!((r.accepted as usize, r.rejected), (n - 1, 1));

    // Native payloads over HTTP, with the same planted text.
    let http = running.http_addr.expect("http");
    for (i, t) in texts().into_iter().enumerate() {
        let body = serde_json::json!({
            "platform": "x", "post_id": format!("{id}-n{i}"),
            "created_at": serde_json::to_value(xoflow_proto::from_unix_millis(now - 1000)).expect("ts"),
            "author": {"handle": "@planted", "display_name": "Zhang Wei"},
            "text": format!("Zhang Wei says: {t}"),
        });
        let r = support::http(
            http,
            "/v1/sources/social/listening?tenant=acme",
            &[],
            Some(body.to_string().as_bytes()),
        )
        .await;
        assert_eq!(
            r.json()["accepted"],
            1,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    let events = support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.events, n - 1 + 5).await;
    let letters = support::read_topic(&cfg.kafka.brokers, &cfg.kafka.topics.dead_letters, 1).await;
    let mut masked = 0;
    for (_, payload) in events.iter().chain(&letters) {
        let raw = String::from_utf8_lossy(payload);
        for p in PLANTED.iter().chain(&["Zhang Wei", "planted"]) {
            assert!(!raw.contains(p), "{p:?} reached Kafka unmasked: {raw}");
        }
        masked += raw.matches("[PHONE]").count() + raw.matches("[EMAIL]").count();
    }
    assert!(masked > 0, "masking placeholders expected");
    let dl = support::dead_letters(&letters);
    assert_eq!(dl[0].field, "occurred_at");
    assert!(
        String::from_utf8_lossy(&dl[0].payload).contains("[ID_NUMBER]")
            || String::from_utf8_lossy(&dl[0].payload).contains("[EMAIL]")
    );

    running.stop();
    running.wait().await.expect("clean shutdown");
}
