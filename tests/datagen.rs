//! The generator is deterministic: the same seed gives byte-identical
//! output (events and truth), a different seed different output. Runs
//! without servers.

use xoflow::datagen::{self, GenConfig};

fn bytes(cfg: &GenConfig) -> (Vec<u8>, Vec<u8>) {
    let g = datagen::generate(cfg);
    let mut events = Vec::new();
    datagen::write_ndjson(&g.events, &mut events).expect("ndjson");
    (events, serde_json::to_vec_pretty(&g.truth).expect("truth"))
}

#[test]
fn same_seed_gives_byte_identical_output_and_another_seed_does_not() {
    let cfg = GenConfig {
        scale: 0.2,
        ..GenConfig::default()
    };
    let a = bytes(&cfg);
    let b = bytes(&cfg);
    assert!(!a.0.is_empty());
    assert_eq!(a, b, "same seed, different bytes");
    let c = bytes(&GenConfig {
        seed: cfg.seed + 1,
        ..cfg
    });
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
}

#[test]
fn two_seeds_share_no_event_id() {
    // Two generated loads imported into one store must not collide: ingest
    // deduplicates by event id, so a shared id would silently drop an event.
    let cfg = GenConfig {
        scale: 0.2,
        ..GenConfig::default()
    };
    let ids = |seed| {
        datagen::generate(&GenConfig {
            seed,
            ..cfg.clone()
        })
        .events
        .into_iter()
        .map(|e| e.event_id)
        .collect::<std::collections::HashSet<_>>()
    };
    let (one, two) = (ids(1), ids(2));
    assert!(!one.is_empty() && !two.is_empty());
    let shared = one.intersection(&two).count();
    assert_eq!(shared, 0, "{shared} ids shared by seeds 1 and 2");
}

#[test]
fn a_week_is_realistic_and_the_truth_adds_up() {
    let g = datagen::generate(&GenConfig::default());
    let t = &g.truth;
    assert!(g.events.len() >= 100_000, "{} events", g.events.len());
    let invalid: u64 = t.invalid.values().sum();
    assert_eq!(t.events + invalid, g.events.len() as u64);
    assert_eq!(t.by_kind.values().sum::<u64>(), t.events);
    assert_eq!(t.by_kind.len(), 5, "every kind present: {:?}", t.by_kind);
    // Time order.
    assert!(g.events.windows(2).all(|w| {
        let a = w[0].occurred_at.as_ref().map(xoflow_proto::to_unix_millis);
        let b = w[1].occurred_at.as_ref().map(xoflow_proto::to_unix_millis);
        a <= b || w[1].event_id.starts_with("bad-") || w[0].event_id.starts_with("bad-")
    }));
    // The planted staffing problem shows: sz-03 is the worst store at table
    // service, by a wide margin.
    let c = t
        .worst_vs_best
        .iter()
        .find(|c| c.touchpoint == "table-service")
        .expect("table-service compared");
    assert_eq!(c.worst_store, "sz-03");
    assert!(c.best_nps - c.worst_nps > 50.0, "{c:?}");
    // Late deliveries in the north make wh-north the worst warehouse.
    let d = t
        .worst_vs_best
        .iter()
        .find(|c| c.touchpoint == "courier-delivery")
        .expect("delivery compared");
    assert_eq!(d.worst_store, "wh-north");
    assert!(!t.planted_pii.is_empty() && !t.at_risk.is_empty());
    assert!(t.negative_topics["delivery"] > t.negative_topics["price"]);
}

#[test]
fn dates_parse_to_utc_midnight() {
    assert_eq!(datagen::parse_date("1970-01-01").expect("date"), 0);
    assert_eq!(
        datagen::parse_date("2026-11-16").expect("date"),
        1_794_787_200_000
    );
    assert!(datagen::parse_date("2026-13-01").is_err());
    assert!(datagen::parse_date("yesterday").is_err());
}

#[test]
fn arrival_orders_hold_the_same_events_in_their_order() {
    use xoflow::datagen::ArrivalOrder;
    use xoflow_proto::v1::event::Payload;
    let cfg = GenConfig {
        scale: 0.05,
        days: 2,
        ..GenConfig::default()
    };
    let time = datagen::generate(&cfg).events;
    let of = |order| {
        datagen::generate(&GenConfig {
            order,
            ..cfg.clone()
        })
        .events
    };
    let ids = |events: &[xoflow_proto::v1::Event]| {
        let mut ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        ids.sort();
        ids
    };
    let experience = |e: &xoflow_proto::v1::Event| {
        matches!(
            e.payload,
            Some(Payload::Survey(_) | Payload::Call(_) | Payload::Social(_))
        )
    };

    let shuffled = of(ArrivalOrder::Shuffled);
    assert_eq!(ids(&shuffled), ids(&time), "the same events");
    assert_ne!(shuffled, time, "in another order");
    assert_eq!(
        shuffled,
        of(ArrivalOrder::Shuffled),
        "the same order for the seed"
    );

    let x_first = of(ArrivalOrder::XFirst);
    assert_eq!(ids(&x_first), ids(&time));
    let first_o = x_first
        .iter()
        .position(|e| !experience(e))
        .expect("operational events");
    assert!(first_o > 0, "experience events first");
    assert!(x_first[first_o..].iter().all(|e| !experience(e)));
    // Each side keeps its time order.
    let x_in_time: Vec<&String> = time
        .iter()
        .filter(|e| experience(e))
        .map(|e| &e.event_id)
        .collect();
    let x_arrived: Vec<&String> = x_first[..first_o].iter().map(|e| &e.event_id).collect();
    assert_eq!(x_arrived, x_in_time);
}

#[test]
fn the_truth_says_which_alerts_the_demo_rules_must_raise() {
    use std::collections::{BTreeMap, BTreeSet};
    // The demo test's data: six days, so the silent customers are planted.
    let g = datagen::generate(&GenConfig {
        seed: 7,
        scale: 0.3,
        days: 6,
        ..GenConfig::default()
    });
    let a = &g.truth.alerts;
    let by_id: BTreeMap<&str, &xoflow_proto::v1::Event> =
        g.events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let store = |id: &str| {
        by_id[id]
            .location
            .as_ref()
            .map(|l| l.store_id.clone())
            .unwrap_or_default()
    };
    let rule = |tenant: &str, name: &str| {
        a.rule(tenant, name)
            .unwrap_or_else(|| panic!("{tenant} {name} predicted exactly"))
    };

    // The understaffed store's table service dominates its rule, all of it
    // routed to the touchpoint's owner.
    let table = rule("hotpot-house", "table-service-detractor");
    let at_problem = table
        .alerts
        .iter()
        .filter(|x| store(&x.event_id) == "sz-03")
        .count();
    assert!(
        at_problem * 2 > table.alerts.len(),
        "{at_problem} of {} at sz-03",
        table.alerts.len()
    );
    assert!(
        table
            .alerts
            .iter()
            .all(|x| x.department == "store-operations")
    );
    assert!(table.quiet > 0, "the quiet period holds some back");

    // Late parcels: the late region dominates; every alert goes to logistics.
    let late = rule("shopmall-online", "late-delivery-complaint");
    let north = late
        .alerts
        .iter()
        .filter(|x| store(&x.event_id) == "wh-north")
        .count();
    assert!(
        north * 2 > late.alerts.len(),
        "{north} of {}",
        late.alerts.len()
    );
    assert!(late.alerts.iter().all(|x| x.department == "logistics"));

    // High value: a meaningful minority of the detractors.
    for tenant in ["hotpot-house", "shopmall-online"] {
        let hv = rule(tenant, "high-value-detractor");
        let detractors: u64 = g
            .truth
            .touchpoints
            .iter()
            .filter(|t| t.tenant == tenant)
            .map(|t| t.nps.detractors)
            .sum();
        let share = hv.met as f64 / detractors as f64;
        assert!(
            (0.05..=0.5).contains(&share),
            "{tenant}: {} of {detractors} detractors are valuable",
            hv.met
        );
        assert!(hv.alerts.iter().all(|x| x.department == "customer-care"));
    }

    // Silence rules are not predicted but planted; opted-out customers
    // would have raised alerts, and the truth expects none of them.
    let inexact: BTreeSet<&str> = a.inexact.iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(inexact, BTreeSet::from(["silent-after-complaint"]));
    let planted: BTreeSet<&str> = a.planted_silent.iter().map(|p| p.tenant.as_str()).collect();
    assert_eq!(
        planted,
        BTreeSet::from(["little-scholar", "shopmall-online"])
    );
    assert_eq!(a.do_not_contact.len(), 9);
    let held: u64 = a.rules.iter().map(|r| r.do_not_contact).sum();
    assert!(
        held >= 9,
        "opted-out customers' answers meet the rules: {held}"
    );
    let opted_out: BTreeSet<&str> = a
        .do_not_contact
        .iter()
        .map(|p| p.customer_id.as_str())
        .collect();
    for r in &a.rules {
        assert!(
            r.alerts
                .iter()
                .all(|x| !opted_out.contains(x.customer_id.as_str())),
            "{}",
            r.rule
        );
    }
    // Every opted-out customer's events say so (Event.contact_consent).
    for e in &g.events {
        let who = e
            .customer
            .as_ref()
            .map(|c| c.customer_id.as_str())
            .unwrap_or("");
        if opted_out.contains(who) {
            assert_eq!(e.do_not_contact(), Some(true));
        }
    }
}
