//! The gRPC collector: `xoflow.v1.Collector` with standard health and
//! reflection services on the same port.
//!
//! `Ingest` takes a batch and answers one `RecordResult` per event after the
//! accepted ones are durable in Kafka. `IngestStream` takes a stream of
//! batches, delivers each as it arrives, and answers once at the end. Whole-
//! request failures (broker down, overload, no key, oversized batch) are
//! `Status` codes with `google.rpc` details, mapped in [`crate::error`].
//!
//! Server limits: at most `ingest.max_connections` connections (one more is
//! closed at once and counted), at most [`STREAMS_PER_CONNECTION`] requests
//! in progress per connection, every request bounded by
//! `request_timeout + body_read_timeout` (a backstop: the handlers answer
//! UNAVAILABLE at `request_timeout`), and HTTP/2 keepalive pings
//! every [`KEEPALIVE_INTERVAL`] closing a connection whose peer does not
//! answer within [`KEEPALIVE_TIMEOUT`].

mod service;

pub use service::CollectorService;

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use xoflow_common::admin::Readiness;
use xoflow_proto::v1::collector_server::CollectorServer;

/// Requests in progress at once on one connection.
pub const STREAMS_PER_CONNECTION: usize = 256;
/// How often an HTTP/2 ping checks that a connection's peer is there.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4); with
/// TLS, as many bytes of its handshake.
const PREFACE_BYTES: usize = 24;

/// A connection counted against `max_connections` until it is dropped.
///
/// A client must send its first [`PREFACE_BYTES`] within the header read
/// timeout: hyper waits for the preface for ever, so a connection opened
/// and left silent would hold its slot (and a descriptor) until the limit
/// refused everyone. After the preface, HTTP/2 keepalive pings find peers
/// that went away.
struct Counted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Arc<Semaphore>,
    max: usize,
    /// Until the preface is in: its deadline and the bytes still missing.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The permit is given back after this body: count it as gone.
        let open = self.max - self.open.available_permits();
        crate::telemetry::connections("grpc", open.saturating_sub(1));
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some((deadline, missing)) = this.preface.as_mut() else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                *missing = missing.saturating_sub(buf.filled().len() - before);
                if *missing == 0 {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                crate::telemetry::ConnectionTimedOut {
                    api: "grpc",
                    phase: "preface",
                }
                .emit();
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the header read timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves the collector, health and reflection on `listener` (over TLS when
/// `tls` is given) until `stop` is cancelled; in-flight requests finish first.
pub async fn serve(
    listener: TcpListener,
    service: CollectorService,
    cfg: &crate::IngestConfig,
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
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let mut server = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        server = server.tls_config(identity.grpc())?;
    }
    let mut router = server
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION)
        .timeout(cfg.request_timeout + cfg.body_read_timeout)
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
    let max = cfg.max_connections;
    let preface_timeout = cfg.header_read_timeout;
    let open = Arc::new(Semaphore::new(max));
    // Nagle would hold small answers back until the client's delayed ACK:
    // tens of milliseconds per unary call. `Server::serve` sets this by
    // default; a listener of our own must ask.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .filter_map(move |accepted| match accepted {
            Ok(tcp) => match open.clone().try_acquire_owned() {
                Ok(permit) => {
                    crate::telemetry::connections("grpc", max - open.available_permits());
                    Some(Ok(Counted {
                        tcp,
                        _permit: permit,
                        open: open.clone(),
                        max,
                        preface: Some((
                            Box::pin(tokio::time::sleep(preface_timeout)),
                            PREFACE_BYTES,
                        )),
                    }))
                }
                // Over the limit: closed at once (an HTTP/2 client sees
                // the connection fail and retries elsewhere or later).
                Err(_) => {
                    crate::telemetry::ConnectionRefused { api: "grpc" }.emit();
                    None
                }
            },
            Err(e) => Some(Err(e)),
        });
    router
        .serve_with_incoming_shutdown(incoming, stopping)
        .await
}
