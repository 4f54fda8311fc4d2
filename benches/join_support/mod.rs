//! What the join benches share (`enrich_join`, `join_memory`): the
//! generator's events, ingest's normaliser as the stage's input has been
//! through it, the clock they are enriched at, and the join's config.

use std::time::Duration;

use xoflow::datagen::{self, GenConfig, Generated};
use xoflow_enrich::join::JoinConfig;
use xoflow_ingest::normalise::Normaliser;

/// Enrichment time: the day after the generator's two days.
pub const NOW: i64 = 1_794_787_200_000 + 3 * 86_400_000;

/// The generator's two days at `scale`, no invalid events.
pub fn generated(scale: f64) -> Generated {
    datagen::generate(&GenConfig {
        days: 2,
        scale,
        invalid_share: 0.0,
        ..GenConfig::default()
    })
}

/// Ingest's normaliser with a bench key: identifiers hashed, text masked.
pub fn normaliser() -> Normaliser {
    Normaliser::new(
        b"bench-secret-0123456789",
        Duration::from_secs(300),
        Duration::from_secs(400 * 86_400),
    )
    .expect("key")
}

/// The join's config: a 2 s lateness bound, the generator's delivery
/// touchpoint owned by logistics.
pub fn join_config() -> JoinConfig {
    JoinConfig::new(Duration::from_secs(2)).with_owners(&[("t", "delivery", "logistics")])
}
