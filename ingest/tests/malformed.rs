//! The table of malformed input, in process with API keys on: every case
//! is refused with its exact field and reason and gets a dead letter, and
//! the valid records sent in the same batch around it are accepted and
//! delivered. Whole-request faults (no key, unknown key, oversized body)
//! get their HTTP status. The path to the real dead-letter topic is
//! `tests/ingest_malformed.rs` at the workspace root.

mod support;

use serde_json::{Value, json};
use xoflow_common::clock;
use xoflow_ingest::config::AuthMode;

/// One malformed record: its bytes, and the first violation expected.
struct Case {
    name: &'static str,
    line: Vec<u8>,
    field: &'static str,
    reason: &'static str,
}

fn case(name: &'static str, field: &'static str, reason: &'static str, v: Value) -> Case {
    Case {
        name,
        line: v.to_string().into_bytes(),
        field,
        reason,
    }
}

fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut v);
    v
}

fn canonical_cases(now: i64) -> Vec<Case> {
    let b = |kind: &str, n: &str| support::base(kind, &format!("bad-{n}"), now);
    let long = "x".repeat(65 * 1024);
    vec![
        case(
            "event id of the wrong type",
            "eventId",
            "INVALID",
            with(b("order", "1"), |v| v["eventId"] = json!(5)),
        ),
        case(
            "key for the wrong tenant",
            "tenant",
            "PERMISSION_DENIED",
            with(b("order", "2"), |v| v["tenant"] = json!("other")),
        ),
        case(
            "key for another source",
            "source",
            "PERMISSION_DENIED",
            with(b("order", "3"), |v| v["source"] = json!("pos")),
        ),
        case(
            "missing occurred_at",
            "occurred_at",
            "MISSING",
            with(b("order", "4"), |v| {
                v.as_object_mut().map(|o| o.remove("occurredAt"));
            }),
        ),
        case(
            "unparseable timestamp",
            "occurredAt",
            "INVALID",
            with(b("order", "5"), |v| v["occurredAt"] = json!("yesterday")),
        ),
        case(
            "impossible date",
            "occurredAt",
            "INVALID",
            with(b("order", "6"), |v| {
                v["occurredAt"] = json!("2025-13-01T00:00:00Z")
            }),
        ),
        case(
            "far future",
            "occurred_at",
            "OUT_OF_RANGE",
            with(b("order", "7"), |v| {
                v["occurredAt"] = json!(support::iso(now + 86_400_000))
            }),
        ),
        case(
            "far past",
            "occurred_at",
            "OUT_OF_RANGE",
            with(b("order", "8"), |v| {
                v["occurredAt"] = json!("2001-01-01T00:00:00Z")
            }),
        ),
        case(
            "no payload",
            "payload",
            "MISSING",
            with(b("order", "9"), |v| {
                v.as_object_mut().map(|o| o.remove("order"));
            }),
        ),
        case(
            "unknown enum name",
            "order.status",
            "UNKNOWN_ENUM",
            with(b("order", "10"), |v| {
                v["order"]["status"] = json!("ORDER_STATUS_LOST")
            }),
        ),
        case(
            "unknown enum number",
            "order.status",
            "UNKNOWN_ENUM",
            with(b("order", "11"), |v| v["order"]["status"] = json!(99)),
        ),
        case(
            "missing enum",
            "order.status",
            "MISSING",
            with(b("order", "12"), |v| {
                v["order"].as_object_mut().map(|o| o.remove("status"));
            }),
        ),
        case(
            "negative amount",
            "order.amount_minor",
            "OUT_OF_RANGE",
            with(b("order", "13"), |v| {
                v["order"]["amountMinor"] = json!("-5")
            }),
        ),
        case(
            "amount not a number",
            "order.amountMinor",
            "INVALID",
            with(b("order", "14"), |v| {
                v["order"]["amountMinor"] = json!("abc")
            }),
        ),
        case(
            "lower-case currency",
            "order.currency",
            "INVALID",
            with(b("order", "15"), |v| v["order"]["currency"] = json!("cny")),
        ),
        case(
            "zero quantity",
            "order.items[0].quantity",
            "OUT_OF_RANGE",
            with(b("order", "16"), |v| {
                v["order"]["items"][0]["quantity"] = json!(0)
            }),
        ),
        case(
            "missing order id",
            "order.order_id",
            "MISSING",
            with(b("order", "17"), |v| {
                v["order"].as_object_mut().map(|o| o.remove("orderId"));
            }),
        ),
        case(
            "event id too long",
            "event_id",
            "TOO_LONG",
            with(b("order", "18"), |v| v["eventId"] = json!("e".repeat(200))),
        ),
        case(
            "event id with a space",
            "event_id",
            "INVALID",
            with(b("order", "19"), |v| v["eventId"] = json!("bad 19")),
        ),
        case(
            "unknown field",
            "colour",
            "INVALID",
            with(b("order", "20"), |v| v["colour"] = json!("red")),
        ),
        case(
            "NPS above 10",
            "survey.answers[0].score",
            "OUT_OF_RANGE",
            with(b("survey", "21"), |v| {
                v["survey"]["answers"][0]["score"] = json!(11)
            }),
        ),
        case(
            "CSAT on a 1-4 scale",
            "survey.answers[0].scale_max",
            "INVALID",
            with(b("survey", "22"), |v| {
                v["survey"]["answers"][0] = json!({"questionId": "c", "kind": "METRIC_KIND_CSAT", "score": 3, "scaleMin": 1, "scaleMax": 4});
            }),
        ),
        case(
            "fractional NPS",
            "survey.answers[0].score",
            "INVALID",
            with(b("survey", "23"), |v| {
                v["survey"]["answers"][0]["score"] = json!(7.5)
            }),
        ),
        case(
            "CES below its scale",
            "survey.answers[0].score",
            "OUT_OF_RANGE",
            with(b("survey", "24"), |v| {
                v["survey"]["answers"][0] = json!({"questionId": "c", "kind": "METRIC_KIND_CES", "score": 0, "scaleMin": 1, "scaleMax": 7});
            }),
        ),
        case(
            "unknown metric kind",
            "survey.answers[0].kind",
            "UNKNOWN_ENUM",
            with(b("survey", "25"), |v| {
                v["survey"]["answers"][0]["kind"] = json!("METRIC_KIND_STARS")
            }),
        ),
        case(
            "no answers and no comment",
            "survey.answers",
            "MISSING",
            with(b("survey", "26"), |v| {
                v["survey"] = json!({"surveyId": "s"})
            }),
        ),
        case(
            "oversized comment",
            "survey.comment",
            "TOO_LONG",
            with(b("survey", "27"), |v| v["survey"]["comment"] = json!(long)),
        ),
        case(
            "score of the wrong type",
            "survey.answers[0].score",
            "INVALID",
            with(b("survey", "28"), |v| {
                v["survey"]["answers"][0]["score"] = json!("x")
            }),
        ),
        case(
            "segment ends before it starts",
            "call.segments[0].end_ms",
            "OUT_OF_RANGE",
            with(b("call", "29"), |v| {
                v["call"]["segments"][0]["endMs"] = json!(0)
            }),
        )
        .with_start(&mut |v| v["call"]["segments"][0]["startMs"] = json!(500)),
        case(
            "unknown speaker",
            "call.segments[0].speaker",
            "UNKNOWN_ENUM",
            with(b("call", "30"), |v| {
                v["call"]["segments"][0]["speaker"] = json!("SPEAKER_ROBOT")
            }),
        ),
        case(
            "call ends before it starts",
            "call.ended_at",
            "OUT_OF_RANGE",
            with(b("call", "31"), |v| {
                v["call"]["endedAt"] = json!(support::iso(now - 900_000))
            }),
        ),
        case(
            "negative offset",
            "call.segments[0].startMs",
            "INVALID",
            with(b("call", "32"), |v| {
                v["call"]["segments"][0]["startMs"] = json!(-1)
            }),
        ),
        case(
            "missing post id",
            "social.post_id",
            "MISSING",
            with(b("social", "33"), |v| {
                v["social"].as_object_mut().map(|o| o.remove("postId"));
            }),
        ),
        case(
            "missing click action",
            "click.action",
            "MISSING",
            with(b("click", "34"), |v| {
                v["click"].as_object_mut().map(|o| o.remove("action"));
            }),
        ),
        case(
            "relative click path",
            "click.path",
            "INVALID",
            with(b("click", "35"), |v| v["click"]["path"] = json!("checkout")),
        ),
        case(
            "unknown click action",
            "click.action",
            "UNKNOWN_ENUM",
            with(b("click", "36"), |v| v["click"]["action"] = json!(42)),
        ),
        case(
            "unknown channel",
            "touchpoint.channel",
            "UNKNOWN_ENUM",
            with(b("order", "37"), |v| {
                v["touchpoint"] = json!({"channel": "CHANNEL_FAX"})
            }),
        ),
        case(
            "not an e-mail",
            "customer.email",
            "INVALID",
            with(b("order", "38"), |v| {
                v["customer"] = json!({"email": "not-an-email"})
            }),
        ),
        case(
            "not a phone",
            "customer.phone",
            "INVALID",
            with(b("order", "39"), |v| {
                v["customer"] = json!({"phone": "call me"})
            }),
        ),
        case(
            "empty attribute key",
            "attributes[\"\"]",
            "INVALID",
            with(b("order", "40"), |v| v["attributes"] = json!({"": "x"})),
        ),
        case(
            "control character in a store id",
            "location.store_id",
            "INVALID",
            with(b("order", "41"), |v| {
                v["location"] = json!({"storeId": "sz\u{7}01"})
            }),
        ),
        case(
            "duplicate id in the batch",
            "event_id",
            "DUPLICATE",
            support::base("order", "ok-0", now),
        ),
        Case {
            name: "invalid UTF-8",
            line: b"{\"eventId\": \"\xff\xfe\"}".to_vec(),
            field: "",
            reason: "DECODE",
        },
        Case {
            name: "truncated JSON",
            line: b"{\"eventId\": \"t\", \"order\": {".to_vec(),
            field: "order",
            reason: "DECODE",
        },
        Case {
            name: "not an object",
            line: b"42".to_vec(),
            field: "",
            reason: "INVALID",
        },
    ]
}

trait WithStart {
    fn with_start(self, f: &mut dyn FnMut(&mut Value)) -> Self;
}

impl WithStart for Case {
    fn with_start(mut self, f: &mut dyn FnMut(&mut Value)) -> Self {
        let mut v: Value = serde_json::from_slice(&self.line).expect("json");
        f(&mut v);
        self.line = v.to_string().into_bytes();
        self
    }
}

fn native_cases() -> Vec<(&'static str, Case)> {
    let survey: Value = serde_json::from_str(&support::sample("survey.en.json")).expect("sample");
    let call: Value = serde_json::from_str(&support::sample("call.en.json")).expect("sample");
    let order: Value = serde_json::from_str(&support::sample("order.cdc.json")).expect("sample");
    let click: Value = serde_json::from_str(&support::sample("click.track.json")).expect("sample");
    vec![
        (
            "survey",
            case(
                "NPS as a word",
                "answers[0].value",
                "INVALID",
                with(survey.clone(), |v| v["answers"][0]["value"] = json!("nine")),
            ),
        ),
        (
            "survey",
            case(
                "unknown answer type",
                "answers[0].type",
                "UNKNOWN_ENUM",
                with(survey.clone(), |v| v["answers"][0]["type"] = json!("stars")),
            ),
        ),
        (
            "survey",
            case(
                "missing response id",
                "response_id",
                "MISSING",
                with(survey.clone(), |v| {
                    v.as_object_mut().map(|o| o.remove("response_id"));
                }),
            ),
        ),
        (
            "survey",
            case(
                "local date format",
                "submitted_at",
                "INVALID",
                with(survey.clone(), |v| v["submitted_at"] = json!("14/11/2025")),
            ),
        ),
        (
            "survey",
            case(
                "CES above 7",
                "survey.answers[2].score",
                "OUT_OF_RANGE",
                with(survey, |v| v["answers"][2]["value"] = json!(9)),
            ),
        ),
        (
            "call",
            case(
                "unknown speaker label",
                "segments[0].speaker",
                "UNKNOWN_ENUM",
                with(call.clone(), |v| {
                    v["segments"][0]["speaker"] = json!("robot")
                }),
            ),
        ),
        (
            "call",
            case(
                "negative segment start",
                "segments[0].start",
                "OUT_OF_RANGE",
                with(call, |v| v["segments"][0]["start"] = json!(-3)),
            ),
        ),
        (
            "order",
            case(
                "unknown order status",
                "status",
                "UNKNOWN_ENUM",
                with(order.clone(), |v| v["after"]["status"] = json!("lost")),
            ),
        ),
        (
            "order",
            case(
                "amount as text",
                "after.amount_minor",
                "INVALID",
                with(order, |v| v["after"]["amount_minor"] = json!("5600.00")),
            ),
        ),
        (
            "click",
            case(
                "identify call",
                "type",
                "UNKNOWN_ENUM",
                with(click.clone(), |v| v["type"] = json!("identify")),
            ),
        ),
        (
            "click",
            case(
                "missing message id",
                "messageId",
                "MISSING",
                with(click.clone(), |v| {
                    v.as_object_mut().map(|o| o.remove("messageId"));
                }),
            ),
        ),
        (
            "click",
            case(
                "duration as text",
                "properties.duration_ms",
                "INVALID",
                with(click, |v| v["properties"]["duration_ms"] = json!("long")),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_record_gets_its_field_reason_and_dead_letter() {
    let mut cfg = support::config(&support::api_key_toml());
    cfg.auth = AuthMode::ApiKey;
    cfg.max_body_bytes = 1024 * 1024;
    let h = support::Harness::new(&cfg);
    let now = clock::now_unix_millis();
    let key = [
        ("x-api-key", support::ACME_KEY),
        ("Content-Type", "application/x-ndjson"),
    ];

    // Canonical: valid records interleaved with the bad ones in one batch.
    let cases = canonical_cases(now);
    let mut body = Vec::new();
    let mut expected_valid = 0;
    let mut bad_at = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let ok = support::base(
            ["order", "survey", "call", "social", "click"][i % 5],
            &format!("ok-{i}"),
            now,
        );
        body.extend_from_slice(ok.to_string().as_bytes());
        body.push(b'\n');
        expected_valid += 1;
        bad_at.push(2 * i + 1);
        body.extend_from_slice(&c.line);
        body.push(b'\n');
    }
    let r = h.http("/v1/events", &key, Some(&body)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2 * cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let good = &results[2 * i];
        assert_eq!(
            good["accepted"], true,
            "valid record next to {:?}: {good}",
            c.name
        );
        let bad = &results[bad_at[i]];
        let got = (
            bad["violations"][0]["field"].as_str().unwrap_or(""),
            bad["violations"][0]["reason"].as_str().unwrap_or(""),
        );
        if bad["accepted"] == true || got != (c.field, c.reason) {
            failures.push(format!(
                "{}: want {:?} got {bad}",
                c.name,
                (c.field, c.reason)
            ));
        }
    }

    // Source-native: each kind's bad records between two good ones.
    let natives = native_cases();
    let mut native_valid = 0;
    for (kind, c) in &natives {
        let good = support::sample(match *kind {
            "survey" => "survey.zh.json",
            "call" => "call.zh.json",
            "order" => "order.cdc.json",
            _ => "click.track.json",
        });
        let body = [good.as_bytes(), &c.line].join(&b'\n');
        let r = h
            .http(
                &format!("/v1/sources/{kind}/survey-tool"),
                &key,
                Some(&body),
            )
            .await;
        let v = r.json();
        assert_eq!(v["results"][0]["accepted"], true, "{}: {v}", c.name);
        native_valid += 1;
        let bad = &v["results"][1];
        let got = (
            bad["violations"][0]["field"].as_str().unwrap_or(""),
            bad["violations"][0]["reason"].as_str().unwrap_or(""),
        );
        if bad["accepted"] == true || got != (c.field, c.reason) {
            failures.push(format!(
                "native {}: want {:?} got {bad}",
                c.name,
                (c.field, c.reason)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let total_cases = cases.len() + natives.len();
    assert!(total_cases >= 40, "only {total_cases} cases");

    // Every refusal has a dead letter with its field and reason.
    let letters = h.dead_letters();
    assert_eq!(letters.len(), total_cases);
    let mut got: Vec<(String, String)> = letters
        .iter()
        .map(|d| (d.field.clone(), d.reason.clone()))
        .collect();
    let mut want: Vec<(String, String)> = cases
        .iter()
        .chain(natives.iter().map(|(_, c)| c))
        .map(|c| (c.field.to_string(), c.reason.to_string()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(
        letters
            .iter()
            .all(|d| d.stage == "ingest" && d.at.is_some() && !d.payload.is_empty())
    );
    // Native records enter under the key's source: the wrong-tenant record
    // kept its claimed tenant for attribution.
    assert!(
        letters
            .iter()
            .any(|d| d.reason == "PERMISSION_DENIED" && d.tenant == "other")
    );

    // The valid records of those batches are all delivered. (The duplicate
    // case reuses ok-0's id, so it is the one refused.)
    let events = h.events();
    assert_eq!(events.len(), expected_valid + native_valid);

    // Whole-request faults.
    let ok = support::base("order", "auth-1", now).to_string();
    let none = h.http("/v1/events", &[], Some(ok.as_bytes())).await;
    assert_eq!(none.status, 401);
    let wrong = h
        .http("/v1/events", &[("x-api-key", "guess")], Some(ok.as_bytes()))
        .await;
    assert_eq!(wrong.status, 401);
    let big = vec![b'{'; 2 * 1024 * 1024];
    assert_eq!(h.http("/v1/events", &key, Some(&big)).await.status, 413);
}

/// A 1 MB `event_id` is refused without being sent back whole, and its
/// dead letter is cut to fit one Kafka message, saying so.
#[tokio::test]
async fn an_oversized_id_is_neither_echoed_nor_lost() {
    let mut cfg = support::config("");
    cfg.max_body_bytes = 4 * 1024 * 1024;
    let h = support::Harness::new(&cfg);
    let now = clock::now_unix_millis();
    let huge = "i".repeat(1024 * 1024);
    let body = with(support::base("order", "x", now), |v| {
        v["eventId"] = json!(huge)
    })
    .to_string();
    let r = h.http("/v1/events", &[], Some(body.as_bytes())).await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() < 4096, "answer of {} bytes", r.body.len());
    let v = r.json();
    let echoed = v["results"][0]["eventId"].as_str().expect("eventId");
    assert_eq!(v["rejected"], 1);
    assert!(echoed.ends_with("…(truncated, 1048576 bytes)"), "{echoed}");
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1);
    let d = &letters[0];
    use xoflow_proto::Message;
    assert!(
        d.encoded_len() <= xoflow_ingest::core::verdict::MAX_DEAD_LETTER_BYTES,
        "{} bytes",
        d.encoded_len()
    );
    assert!(
        d.description
            .starts_with("[truncated: payload keeps the first ")
    );
    assert!(d.event_id.contains("truncated"), "{}", d.event_id.len());
    assert!(
        body.as_bytes().starts_with(&d.payload),
        "a prefix of what was sent"
    );
    assert_eq!(d.field, "event_id");
}

/// An empty body is no request: 400 with its own code, nothing delivered.
#[tokio::test]
async fn an_empty_body_is_a_400_with_a_reason() {
    let h = support::Harness::new(&support::config(""));
    for (path, body) in [
        ("/v1/events", &b""[..]),
        ("/v1/events", b" \n "),
        ("/v1/sources/survey/tool", b""),
    ] {
        let r = h.http(path, &[], Some(body)).await;
        assert_eq!(r.status, 400, "{path} {body:?}");
        assert_eq!(r.json()["code"], "empty_body");
    }
    assert!(h.events().is_empty() && h.dead_letters().is_empty());
}

/// A client that goes away mid-body is counted as an abort, not as a body
/// over the limit.
#[tokio::test]
async fn a_client_abort_is_no_oversized_body() {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;
    let h = support::Harness::new(&support::config(""));
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![
        Ok(b"[{\"a\":"),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        )),
    ];
    let request = Request::post("/v1/events")
        .header("content-type", "application/json")
        .body(Body::from_stream(tokio_stream::iter(chunks)))
        .expect("request");
    let r = h.router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(r.status(), 400);
    let body = axum::body::to_bytes(r.into_body(), usize::MAX)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["code"], "client_aborted");
}
