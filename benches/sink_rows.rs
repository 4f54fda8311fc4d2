//! The sink's per-row work before the wire. `transcode`: what the sink
//! does, the record's RowBinary row written straight from its bytes into
//! the batch's buffer. `decode_and_build`: what it did before, decode an
//! `EnrichedEvent` and build its typed `EventRow` (which the `clickhouse`
//! crate then serialized: not included, so the pair understates the
//! difference). Then the dedup check on (event id, revision). Reported as
//! rows/s on one core. The insert itself is measured end to end against
//! `clickhouse-client` by the benchmark script (BENCHMARKS.md).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xoflow::datagen::{self, GenConfig};
use xoflow_proto::{Message, v1::EnrichedEvent};
use xoflow_sink::clickhouse::{
    position::Written,
    row::{EventRow, EventRows, Lineage},
};

// The allocator the `xoflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let g = datagen::generate(&GenConfig {
        days: 1,
        scale: 0.3,
        invalid_share: 0.0,
        ..GenConfig::default()
    });
    let encoded: Vec<Vec<u8>> = g
        .events
        .into_iter()
        .take(10_000)
        .map(|e| datagen::as_enriched(e).encode_to_vec())
        .collect();
    let mut group = c.benchmark_group("sink_rows");
    group.throughput(Throughput::Elements(encoded.len() as u64));
    group.sample_size(20);
    group.bench_function("transcode", |b| {
        let mut rows = EventRows::default();
        b.iter(|| {
            rows.clear();
            for (i, bytes) in encoded.iter().enumerate() {
                let lineage = Lineage {
                    topic: "xoflow.enriched.v1",
                    partition: 0,
                    offset: i as i64,
                };
                let _ = rows.push(bytes, lineage);
            }
            rows.len()
        })
    });
    group.bench_function("decode_and_build", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for (i, bytes) in encoded.iter().enumerate() {
                let lineage = Lineage {
                    topic: "xoflow.enriched.v1",
                    partition: 0,
                    offset: i as i64,
                };
                if let Some(row) = EnrichedEvent::decode(bytes.as_slice())
                    .ok()
                    .and_then(|en| EventRow::from_record(en, bytes, lineage))
                {
                    n += row.event_id.len();
                }
            }
            n
        })
    });
    // The dedup check as the sink runs it: every row once (a new pair: one
    // copy of its id), then every row again (a copy: no allocation).
    group.throughput(Throughput::Elements(2 * encoded.len() as u64));
    group.bench_function("transcode_and_dedup", |b| {
        let mut rows = EventRows::default();
        b.iter(|| {
            rows.clear();
            let mut written = Written::default();
            let mut n = 0usize;
            for _ in 0..2 {
                for (i, bytes) in encoded.iter().enumerate() {
                    let lineage = Lineage {
                        topic: "xoflow.enriched.v1",
                        partition: 0,
                        offset: i as i64,
                    };
                    if let Ok(row) = rows.push(bytes, lineage) {
                        if written.first_time(row.tenant, row.event_id, row.revision) {
                            n += 1;
                        } else {
                            rows.pop();
                        }
                    }
                }
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
