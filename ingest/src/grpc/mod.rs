//! The gRPC collector: `xoflow.v1.Collector` with standard health and
//! reflection services on the same port.
//!
//! `Ingest` takes a batch and answers one `RecordResult` per event after the
//! accepted ones are durable in Kafka. `IngestStream` takes a stream of
//! batches, delivers each as it arrives, and answers once at the end. Whole-
//! request failures (broker down, overload, no key, oversized batch) are
//! `Status` codes with `google.rpc` details, mapped in [`crate::error`].

mod service;

pub use service::CollectorService;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xoflow_common::admin::Readiness;
use xoflow_proto::v1::collector_server::CollectorServer;

/// Serves the collector, health and reflection on `listener` (over TLS when
/// `tls` is given) until `stop` is cancelled; in-flight requests finish first.
pub async fn serve(
    listener: TcpListener,
    service: CollectorService,
    max_message_bytes: usize,
    tls: Option<&crate::tls::Identity>,
    readiness: Readiness,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CollectorServer<CollectorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(xoflow_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "reflection descriptors are invalid");
        })
        .ok();
    let collector = CollectorServer::new(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let mut server = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        server = server.tls_config(identity.grpc())?;
    }
    let mut router = server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(collector);
    if let Some(r) = reflection {
        router = router.add_service(r);
    }
    readiness.set(true);
    let stopping = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            readiness.set(false);
            health_reporter
                .set_not_serving::<CollectorServer<CollectorService>>()
                .await;
        }
    };
    router
        // Nagle would hold small answers back until the client's delayed
        // ACK: tens of milliseconds per unary call. `Server::serve` sets
        // this by default; a listener of our own must ask.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopping,
        )
        .await
}
