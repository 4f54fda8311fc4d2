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
/// The same for [`run_repairing`]: within `value_window` of the scenario,
/// so that its repairs are vouched for as new
/// (`EnrichedEvent::new_revision`), which it checks.
const REPAIRING_NOW: i64 = START + 30 * 86_400_000;
/// Where the scenario starts (event time).
pub const START: i64 = 1_800_000_000_000;

/// Outputs [`run_repairing`] saw vouched for as new, in this process.
pub static VOUCHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn config(lateness: Duration) -> JoinConfig {
    JoinConfig {
        max_orders_per_customer: 8,
        max_customers: 100_000,
        ..JoinConfig::new(lateness).with_owners(&[
            ("shop", "delivery", "logistics"),
            ("shop", "checkout", "e-commerce"),
        ])
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

/// Runs `arrivals` through one join the way the stage does when nothing is
/// resolved in advance: links are learnt in arrival order (as the resolve
/// loop learns them), each new link is announced to the join after the
/// batch that taught it, and events a link resolved are offered back at
/// their revision. Events arrive in batches of `batch`. Returns the latest
/// revision of every event's output, keyed by event id, without its
/// processing time, revision number and `new_revision` (what must not
/// depend on arrival order), and the number of outputs emitted in all.
/// Panics if an output vouched for as new has a copy.
pub fn run_repairing(
    arrivals: &[Event],
    lateness: Duration,
    batch: usize,
) -> (
    std::collections::BTreeMap<String, xoflow_proto::v1::EnrichedEvent>,
    usize,
) {
    let mut links = Links::default();
    let mut join = Join::new(config(lateness));
    let mut out: Vec<Released> = Vec::new();
    let mut offset = 0;
    for chunk in arrivals.chunks(batch.max(1)) {
        let mut learnt = Vec::new();
        for e in chunk {
            links.learn(e, |h, c| learnt.push((h.to_owned(), c.to_owned())));
        }
        for e in chunk {
            offset += 1;
            join.offer(e.clone(), links.resolve(e), offset, REPAIRING_NOW);
        }
        for (h, c) in learnt {
            join.link(&h, &c);
        }
        // Moved events come back through the repartition topic; so may
        // the moves they cause, until none is left.
        settle(&mut join, &mut offset, &mut out, false);
    }
    // Whatever is still held, and the moves that causes.
    settle(&mut join, &mut offset, &mut out, true);
    let emitted = out.len();
    // An output vouched for as new (`new_revision`) is the only one of its
    // (event id, revision): the sink does not look it up.
    let mut copies = std::collections::HashMap::<(String, u32), usize>::new();
    for r in &out {
        let e = &r.enriched;
        let id = e.event.as_ref().expect("event").event_id.clone();
        *copies.entry((id, e.revision)).or_default() += 1;
    }
    for r in &out {
        let e = &r.enriched;
        let id = e.event.as_ref().expect("event").event_id.clone();
        let n = copies[&(id.clone(), e.revision)];
        VOUCHED.fetch_add(
            u64::from(e.new_revision),
            std::sync::atomic::Ordering::Relaxed,
        );
        assert!(
            !e.new_revision || n == 1,
            "{id} revision {} vouched for as new, emitted {n} times",
            e.revision
        );
    }
    let mut latest = std::collections::BTreeMap::new();
    for r in out {
        let mut e = r.enriched;
        let id = e.event.as_ref().expect("event").event_id.clone();
        let revision = e.revision;
        e.enriched_at = None;
        e.revision = 0;
        e.new_revision = false;
        match latest.get(&id) {
            Some((r, _)) if *r > revision => {}
            _ => {
                latest.insert(id, (revision, e));
            }
        }
    }
    (
        latest.into_iter().map(|(id, (_, e))| (id, e)).collect(),
        emitted,
    )
}

/// Releases (or drains, at the end) and offers the moved events back as
/// the repartition topic would, until no event moves.
fn settle(join: &mut Join, offset: &mut i64, out: &mut Vec<Released>, drain: bool) {
    use xoflow_enrich::identity::Resolved;
    use xoflow_proto::v1::IdentityResolution;
    loop {
        if drain {
            join.drain(REPAIRING_NOW, out);
        } else {
            join.release(REPAIRING_NOW, out);
        }
        let moves = join.take_moves();
        if moves.is_empty() {
            return;
        }
        for m in moves {
            *offset += 1;
            let who = Resolved {
                customer_id: Some(m.customer_id),
                resolution: IdentityResolution::Linked,
            };
            join.offer_moved(m.event, who, m.revision, *offset, REPAIRING_NOW);
        }
    }
}
