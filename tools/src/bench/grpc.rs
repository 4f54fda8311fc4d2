//! B2's baseline and its client: a bare tonic server of the collector's
//! service, and the unary and client-streaming drivers that send the same
//! events to it and to the real collector ([`super::collector`]).
//!
//! The echo server implements `xoflow.v1.Collector` with handlers that
//! answer at once, building the same response the collector builds (one
//! `RecordResult` per event), so the difference between the two is exactly
//! validation, normalisation, encoding and the wait for Kafka.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Channel, server::TcpIncoming},
};
use xoflow_proto::v1::{
    Event, IngestRequest, IngestResponse, RecordResult,
    collector_client::CollectorClient,
    collector_server::{Collector, CollectorServer},
};

use crate::datagen::load::{LoadOptions, send};

/// Largest message either side accepts.
const MAX_MESSAGE: usize = 64 << 20;

/// A collector that accepts everything and keeps nothing.
#[derive(Debug, Clone, Copy)]
struct Echo;

fn accept_all(events: &[Event], first: u32) -> impl Iterator<Item = RecordResult> + '_ {
    events.iter().enumerate().map(move |(i, e)| RecordResult {
        index: first + i as u32,
        event_id: e.event_id.clone(),
        accepted: true,
        violations: Vec::new(),
    })
}

fn response(results: Vec<RecordResult>) -> IngestResponse {
    IngestResponse {
        accepted: results.len() as u32,
        rejected: 0,
        results,
    }
}

#[tonic::async_trait]
impl Collector for Echo {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let events = request.into_inner().events;
        Ok(Response::new(response(accept_all(&events, 0).collect())))
    }

    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestResponse>, Status> {
        let mut stream = request.into_inner();
        let mut results = Vec::new();
        while let Some(batch) = stream.message().await? {
            let first = results.len() as u32;
            results.extend(accept_all(&batch.events, first));
        }
        Ok(Response::new(response(results)))
    }
}

/// Serves the echo collector on a free loopback port until `stop`.
pub async fn serve_echo(stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // What `Server::serve` does by default; a custom listener must ask.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = CollectorServer::new(Echo)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "echo server failed");
        }
    });
    Ok(addr)
}

/// Events per second a client reached, and whether every event was
/// acknowledged.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    pub events: u64,
    pub per_second: f64,
    pub all_accepted: bool,
}

/// Unary `Ingest` requests of `batch` events, `concurrency` in flight.
pub async fn unary(
    addr: SocketAddr,
    events: Vec<Event>,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<Rate> {
    let n = events.len() as u64;
    let report = send(
        &format!("http://{addr}"),
        events,
        &LoadOptions {
            batch,
            rate: None,
            concurrency,
        },
    )
    .await?;
    Ok(Rate {
        events: n,
        per_second: report.events_per_second(),
        all_accepted: report.accepted == n && report.failed_requests == 0,
    })
}

/// `streams` concurrent `IngestStream` calls, each sending its share of the
/// events in messages of `batch`.
pub async fn streaming(
    addr: SocketAddr,
    events: Vec<Event>,
    batch: usize,
    streams: usize,
) -> anyhow::Result<Rate> {
    let n = events.len() as u64;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = CollectorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let streams = streams.max(1);
    let share = events.len().div_ceil(streams).max(1);
    let mut parts: Vec<Vec<IngestRequest>> = Vec::new();
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        let mut part = Vec::new();
        let mut taken = 0;
        while taken < share && it.peek().is_some() {
            let chunk: Vec<Event> = it.by_ref().take(batch.min(share - taken)).collect();
            taken += chunk.len();
            part.push(IngestRequest { events: chunk });
        }
        parts.push(part);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for part in parts {
        let mut client = client.clone();
        tasks.spawn(async move { client.ingest_stream(tokio_stream::iter(part)).await });
    }
    let mut accepted = 0u64;
    let mut failed = false;
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(r) => accepted += u64::from(r.into_inner().accepted),
            Err(status) => {
                failed = true;
                tracing::warn!(code = ?status.code(), message = status.message(), "stream failed");
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Rate {
        events: n,
        per_second: n as f64 / seconds.max(1e-9),
        all_accepted: !failed && accepted == n,
    })
}

/// Waits until a gRPC server accepts connections at `addr`.
pub async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < until, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
