//! Decode + normalise throughput per kind, on one core: canonical JSON
//! (`/v1/events`) and source-native JSON (`/v1/sources/{kind}/...`) through
//! `handle_batch` (validation, keyed hashes, PII masking, language, journey
//! rules, dedup, protobuf encoding). Kafka is not involved.
//!
//! `cargo bench --bench ingest_normalise`; criterion reports elements/s,
//! i.e. events (or, in `keyed_hash`, identifiers) per second per core.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xoflow_ingest::{
    core::handle_batch,
    framing::decode_events,
    normalise::Normaliser,
    sources::{self, Origin},
    tenant::Tenants,
};
use xoflow_proto::EventKind;

// The allocator the `xoflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1_000;

fn normaliser() -> Normaliser {
    let cfg = xoflow::Config::from_toml("").expect("defaults");
    let tenants = Tenants::from_config(&cfg.ingest).expect("tenants");
    Normaliser::with_tenants(
        Arc::new(tenants),
        cfg.ingest.max_future_skew,
        cfg.ingest.max_age,
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sample(name: &str, i: usize, yesterday: &str) -> String {
    let path = format!("{}/ingest/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("sample");
    let v: serde_json::Value =
        serde_json::from_str(&text.replace("2025-11-14", yesterday)).expect("json");
    // Distinct natural ids so no record is a duplicate.
    v.to_string()
        .replace("r-20251114-0001", &format!("r-{i}"))
        .replace("cc-7f3a91", &format!("cc-{i}"))
        .replace("4987654321", &format!("49{i}"))
        .replace("o-88231", &format!("o-{i}"))
        .replace("ajs-next-1763126400-4f1d", &format!("m-{i}"))
}

fn bench(c: &mut Criterion) {
    let n = normaliser();
    let now = now_ms();
    let yesterday = chrono::DateTime::from_timestamp_millis(now - 86_400_000)
        .expect("a clock in range")
        .format("%Y-%m-%d")
        .to_string();

    let mut g = c.benchmark_group("native");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (kind, file) in [
        (EventKind::Survey, "survey.zh.json"),
        (EventKind::Call, "call.zh.json"),
        (EventKind::Social, "social.zh.json"),
        (EventKind::Order, "order.cdc.json"),
        (EventKind::Click, "click.track.json"),
    ] {
        let lines: Vec<String> = (0..BATCH).map(|i| sample(file, i, &yesterday)).collect();
        g.bench_function(kind.as_str(), |b| {
            b.iter(|| {
                let origin = Origin {
                    tenant: "acme",
                    source: "bench",
                };
                let records = lines
                    .iter()
                    .map(|l| sources::decode(kind, l.as_bytes(), origin))
                    .collect();
                let v = handle_batch(&n, records, 0, None, now);
                assert_eq!(v.accepted.len(), BATCH);
                v
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("canonical_json");
    g.throughput(Throughput::Elements(BATCH as u64));
    let events = xoflow::sample::events(11, BATCH * 5, "acme", "b", now);
    for kind in EventKind::ALL {
        let body: String = events
            .iter()
            .filter(|e| e.kind() == Some(kind))
            .map(|e| serde_json::to_string(e).expect("json") + "\n")
            .collect();
        g.bench_function(kind.as_str(), |b| {
            b.iter(|| {
                let v = handle_batch(&n, decode_events(body.as_bytes(), true), 0, None, now);
                assert_eq!(v.accepted.len(), BATCH);
                v
            })
        });
    }
    g.finish();

    // The keyed hash alone: every weak identifier of every event pays it.
    let mut g = c.benchmark_group("keyed_hash");
    g.throughput(Throughput::Elements(BATCH as u64));
    let emails: Vec<String> = (0..BATCH)
        .map(|i| format!("customer{i}@example.com"))
        .collect();
    g.bench_function("email", |b| {
        b.iter(|| {
            emails
                .iter()
                .map(|e| n.hash("acme", "email", e).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
