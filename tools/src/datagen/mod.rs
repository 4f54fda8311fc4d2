//! `xoflow gen`: a seeded, deterministic generator of realistic
//! customer-experience data, with the ground truth beside it.
//!
//! It simulates three tenants (a restaurant chain's dine-in journey, an
//! online shop with deliveries, an education-kit subscription) over a span
//! of days: customers with identities spread across channels, orders with
//! real lifecycles, clickstream sessions with errors and abandoned
//! checkouts, surveys fired at moments of truth whose scores depend on what
//! happened, calls and posts in Chinese and English whose sentiment
//! matches, personal data planted in free text, and a small share of
//! malformed records. For the closed loop it plants customers who go
//! silent after a complaint and customers who asked not to be contacted. The same [`GenConfig`] always yields byte-identical
//! output; event ids carry the seed (`<tenant>-<seed hex>-<seq>`), so loads
//! generated with different seeds never share an id.
//!
//! What crosses the boundary: `Vec<Event>` in time order, and a [`Truth`]
//! with what the pipeline should find (NPS per touchpoint and store, the
//! worst store, negative topics, customers at risk, expected dead letters,
//! and the alerts the demo's rules must raise: [`alerts`]).

pub mod alerts;
pub mod load;
mod sim;
pub mod text;
pub mod truth;
pub mod world;

pub use sim::generate;
pub use truth::Truth;
use xoflow_proto::v1::{CxFields, EnrichedEvent, Event};

/// SplitMix64: a tiny, fixed PRNG so the same seed gives the same data on
/// every platform and version (std and rand make no such promise).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Approximately standard normal (Irwin-Hall of four uniforms): plain
    /// arithmetic, so identical on every platform, unlike libm's ln/cos.
    pub fn normal(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f64.sqrt()
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Seeds the PRNG and is part of every event id.
    pub seed: u64,
    /// First instant of the span, Unix milliseconds (UTC).
    pub start_ms: i64,
    pub days: u32,
    /// Multiplies the number of customers (1.0 ≈ 150k events a week).
    pub scale: f64,
    /// Share of records deliberately malformed.
    pub invalid_share: f64,
    /// The order the events are handed out (and sent) in.
    pub order: ArrivalOrder,
}

/// The order generated events arrive in: the same events and truth in
/// every order, so a pipeline's results can be compared across them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ArrivalOrder {
    /// By event time (ties by event id): live traffic.
    #[default]
    Time,
    /// A permutation drawn from the seed: backfills from many systems.
    Shuffled,
    /// Every experience event (survey, call, post) first, then every
    /// operational one (order, click), each in time order: a company
    /// onboarding its survey-tool history before its order history.
    XFirst,
}

impl ArrivalOrder {
    /// Puts `events`, in time order, into this order.
    pub fn arrange(self, events: &mut [Event], seed: u64) {
        match self {
            ArrivalOrder::Time => {}
            ArrivalOrder::Shuffled => {
                // Fisher-Yates with the generator's own PRNG: the same seed,
                // the same permutation on every machine.
                let mut rng = SplitMix::new(seed ^ 0x5eed_0fa7_717a_0001);
                for i in (1..events.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    events.swap(i, j);
                }
            }
            // Stable: each side keeps its time order.
            ArrivalOrder::XFirst => events.sort_by_key(|e| !is_experience(e)),
        }
    }
}

/// Surveys, calls and posts: what customers felt.
fn is_experience(e: &Event) -> bool {
    use xoflow_proto::v1::event::Payload;
    matches!(
        e.payload,
        Some(Payload::Survey(_) | Payload::Call(_) | Payload::Social(_))
    )
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            // 2026-11-16T00:00:00Z
            start_ms: 1_794_787_200_000,
            days: 7,
            scale: 1.0,
            invalid_share: 0.005,
            order: ArrivalOrder::Time,
        }
    }
}

/// The generated data.
#[derive(Debug, Clone)]
pub struct Generated {
    /// In the configured arrival order (time order, ties broken by event
    /// id, by default).
    pub events: Vec<Event>,
    pub truth: Truth,
}

/// Parses a `YYYY-MM-DD` date (UTC midnight) into Unix milliseconds.
pub fn parse_date(s: &str) -> anyhow::Result<i64> {
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| anyhow::anyhow!("--start {s:?}: expected a date as YYYY-MM-DD ({e})"))?;
    Ok(date
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis())
}

/// The start (UTC midnight, Unix milliseconds) of the day `days` days
/// before the day of `now_ms`: where a span of `days` whole days ending
/// today begins.
pub fn days_before_today(now_ms: i64, days: u32) -> i64 {
    const DAY: i64 = 86_400_000;
    now_ms - now_ms.rem_euclid(DAY) - i64::from(days) * DAY
}

/// `xoflow gen`: writes files, or sends to a collector.
pub async fn cli(
    cfg: GenConfig,
    out: &std::path::Path,
    grpc: Option<&str>,
    opts: &load::LoadOptions,
) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let g = generate(&cfg);
    let gen_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "generated {} events in {:.2} s ({:.0} events/s)",
        g.events.len(),
        gen_secs,
        g.events.len() as f64 / gen_secs.max(1e-9)
    );
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("truth.json"), serde_json::to_vec_pretty(&g.truth)?)?;
    match grpc {
        Some(addr) => {
            let r = load::send(addr, g.events, opts).await?;
            println!(
                "sent {} events in {:.2} s ({:.0}/s): {} accepted, {} rejected, {} failed requests; ack latency µs p50 {} p90 {} p99 {} max {}",
                r.sent,
                r.seconds,
                r.events_per_second(),
                r.accepted,
                r.rejected,
                r.failed_requests,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.max_us
            );
        }
        None => {
            let path = out.join("events.ndjson");
            let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
            let t1 = std::time::Instant::now();
            let bytes = write_ndjson(&g.events, file)?;
            println!(
                "wrote {} events ({} bytes) to {} in {:.2} s, and the ground truth to {}",
                g.events.len(),
                bytes,
                path.display(),
                t1.elapsed().as_secs_f64(),
                out.join("truth.json").display()
            );
        }
    }
    Ok(())
}

/// Writes events as NDJSON, one `xoflow.v1.Event` per line in the proto3
/// canonical JSON form. Returns the bytes written.
/// A generated event as the sink reads it, with enrich's context left
/// empty: the input of the sink's benchmarks, which measure the sink alone.
pub fn as_enriched(e: Event) -> EnrichedEvent {
    EnrichedEvent {
        resolved_customer_id: e
            .customer
            .as_ref()
            .map(|c| c.customer_id.clone())
            .unwrap_or_default(),
        cx: Some(CxFields::default()),
        event: Some(e),
        ..Default::default()
    }
}

pub fn write_ndjson<W: std::io::Write>(events: &[Event], mut out: W) -> std::io::Result<u64> {
    let mut bytes = 0u64;
    let mut line = Vec::with_capacity(4096);
    for e in events {
        line.clear();
        serde_json::to_writer(&mut line, e)?;
        line.push(b'\n');
        out.write_all(&line)?;
        bytes += line.len() as u64;
    }
    out.flush()?;
    Ok(bytes)
}
