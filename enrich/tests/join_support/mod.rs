//! Shared by the join's golden-file and property tests: the operator as the
//! stage drives it, with the link table already caught up.

#![allow(dead_code)]

use std::time::Duration;

use xoflow_enrich::{
    identity::Links,
    join::{Join, JoinConfig, Released},
};
use xoflow_proto::v1::Event;

/// Wall-clock "now" of every test call: fixed, so that only event time
/// decides what is released.
pub const NOW: i64 = 1_900_000_000_000;
/// Where the scenario starts (event time).
pub const START: i64 = 1_800_000_000_000;

pub fn config(lateness: Duration) -> JoinConfig {
    JoinConfig {
        max_orders_per_customer: 8,
        max_customers: 100_000,
        ..JoinConfig::new(lateness)
            .with_departments(&[("delivery", "logistics"), ("checkout", "e-commerce")])
    }
}

/// Runs `arrivals` through the join in the given order (offsets = arrival
/// positions), releasing after each, draining at the end. Returns the
/// encoded outputs sorted by event id.
pub fn run(arrivals: &[Event], lateness: Duration) -> Vec<(String, Vec<u8>)> {
    let mut links = Links::default();
    for e in arrivals {
        links.learn(e, |_, _| {});
    }
    let mut join = Join::new(config(lateness));
    let mut out: Vec<Released> = Vec::new();
    for (i, e) in arrivals.iter().enumerate() {
        let who = links.resolve(e);
        join.offer(e.clone(), who, i as i64, NOW);
        join.release(NOW, &mut out);
    }
    join.drain(NOW, &mut out);
    // The stage's own output encoding: the golden file pins what it writes.
    let mut outputs: Vec<(String, Vec<u8>)> = out.into_iter().map(Released::into_record).collect();
    outputs.sort();
    outputs
}
