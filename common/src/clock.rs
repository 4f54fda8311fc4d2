//! The wall clock, read in one place.
//!
//! Stages stamp dead letters, hold events and age batches by wall-clock
//! time. Reading it through these functions keeps the unit (milliseconds or
//! seconds since the Unix epoch) in the name, and leaves one place to put a
//! test clock should a stage need one.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock reads before it.
pub fn now_unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whole seconds since the Unix epoch, as ClickHouse's `DateTime` stores
/// them; 0 if the clock reads before it.
pub fn now_unix_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_units_read_the_same_instant() {
        let ms = now_unix_millis();
        let s = now_unix_secs() as i64;
        assert!((ms / 1000 - s).abs() <= 1, "{ms} ms vs {s} s");
        assert!(s > 1_600_000_000);
    }
}
