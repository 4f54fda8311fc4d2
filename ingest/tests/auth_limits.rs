//! Keys and limits, in process, over both APIs: a request without a key or
//! with an unknown one is refused whole (401 / UNAUTHENTICATED); a key
//! writing another tenant's or source's records gets PERMISSION_DENIED on
//! that record alone, with a dead letter; a batch over
//! `ingest.max_batch_events` is refused whole (413 / INVALID_ARGUMENT with
//! a bad-request detail) and nothing of it is delivered.

mod support;

use tonic::{Code, Request, metadata::MetadataValue};
use tonic_types::StatusExt;
use xoflow_common::clock;
use xoflow_ingest::config::AuthMode;
use xoflow_proto::v1::{Event, IngestRequest};

fn api_key_config() -> xoflow_ingest::IngestConfig {
    let mut cfg = support::config(&support::api_key_toml());
    cfg.auth = AuthMode::ApiKey;
    cfg.max_batch_events = 10;
    cfg
}

fn request(events: Vec<Event>, key: Option<&str>) -> Request<IngestRequest> {
    let mut r = Request::new(IngestRequest { events });
    if let Some(k) = key {
        r.metadata_mut()
            .insert("x-api-key", MetadataValue::try_from(k).expect("ascii key"));
    }
    r
}

#[tokio::test]
async fn grpc_keys_bind_callers_to_their_tenant_and_source() {
    let h = support::Harness::new(&api_key_config());
    let mut client = h.grpc().await;
    let now = clock::now_unix_millis();

    for key in [None, Some("guess")] {
        let status = client
            .ingest(request(support::events(2, "nokey", now), key))
            .await
            .expect_err("refused whole");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // acme's key: its own records pass, another tenant's and another
    // source's are refused alone.
    let mut events = support::events(4, "acme", now);
    events[1].tenant = "other".into();
    events[2].source = "pos".into();
    let r = client
        .ingest(request(events, Some(support::ACME_KEY)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!((r.accepted, r.rejected), (2, 2), "{r:?}");
    let denied: Vec<_> = r
        .results
        .iter()
        .filter(|x| !x.accepted)
        .map(|x| {
            (
                x.index,
                x.violations[0].field.as_str(),
                x.violations[0].reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        denied,
        [
            (1, "tenant", "PERMISSION_DENIED"),
            (2, "source", "PERMISSION_DENIED")
        ]
    );

    // The other tenant's key writes its own tenant, filled in when empty.
    let mut mine = support::events(1, "other", now);
    mine[0].tenant.clear();
    mine[0].source.clear();
    let r = client
        .ingest(request(mine, Some(support::OTHER_KEY)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");

    let events = h.events();
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .any(|e| e.tenant == "other" && e.source == "crm")
    );
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|d| d.reason == "PERMISSION_DENIED"));
    assert!(letters.iter().any(|d| d.tenant == "other"));
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole_on_both_apis() {
    let h = support::Harness::new(&api_key_config());
    let now = clock::now_unix_millis();
    let events = support::events(11, "big", now);

    let status = h
        .grpc()
        .await
        .ingest(request(events.clone(), Some(support::ACME_KEY)))
        .await
        .expect_err("refused whole");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("bad-request detail");
    assert_eq!(bad.field_violations[0].field, "events");

    let body: String = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("json") + "\n")
        .collect();
    let r = h
        .http(
            "/v1/events",
            &[
                ("x-api-key", support::ACME_KEY),
                ("content-type", "application/x-ndjson"),
            ],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "batch_too_large");
    assert!(h.events().is_empty());
    assert!(h.dead_letters().is_empty());
}

#[tokio::test]
async fn kafka_not_acknowledging_is_unavailable_with_a_retry_hint() {
    let h = support::Harness::new(&support::config(""));
    let events = support::events(2, "down", clock::now_unix_millis());
    h.delivery
        .fail_next(xoflow_ingest::IngestError::Unavailable {
            class: "unavailable",
        });
    let status = h
        .grpc()
        .await
        .ingest(request(events.clone(), None))
        .await
        .expect_err("nothing acknowledged");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.get_error_details().retry_info().is_some());

    h.delivery
        .fail_next(xoflow_ingest::IngestError::Unavailable {
            class: "unavailable",
        });
    let body = serde_json::to_string(&events[0]).expect("json");
    let r = h.http("/v1/events", &[], Some(body.as_bytes())).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(h.events().is_empty());
}
