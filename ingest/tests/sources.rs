//! The source-native collectors and the HTTP surface, in process: every
//! sample payload of docs/collectors.md (Chinese and English) is
//! normalised, masked, attributed to its touchpoint and department, and
//! delivered; canonical JSON arrives as one object, an array or gzip
//! NDJSON; oversized bodies get 413; the OpenAPI document is served; bulk
//! import lands on the backfill lane with the same ids on every run.

mod support;

use std::io::Write;

use xoflow_common::clock;
use xoflow_ingest::delivery::Lane;
use xoflow_proto::v1::{ClickAction, Event, MetricKind, event::Payload};

fn payload_text(e: &Event) -> String {
    format!("{e:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_payload_is_normalised_masked_and_attributed() {
    let h = support::Harness::new(&support::config(""));

    let samples = [
        (
            "survey",
            "survey.zh.json",
            "survey:post-delivery:r-20251114-0001",
        ),
        (
            "survey",
            "survey.en.json",
            "survey:post-delivery:r-20251114-0002",
        ),
        ("call", "call.zh.json", "call:cc-7f3a91"),
        ("call", "call.en.json", "call:cc-7f3b02"),
        ("social", "social.zh.json", "social:weibo:4987654321"),
        ("social", "social.en.json", "social:x:1856789012345"),
        ("order", "order.cdc.json", "order:o-88231:4"),
        (
            "click",
            "click.track.json",
            "click:ajs-next-1763126400-4f1d",
        ),
    ];
    for (kind, file, id) in samples {
        let body = support::sample(file);
        // Twice: a replayed webhook carries the same idempotency key.
        for _ in 0..2 {
            let r = h
                .http(
                    &format!("/v1/sources/{kind}/webhook-test?tenant=acme"),
                    &[],
                    Some(body.as_bytes()),
                )
                .await;
            assert_eq!(
                r.status,
                200,
                "{file}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let v = r.json();
            assert_eq!(v["accepted"], 1, "{file}: {v}");
            assert_eq!(v["results"][0]["eventId"], id, "{file}");
        }
    }

    let events = h.events();
    assert_eq!(events.len(), 16);
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e.event_id == id)
            .unwrap_or_else(|| panic!("{id} not delivered"))
    };
    for e in &events {
        let text = payload_text(e);
        for planted in [
            "王小明",
            "Emily Clarke",
            "13800138000",
            "138 0013 8000",
            "139-2233-4455",
            "13922334455",
            "wang.xm@example.cn",
            "emily.clarke",
            "4111 1111 1111 1111",
            "11010519491231002X",
            "7946 0958",
            "123-4567",
            "xiaoming_sz",
        ] {
            assert!(
                !text.contains(planted),
                "{planted:?} leaked in {}",
                e.event_id
            );
        }
        assert_eq!(e.tenant, "acme");
        assert_eq!(e.source, "webhook-test");
        assert!(e.received_at.is_some());
    }

    let zh = by_id("survey:post-delivery:r-20251114-0001");
    let Some(Payload::Survey(s)) = &zh.payload else {
        panic!("survey")
    };
    assert_eq!(s.language, "zh");
    assert_eq!(
        s.comment,
        "我是[NAME]，配送太慢了，等了四天才到。请联系我：[EMAIL]"
    );
    assert_eq!(
        s.answers[3].text,
        "快递员把包裹扔在门口，打了[PHONE]也没人接"
    );
    let kinds: Vec<_> = s
        .answers
        .iter()
        .map(|a| (a.kind, a.score, a.scale_max))
        .collect();
    assert_eq!(
        kinds[..3],
        [
            (MetricKind::Nps as i32, Some(3.0), 10),
            (MetricKind::Csat as i32, Some(2.0), 5),
            (MetricKind::Ces as i32, Some(2.0), 7)
        ]
    );
    let tp = zh.touchpoint.as_ref().expect("touchpoint resolved");
    assert_eq!(tp.touchpoint, "delivery-survey");
    assert_eq!(zh.attributes["department"], "customer-care");
    let c = zh.customer.as_ref().expect("customer");
    assert_eq!((c.email.as_str(), c.phone.as_str()), ("", ""));
    assert_eq!((c.email_hash.len(), c.phone_hash.len()), (64, 64));

    let en = by_id("survey:post-delivery:r-20251114-0002");
    let Some(Payload::Survey(s)) = &en.payload else {
        panic!("survey")
    };
    assert_eq!(s.language, "en");
    assert!(s.comment.starts_with("[NAME] here"), "{}", s.comment);
    assert!(s.comment.contains("[PHONE]"), "{}", s.comment);

    let call = by_id("call:cc-7f3a91");
    let Some(Payload::Call(c)) = &call.payload else {
        panic!("call")
    };
    assert_eq!(c.language, "zh");
    assert_eq!(
        c.segments[1].text,
        "我是[NAME]，身份证号[ID_NUMBER]，订单一直没到，我的卡号是[CARD]，退款退到哪里？"
    );
    assert_eq!(
        (c.segments[1].start_ms, c.segments[1].end_ms),
        (3_500, 11_800)
    );
    assert_eq!(call.attributes["department"], "customer-care");
    let Some(Payload::Call(c)) = &by_id("call:cc-7f3b02").payload else {
        panic!("call")
    };
    assert_eq!(c.language, "en");
    assert!(c.segments[1].text.contains("[EMAIL]") && c.segments[1].text.contains("[PHONE]"));

    let post = by_id("social:weibo:4987654321");
    let Some(Payload::Social(p)) = &post.payload else {
        panic!("social")
    };
    assert_eq!(p.language, "zh");
    assert_eq!(p.author_handle, "@x***");
    assert!(p.url.ends_with("phone=[REDACTED]"), "{}", p.url);
    assert_eq!(
        post.customer.as_ref().expect("id").social_handle_hash.len(),
        64
    );

    let order = by_id("order:o-88231:4");
    assert_eq!(
        order.touchpoint.as_ref().expect("tp").touchpoint,
        "delivery"
    );
    assert_eq!(order.attributes["department"], "logistics");

    let click = by_id("click:ajs-next-1763126400-4f1d");
    let Some(Payload::Click(k)) = &click.payload else {
        panic!("click")
    };
    assert_eq!(k.action, ClickAction::Checkout as i32);
    assert_eq!(
        k.url,
        "https://shop.example/checkout/payment?step=2&email=[REDACTED]"
    );
    assert_eq!(
        click.touchpoint.as_ref().expect("tp").touchpoint,
        "checkout"
    );
    assert_eq!(click.attributes["department"], "e-commerce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_json_as_object_array_and_gzip_ndjson_and_the_limits() {
    let mut cfg = support::config("");
    cfg.max_body_bytes = 256 * 1024;
    let h = support::Harness::new(&cfg);
    let sent = support::events(30, "canonical", clock::now_unix_millis());
    let json: Vec<String> = sent
        .iter()
        .map(|e| serde_json::to_string(e).expect("canonical JSON"))
        .collect();

    let one = h.http("/v1/events", &[], Some(json[0].as_bytes())).await;
    assert_eq!(
        (one.status, one.json()["accepted"].clone()),
        (200, 1.into())
    );

    let array = format!("[{}]", json[1..10].join(",\n"));
    let arr = h.http("/v1/events", &[], Some(array.as_bytes())).await;
    assert_eq!(
        arr.json()["accepted"],
        9,
        "{}",
        String::from_utf8_lossy(&arr.body)
    );

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json[10..].join("\n").as_bytes())
        .expect("gzip");
    let body = gz.finish().expect("gzip");
    let nd = h
        .http(
            "/v1/events",
            &[
                ("Content-Type", "application/x-ndjson"),
                ("Content-Encoding", "gzip"),
            ],
            Some(&body),
        )
        .await;
    assert_eq!(nd.json()["accepted"], 20);

    let mut ids: Vec<_> = h.events().into_iter().map(|e| e.event_id).collect();
    ids.sort();
    let mut want: Vec<_> = sent.iter().map(|e| e.event_id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);

    // Over the limit, plain or as a gzip bomb: 413.
    let big = vec![b' '; 300 * 1024];
    assert_eq!(h.http("/v1/events", &[], Some(&big)).await.status, 413);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 * 1024 * 1024]).expect("gzip");
    let bomb = gz.finish().expect("gzip");
    let r = h
        .http("/v1/events", &[("Content-Encoding", "gzip")], Some(&bomb))
        .await;
    assert_eq!(r.status, 413);

    let doc = h.http("/openapi.yaml", &[], None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body, xoflow_ingest::http::OPENAPI_YAML.as_bytes());

    let unknown = h.http("/v1/sources/fax/x", &[], Some(b"{}")).await;
    assert_eq!(unknown.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_import_goes_to_the_backfill_lane_with_stable_ids() {
    let h = support::Harness::new(&support::config(""));
    let ingestor = &h.ingestor;
    let id = format!("{}-{}", std::process::id(), clock::now_unix_millis());
    let dir = std::env::temp_dir().join(format!("xoflow-import-{id}"));
    std::fs::create_dir_all(&dir).expect("dir");

    // History older than the live lane's bound is fine on the backfill lane.
    let old = support::date_days_ago(900);
    let nd = dir.join("surveys.ndjson");
    let lines: Vec<String> = ["survey.zh.json", "survey.en.json"]
        .iter()
        .map(|f| support::sample(f).replace(&support::date_days_ago(2), &old))
        .chain(["{not json".to_string()])
        .collect();
    std::fs::write(&nd, lines.join("\n")).expect("write");
    let csv = dir.join("orders.csv");
    std::fs::write(
        &csv,
        format!(
            "order_id,status,updated_at,amount_minor,currency,customer_id,store_id\n\
             o-1,paid,{old}T10:00:00+08:00,5600,CNY,c-1,sz-01\n\
             o-1,delivered,{old}T18:00:00+08:00,5600,CNY,c-1,sz-01\n\
             o-2,lost,{old}T18:00:00+08:00,100,CNY,c-2,sz-02\n"
        ),
    )
    .expect("write");

    let opts = |format, kind| xoflow_ingest::import::ImportOptions {
        format,
        kind: Some(kind),
        tenant: "acme".into(),
        source: "history".into(),
        chunk: 2,
        progress: false,
    };
    use xoflow_ingest::import::{Format, run};
    use xoflow_proto::EventKind;
    for _ in 0..2 {
        let r = run(ingestor, &nd, &opts(Format::Ndjson, EventKind::Survey))
            .await
            .expect("ndjson import");
        assert_eq!((r.accepted, r.rejected), (2, 1), "{r:?}");
        assert_eq!(r.first_rejections[0].0, 3);
        let r = run(ingestor, &csv, &opts(Format::Csv, EventKind::Order))
            .await
            .expect("csv import");
        assert_eq!((r.accepted, r.rejected), (2, 1), "{r:?}");
        assert_eq!(
            (
                r.first_rejections[0].1.as_str(),
                r.first_rejections[0].2.as_str()
            ),
            ("status", "UNKNOWN_ENUM")
        );
    }
    let delivered = h.delivery.events();
    assert_eq!(delivered.len(), 8);
    assert!(delivered.iter().all(|d| d.lane == Lane::Backfill));
    let mut ids: Vec<_> = delivered.into_iter().map(|d| d.event.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        [
            "order:o-1:2",
            "order:o-1:4",
            "survey:post-delivery:r-20251114-0001",
            "survey:post-delivery:r-20251114-0002"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
