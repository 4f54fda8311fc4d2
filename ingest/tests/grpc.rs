//! The collector's gRPC surface as a data engineer meets it, in process:
//! reflection lists the service, health reports SERVING, and a bad record
//! gets its own verdict with the field at fault while the good ones in the
//! same batch are accepted.

mod support;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use xoflow_common::clock;
use xoflow_proto::v1::IngestRequest;

#[tokio::test]
async fn reflection_lists_the_collector_and_health_reports_serving() {
    let running = support::Served::start(&support::config("")).await;
    let url = format!("http://{}", running.grpc_addr);

    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("stream")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"xoflow.v1.Collector"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let mut health = HealthClient::new(channel);
    for service in ["xoflow.v1.Collector", ""] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    running.stop().await;
}

#[tokio::test]
async fn a_bad_record_is_refused_alone_with_its_field() {
    let h = support::Harness::new(&support::config(""));
    let mut client = h.grpc().await;
    let mut events = support::events(5, "grpc", clock::now_unix_millis());
    events[2].tenant.clear();
    let r = client
        .ingest(IngestRequest { events })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!((r.accepted, r.rejected), (4, 1));
    let bad = &r.results[2];
    assert!(!bad.accepted);
    assert_eq!(bad.violations[0].field, "tenant");
    assert_eq!(bad.violations[0].reason, "MISSING");
    assert!(
        r.results
            .iter()
            .enumerate()
            .all(|(i, x)| x.accepted == (i != 2))
    );
    assert_eq!(h.events().len(), 4);
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].field.as_str(), letters[0].reason.as_str()),
        ("tenant", "MISSING")
    );
}
