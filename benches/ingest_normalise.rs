//! Ingest's per-event work, per source kind: decode the protobuf a client
//! sent, validate, hash identifiers, mask personal data, encode for Kafka.
//! Events are a generated day of realistic data. Reported as events/s on
//! one core.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xoflow::datagen::{self, GenConfig};
use xoflow_ingest::validate::Normaliser;
use xoflow_proto::{EventKind, Message, v1::Event};

fn bench(c: &mut Criterion) {
    let now = 1_794_787_200_000 + 86_400_000;
    let g = datagen::generate(&GenConfig {
        days: 7,
        scale: 1.0,
        invalid_share: 0.0,
        ..GenConfig::default()
    });
    let normaliser = Normaliser::new(
        b"bench-secret-0123456789",
        Duration::from_secs(300),
        Duration::from_secs(400 * 86_400),
    )
    .expect("key");
    let mut group = c.benchmark_group("ingest_decode_normalise");
    for kind in EventKind::ALL {
        let encoded: Vec<Vec<u8>> = g
            .events
            .iter()
            .filter(|e| e.kind() == Some(kind))
            .take(1_000)
            .map(|e| e.encode_to_vec())
            .collect();
        group.throughput(Throughput::Elements(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(kind), &encoded, |b, encoded| {
            b.iter(|| {
                let mut out = 0usize;
                for bytes in encoded {
                    let Ok(mut e) = Event::decode(bytes.as_slice()) else {
                        continue;
                    };
                    if normaliser.normalise(&mut e, now).is_ok() {
                        out += e.encoded_len();
                    }
                }
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
