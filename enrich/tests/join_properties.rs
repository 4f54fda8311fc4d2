//! Properties of the join's arrival-order independence.
//!
//! Within the lateness bound: any interleaving gives exactly the outputs of
//! the events in event-time order, with no repair. An interleaving is drawn
//! as arrival = event time + a random delay below the bound, which moves an
//! event behind later ones by less than the bound — what reordering across
//! topics and partitions looks like.
//!
//! Beyond it: whatever the arrival order (any shuffle, the experience
//! history before the operational history, newest first), the latest
//! revision of every event's output is the same as in event-time order —
//! repairs, and waits for links, make up for the order.

mod join_support;

use std::time::Duration;

use proptest::prelude::*;
use xoflow_proto::v1::Event;
use xoflow_tools::scenario;

const BOUND: Duration = Duration::from_secs(30 * 60);

fn arrival_order(events: &[Event], delays: &[u64]) -> Vec<Event> {
    let mut keyed: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = e
                .occurred_at
                .as_ref()
                .map(xoflow_proto::to_unix_millis)
                .unwrap_or(0);
            (
                at + (delays[i % delays.len()] % BOUND.as_millis() as u64) as i64,
                i,
            )
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| events[i].clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn interleavings_within_the_bound_give_the_same_output(
        seed in any::<u64>(),
        customers in 1usize..12,
        delays in proptest::collection::vec(any::<u64>(), 1..64),
    ) {
        let events = scenario::journeys(seed, 0..customers, join_support::START);
        let in_order = join_support::run(&events, BOUND);
        let shuffled = arrival_order(&events, &delays);
        prop_assert_eq!(join_support::run(&shuffled, BOUND), in_order);
    }
}

/// How an arrival order is drawn.
#[derive(Debug, Clone, Copy)]
enum Order {
    Shuffled,
    XFirst,
    NewestFirst,
}

fn is_experience(e: &Event) -> bool {
    use xoflow_proto::v1::event::Payload;
    matches!(
        e.payload,
        Some(Payload::Survey(_) | Payload::Call(_) | Payload::Social(_))
    )
}

fn arrange(events: &[Event], order: Order, seed: u64) -> Vec<Event> {
    let mut v = events.to_vec();
    match order {
        Order::Shuffled => {
            // A seeded Fisher-Yates shuffle (SplitMix64 steps).
            let mut x = seed;
            for i in (1..v.len()).rev() {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                v.swap(i, (z % (i as u64 + 1)) as usize);
            }
        }
        Order::XFirst => v.sort_by_key(|e| !is_experience(e)),
        Order::NewestFirst => v.reverse(),
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_arrival_order_ends_in_the_same_latest_revisions(
        seed in any::<u64>(),
        customers in 1usize..10,
        order in prop_oneof![Just(Order::Shuffled), Just(Order::XFirst), Just(Order::NewestFirst)],
        batch in 1usize..40,
    ) {
        let events = scenario::journeys(seed, 0..customers, join_support::START);
        let lateness = Duration::from_secs(60);
        let (in_order, _) = join_support::run_repairing(&events, lateness, batch);
        prop_assert_eq!(in_order.len(), events.len());
        let arrivals = arrange(&events, order, seed);
        let (latest, _) = join_support::run_repairing(&arrivals, lateness, batch);
        prop_assert_eq!(latest.len(), in_order.len());
        for (id, want) in &in_order {
            prop_assert_eq!(latest.get(id), Some(want), "{}", id);
        }
    }
}

/// Repairs are vouched for as new (`EnrichedEvent::new_revision`, which
/// the sink does not look up) and none of them has a copy, whatever the
/// arrival order: `run_repairing` checks every output, and here that it
/// met some to check.
#[test]
fn repairs_vouched_for_as_new_are_emitted_once() {
    let events = scenario::journeys(11, 0..8, join_support::START);
    for order in [Order::Shuffled, Order::XFirst, Order::NewestFirst] {
        join_support::run_repairing(&arrange(&events, order, 11), Duration::from_secs(60), 7);
    }
    assert!(join_support::VOUCHED.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

/// The rule's edge, in wall-clock time: a survey that arrives before its
/// order's delivery event is held; the delivery arriving within the bound
/// is applied first, and the survey meets it at once. Arriving later, it
/// finds the survey already emitted without it, and repairs it: the survey
/// is emitted again, revision 1, with the delivery.
#[test]
fn a_survey_before_its_delivery_meets_it_only_within_the_bound() {
    use xoflow_enrich::{identity::Links, join::Join};
    let events = scenario::journeys(3, 0..1, join_support::START);
    let find = |suffix: &str| {
        events
            .iter()
            .find(|e| e.event_id.ends_with(suffix))
            .cloned()
            .expect("in the scenario")
    };
    let survey = find("-survey");
    let delivered = find("-delivered");
    let bound = Duration::from_secs(60);
    let mut links = Links::default();
    for e in &events {
        links.learn(e, |_, _| {});
    }
    let survey_late_seconds = |delivery_after: Duration| {
        let mut join = Join::new(join_support::config(bound));
        let mut out = Vec::new();
        let now = join_support::NOW;
        for (i, e) in events.iter().enumerate() {
            if e.event_id == survey.event_id || e.event_id == delivered.event_id {
                continue;
            }
            let ms = |e: &Event| e.occurred_at.as_ref().map(xoflow_proto::to_unix_millis);
            if ms(e) < ms(&delivered) {
                join.offer(e.clone(), links.resolve(e), i as i64, now);
            }
        }
        join.offer(survey.clone(), links.resolve(&survey), 100, now);
        let then = now + delivery_after.as_millis() as i64;
        join.release(then, &mut out);
        join.offer(delivered.clone(), links.resolve(&delivered), 101, then);
        join.drain(then, &mut out);
        out.into_iter()
            .filter(|r| r.enriched.event.as_ref().map(|e| &e.event_id) == Some(&survey.event_id))
            .map(|r| {
                let late = r.enriched.order.and_then(|o| o.delivery_late_seconds);
                (r.enriched.revision, late)
            })
            .collect::<Vec<_>>()
    };
    // The survey is known by e-mail only: resolved through a link, its first
    // output is emitted at revisions 0 and 1 (the join's "Linked events").
    let within = survey_late_seconds(Duration::from_secs(30));
    assert!(
        matches!(within.as_slice(), [(0, Some(_)), (1, Some(_))]),
        "{within:?}"
    );
    let beyond = survey_late_seconds(Duration::from_secs(61));
    assert!(
        matches!(beyond.as_slice(), [(0, None), (1, None), (2, Some(_))]),
        "{beyond:?}"
    );
}
