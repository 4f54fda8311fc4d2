//! The training command's window on the Rust text code: one text per line
//! on stdin (tabs and newlines inside a text replaced by spaces).
//!
//! - `text_model features [--no-lexicon] [--bits N]`: the hashed feature
//!   buckets of each text, space-separated, one line per text.
//! - `text_model score`: `score<TAB>label` of each text with the embedded
//!   model, as the join computes them.
//! - `text_model header`: the embedded model's provenance and load time.

use std::io::{BufRead, BufWriter, Write};

use xoflow_enrich::sentiment;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("score");
    let lexicon = !args.iter().any(|a| a == "--no-lexicon");
    let bits = args
        .iter()
        .position(|a| a == "--bits")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(19);
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    match mode {
        "header" => {
            let started = std::time::Instant::now();
            let header = sentiment::load();
            let took = started.elapsed();
            writeln!(out, "{header}\nload_seconds={:.4}", took.as_secs_f64())?;
        }
        "features" => {
            let mut buckets = Vec::new();
            for line in stdin.lines() {
                let line = line?;
                buckets.clear();
                sentiment::feature_buckets(&line, lexicon, bits, &mut buckets);
                let mut first = true;
                for b in &buckets {
                    if !first {
                        out.write_all(b" ")?;
                    }
                    first = false;
                    write!(out, "{b}")?;
                }
                out.write_all(b"\n")?;
            }
        }
        _ => {
            for line in stdin.lines() {
                let s = sentiment::score(&line?);
                writeln!(out, "{:.6}\t{}", s.score, s.label.as_str_name())?;
            }
        }
    }
    out.flush()
}
