//! B2: the gRPC collector against a bare tonic server of the same service
//! ([`super::grpc`]), batched, client-streaming and one event per request.

use anyhow::Context;
use xoflow_app::{Config, Stages};
use xoflow_common::shutdown::Shutdown;
use xoflow_proto::v1::Event;

use super::{
    grpc,
    report::{Row, compared, row},
    support::ready,
};

/// B2: the collector (in this process, on its own topics) and a bare
/// tonic server of the same service, driven by the same client with the
/// same events: batches of 1000 (8 in flight), 4 client streams, and one
/// event per request (64 in flight), each over every event, after a
/// warm-up of 2,000 (connections, the producer's first batches). These
/// rates are the whole run: the client sees no flow to take the middle of
/// beyond its own requests, and nothing waits at the end.
pub(super) async fn measure(cfg: &Config, events: &[Event]) -> anyhow::Result<Vec<Row>> {
    const BATCH: usize = 1_000;
    const CONCURRENCY: usize = 8;
    const STREAMS: usize = 4;
    const UNARY_CONCURRENCY: usize = 64;
    let mut cfg = cfg.clone();
    for t in [
        &mut cfg.kafka.topics.events,
        &mut cfg.kafka.topics.backfill,
        &mut cfg.kafka.topics.dead_letters,
    ] {
        t.push_str(".b2");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let echo = grpc::serve_echo(stop.clone()).await?;
    grpc::wait_listening(echo).await?;
    let running = xoflow_app::start(cfg.clone(), Stages::INGEST, Shutdown::new()).await?;
    ready(&running).await?;
    let collector = running.grpc_addr.context("no collector")?;
    let warm: Vec<Event> = events.iter().take(2_000).cloned().collect();
    grpc::unary(echo, warm.clone(), BATCH, 2).await?;
    grpc::unary(collector, warm, BATCH, 2).await?;
    let all = events.to_vec();

    let e_b = grpc::unary(echo, all.clone(), BATCH, CONCURRENCY).await?;
    let c_b = grpc::unary(collector, all.clone(), BATCH, CONCURRENCY).await?;
    let e_s = grpc::streaming(echo, all.clone(), BATCH, STREAMS).await?;
    let c_s = grpc::streaming(collector, all.clone(), BATCH, STREAMS).await?;
    let e_u = grpc::unary(echo, all.clone(), 1, UNARY_CONCURRENCY).await?;
    let c_u = grpc::unary(collector, all, 1, UNARY_CONCURRENCY).await?;
    running.stop();
    running.wait().await?;
    stop.cancel();
    for (what, r) in [("batched", &c_b), ("streaming", &c_s), ("unary", &c_u)] {
        if !r.all_accepted {
            println!("[bench] B2 {what}: the collector did not accept every event");
        }
    }
    Ok(vec![
        compared(
            "B2 collector, batched (1000/request)",
            c_b.per_second,
            "events/s",
            e_b.per_second,
            0.85,
        ),
        compared(
            "B2 collector, client streaming",
            c_s.per_second,
            "events/s",
            e_s.per_second,
            0.85,
        ),
        compared(
            "B2 collector, unary (1 event/request)",
            c_u.per_second,
            "events/s",
            e_u.per_second,
            0.85,
        ),
        compared(
            "B2 collector batched vs its unary",
            c_b.per_second,
            "events/s",
            c_u.per_second,
            10.0,
        ),
        compared(
            "B2 collector streaming vs its unary",
            c_s.per_second,
            "events/s",
            c_u.per_second,
            10.0,
        ),
        row("B2 baseline echo, batched", e_b.per_second, "events/s"),
        row("B2 baseline echo, streaming", e_s.per_second, "events/s"),
        row("B2 baseline echo, unary", e_u.per_second, "events/s"),
    ])
}
