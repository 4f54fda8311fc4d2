//! Sentiment and topics of one text, as the join computes them, on survey
//! comments of realistic length (the labelled set's Chinese and English
//! texts, alone and two or three joined: 5 to 120 characters). Reported as
//! texts/s on one core, next to the lexicon scorer the model replaced
//! (kept in `sentiment_support/old_lexicon.rs` for this comparison only).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xoflow_enrich::sentiment::{self, TopicsConfig};

#[path = "sentiment_support/old_lexicon.rs"]
mod old_lexicon;

// The allocator the `xoflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn comments() -> Vec<String> {
    let base: Vec<&str> = include_str!("../enrich/tests/data/sentiment_labelled.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t').map(|(_, t)| t))
        .collect();
    let mut out: Vec<String> = base.iter().map(|t| t.to_string()).collect();
    for (i, t) in base.iter().enumerate() {
        let next = base[(i * 7 + 3) % base.len()];
        out.push(format!("{t} {next}"));
        if i % 3 == 0 {
            let third = base[(i * 13 + 5) % base.len()];
            out.push(format!("{t} {next} {third}"));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let texts = comments();
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    println!(
        "{} texts, {:.0} characters on average",
        texts.len(),
        chars as f64 / texts.len() as f64
    );
    let started = std::time::Instant::now();
    sentiment::load();
    println!(
        "model decoded in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let topics = TopicsConfig::default();
    let rules = topics.for_tenant("bench");
    let mut group = c.benchmark_group("sentiment");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("model_and_topics", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for t in &texts {
                let s = sentiment::score(black_box(t));
                n += sentiment::topics(rules, t).len() + s.label as usize;
            }
            n
        })
    });
    group.bench_function("model_only", |b| {
        b.iter(|| {
            let mut x = 0.0;
            for t in &texts {
                x += sentiment::score(black_box(t)).score;
            }
            x
        })
    });
    group.bench_function("old_lexicon_and_topics", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for t in &texts {
                let s = old_lexicon::score(black_box(t));
                n += old_lexicon::topics(t).len() + s.label as usize;
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
