//! Property: any interleaving of the same events within the lateness bound
//! gives the same enriched output as the events in event-time order.
//!
//! An interleaving is drawn as arrival = event time + a random delay below
//! the bound, which moves an event behind later ones by less than the
//! bound — what reordering across topics and partitions looks like.

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

/// The rule's edge, in wall-clock time: a survey that arrives before its
/// order's delivery event is held; the delivery arriving within the bound
/// is applied first, and the survey meets it; arriving later, it finds the
/// survey already emitted without it.
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
            .find(|r| r.enriched.event.as_ref().map(|e| &e.event_id) == Some(&survey.event_id))
            .and_then(|r| r.enriched.order)
            .and_then(|o| o.delivery_late_seconds)
    };
    assert!(survey_late_seconds(Duration::from_secs(30)).is_some());
    assert_eq!(survey_late_seconds(Duration::from_secs(61)), None);
}
