//! The enrich join operator alone: per-customer state, identity links,
//! sentiment and topics, on a realistic mix of X and O events. Reported as
//! events/s on one core (the stage adds decode, encode and Kafka).
//!
//! Each event comes with its encoding, as the stage reads it from Kafka:
//! encoded once before measuring (as the broker holds it), and copied into
//! an owned buffer per event inside the measurement (as the stage copies
//! each record's payload for the join's history). The `_encoded_by_join`
//! variants are the method before the join took those bytes: the event
//! alone, which the join then encodes itself.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xoflow_enrich::{
    identity::{Links, Resolved},
    join::{Join, Released},
    tenancy,
};
use xoflow_proto::Message as _;
use xoflow_proto::v1::{Event, EventFoldView};

#[path = "join_support/mod.rs"]
mod join_support;

// The allocator the `xoflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let g = join_support::generated(0.3);
    // Events as ingest would hand them on: identifiers hashed, text masked.
    let normaliser = join_support::normaliser();
    let now = join_support::NOW;
    let events: Vec<_> = g
        .events
        .into_iter()
        .filter_map(|mut e| normaliser.normalise(&mut e, now).ok().map(|()| e))
        .collect();
    // As the broker holds them.
    let encoded: Vec<Vec<u8>> = events.iter().map(|e| e.encode_to_vec()).collect();
    let cfg = join_support::join_config();
    let mut group = c.benchmark_group("enrich_join");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("mixed_x_and_o", |b| {
        b.iter_batched(
            || (Join::new(cfg.clone()), events.clone()),
            |(mut join, events)| {
                let mut n = 0usize;
                for (e, bytes) in events.into_iter().zip(&encoded) {
                    n += join
                        .process_received(e, bytes.as_slice(), now)
                        .cx
                        .map(|c| c.topics.len())
                        .unwrap_or(0);
                }
                // Returned so that dropping the whole state table, which a
                // running stage never does, falls outside the measurement.
                (n, join)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // As the stage drives it: resolved upstream, through the lateness
    // buffer, released in event-time order.
    let mut links = Links::default();
    for e in &events {
        links.learn(e, |_, _| {});
    }
    let resolved: Vec<_> = events.iter().map(|e| links.resolve(e)).collect();
    let setup = || {
        (
            Join::new(cfg.clone()),
            events.clone(),
            as_read(&resolved, &events),
        )
    };
    group.bench_function("mixed_x_and_o_through_lateness_buffer", |b| {
        b.iter_batched(
            setup,
            |(join, events, resolved)| {
                let offers = events.into_iter().zip(resolved).zip(&encoded);
                through_buffer(join, offers, now, offer_as_read(now), counted)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // What the stage's join loop does per batch besides: each released
    // output encoded into one buffer kept from batch to batch, and the
    // state changes taken as changelog records.
    group.bench_function("mixed_x_and_o_with_outputs_and_changelog", |b| {
        b.iter_batched(
            setup,
            |(join, events, resolved)| {
                let offers = events.into_iter().zip(resolved).zip(&encoded);
                let mut values = Vec::with_capacity(4 << 20);
                through_buffer(join, offers, now, offer_as_read(now), |join, out| {
                    written(join, out, &mut values)
                })
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // The method before the join took the events' bytes (the bench of
    // 1e365b3 and after): events alone, encoded by the join itself.
    group.bench_function("mixed_x_and_o_encoded_by_join", |b| {
        b.iter_batched(
            || (Join::new(cfg.clone()), events.clone()),
            |(mut join, events)| {
                let mut n = 0usize;
                for e in events {
                    n += join.process(e, now).cx.map(|c| c.topics.len()).unwrap_or(0);
                }
                (n, join)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function(
        "mixed_x_and_o_through_lateness_buffer_encoded_by_join",
        |b| {
            b.iter_batched(
                setup,
                |(join, events, resolved)| {
                    let offers = events.into_iter().zip(resolved);
                    let offer =
                        |join: &mut Join, i: usize, (e, who)| join.offer(e, who, i as i64, now);
                    through_buffer(join, offers, now, offer, counted)
                },
                criterion::BatchSize::LargeInput,
            )
        },
    );
    // What a customer's base decodes for an event leaving the history
    // encoded (shed over the memory budget, or beyond the per-customer
    // bounds): the whole event, as before, against the fields the fold
    // reads (`EventFoldView`).
    group.bench_function("fold_decode_whole_event", |b| {
        b.iter(|| {
            for bytes in &encoded {
                std::hint::black_box(Event::decode(bytes.as_slice()).unwrap_or_default());
            }
        })
    });
    group.bench_function("fold_decode_view", |b| {
        b.iter(|| {
            for bytes in &encoded {
                std::hint::black_box(Event::from(
                    EventFoldView::decode(bytes.as_slice()).unwrap_or_default(),
                ));
            }
        })
    });
    group.finish();
}

/// A copy of `resolved` as the stage hands it to the join: each customer id
/// with room for its event's tenant (`tenancy::with_room`), which a plain
/// clone (exactly its length) would not keep.
fn as_read(resolved: &[Resolved], events: &[Event]) -> Vec<Resolved> {
    resolved
        .iter()
        .zip(events)
        .map(|(r, e)| Resolved {
            customer_id: r
                .customer_id
                .as_deref()
                .map(|c| tenancy::with_room(&e.tenant, c)),
            resolution: r.resolution,
        })
        .collect()
}

/// Offers each item through `offer` and releases every 1,024 as the
/// stage's batches do, then drains, handing each release to `released`
/// (which empties it): the sum of what `released` returned, and the join
/// (whose drop falls outside the measurement).
fn through_buffer<T>(
    mut join: Join,
    items: impl Iterator<Item = T>,
    now: i64,
    mut offer: impl FnMut(&mut Join, usize, T),
    mut released: impl FnMut(&mut Join, &mut Vec<Released>) -> usize,
) -> (usize, Join) {
    let mut out = Vec::with_capacity(4096);
    let mut n = 0usize;
    for (i, item) in items.enumerate() {
        offer(&mut join, i, item);
        if i % 1024 == 1023 {
            join.release(now, &mut out);
            n += released(&mut join, &mut out);
            join.shed_if_over();
        }
    }
    join.drain(now, &mut out);
    (n + released(&mut join, &mut out), join)
}

/// An event resolved upstream, and its encoding as the broker holds it.
type AsRead<'a> = ((Event, Resolved), &'a Vec<u8>);

/// An event offered with its encoding, resolved upstream, as the stage
/// offers what it reads from the repartition topic.
fn offer_as_read<'a>(now: i64) -> impl FnMut(&mut Join, usize, AsRead<'a>) {
    move |join, i, ((e, who), bytes)| {
        join.offer_received(e, bytes.as_slice(), who, 0, i as i64, now)
    }
}

/// A release counted and dropped.
fn counted(_: &mut Join, out: &mut Vec<Released>) -> usize {
    let n = out.len();
    out.clear();
    n
}

/// A release as the stage's join loop writes it: the outputs encoded into
/// `values`, a buffer kept across batches, and the changelog records
/// taken. The bytes written.
fn written(join: &mut Join, out: &mut Vec<Released>, values: &mut Vec<u8>) -> usize {
    for r in out.iter_mut() {
        r.encode_value(values);
    }
    let n = values.len()
        + join
            .take_changes()
            .iter()
            .map(|(_, v)| v.len())
            .sum::<usize>();
    values.clear();
    out.clear();
    n
}

criterion_group!(benches, bench);
criterion_main!(benches);
