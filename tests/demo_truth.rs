//! The demo end to end: generated data through the whole pipeline into
//! ClickHouse, and the figures BI reads back equal the generator's ground
//! truth — exactly for counts and NPS. And the loop is closed: the alerts
//! the demo's rules raise are exactly those the truth predicts, per
//! department, delivered, signed, to the departments' webhooks.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use clickhouse::Row;
use serde::Deserialize;
use xoflow::{
    datagen::{GenConfig, Truth},
    demo::{self, BiReport, DemoOptions},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_figures_equal_the_ground_truth() {
    let (cfg, _) = common::config("");
    let now = common::now_ms();
    let opts = DemoOptions {
        generator: GenConfig {
            seed: 7,
            scale: 0.3,
            days: 6,
            start_ms: xoflow::datagen::days_before_today(now, 6),
            ..GenConfig::default()
        },
        batch: 1_000,
    };
    let (truth, report) = demo::run_pipeline(cfg.clone(), &opts, false)
        .await
        .expect("demo");
    rollups_equal_a_recomputation_from_events(&cfg.clickhouse.client()).await;
    common::drop_database(&cfg).await;
    the_loop_is_closed(&truth, &report);

    assert_eq!(report.events_by_kind, truth.by_kind);
    assert!(truth.survey_answers > 0);
    assert_eq!(
        report.survey_answers, truth.survey_answers,
        "survey_answers"
    );
    assert!(!truth.planted_pii.is_empty());
    assert_eq!(
        report.unmasked_pii, 0,
        "planted personal data reached ClickHouse unmasked"
    );
    assert_eq!(report.dead_letters, truth.invalid);
    common::assert_touchpoints_match(&report, &truth, "demo");
    // Sentiment-derived figures, within a stated tolerance: texts can carry
    // more than one topic (a crushed parcel is delivery and quality), so a
    // topic's count of negative texts may exceed the texts written about it,
    // but never by more than half, and never falls below 80%.
    for (topic, &written) in &truth.negative_topics {
        if written < 20 {
            continue;
        }
        let found = report.negative_topics.get(topic).copied().unwrap_or(0);
        assert!(
            found as f64 >= 0.8 * written as f64 && found as f64 <= 1.5 * written as f64,
            "negative {topic}: {found} found, {written} written"
        );
    }
    // Churn risk: the top of the ranking is far richer in customers who are
    // drifting away than a random pick.
    let drifting = report
        .at_risk
        .iter()
        .filter(|c| truth.at_risk.iter().any(|t| t.customer_id == c.customer_id))
        .count();
    let precision = drifting as f64 / report.at_risk.len().max(1) as f64;
    assert!(
        precision >= 2.0 * truth.at_risk_base_rate,
        "precision {precision:.2} vs base rate {:.2}",
        truth.at_risk_base_rate
    );
    eprintln!(
        "negative topics {:?} vs written {:?}; at-risk precision {precision:.2} (base {:.2})",
        report.negative_topics, truth.negative_topics, truth.at_risk_base_rate
    );

    for s in &truth.stores {
        let r = report
            .stores
            .iter()
            .find(|r| r.tenant == s.tenant && r.touchpoint == s.touchpoint && r.store == s.store)
            .unwrap_or_else(|| panic!("{} {} {} missing", s.tenant, s.touchpoint, s.store));
        assert_eq!(
            (r.promoters, r.passives, r.detractors),
            (s.nps.promoters, s.nps.passives, s.nps.detractors),
            "{} at {}",
            s.touchpoint,
            s.store
        );
    }
}

#[derive(Debug, PartialEq, Row, Deserialize)]
struct RegionMonth {
    tenant: String,
    region: String,
    month: u16,
    promoters: u64,
    passives: u64,
    detractors: u64,
    csat_top2: u64,
    ces_sum: f64,
}

/// Store/day aggregates rolled up to region/month equal the same figures
/// recomputed from the raw events, both in the tenants' local time
/// (Asia/Shanghai in the demo).
async fn rollups_equal_a_recomputation_from_events(ch: &clickhouse::Client) {
    let rolled: Vec<RegionMonth> = ch
        .query(
            "SELECT tenant, region, toUInt16(toYYYYMM(day) % 10000) AS month, \
               sum(promoters) AS promoters, sum(passives) AS passives, sum(detractors) AS detractors, \
               sum(csat_top2) AS csat_top2, sum(ces_sum) AS ces_sum \
             FROM cx_by_store_day GROUP BY tenant, region, month ORDER BY tenant, region, month",
        )
        .fetch_all()
        .await
        .expect("roll-up");
    let recomputed: Vec<RegionMonth> = ch
        .query(
            "SELECT tenant, region, toUInt16(toYYYYMM(occurred_local) % 10000) AS month, \
               countIf(nps_category = 'promoter') AS promoters, countIf(nps_category = 'passive') AS passives, \
               countIf(nps_category = 'detractor') AS detractors, toUInt64(sum(csat_top2)) AS csat_top2, \
               sum(ifNull(ces_score, 0)) AS ces_sum \
             FROM events_latest GROUP BY tenant, region, month ORDER BY tenant, region, month",
        )
        .fetch_all()
        .await
        .expect("recompute");
    assert!(!rolled.is_empty());
    assert_eq!(rolled, recomputed);
}

/// The closed loop: exact alerts per department for the rules the truth
/// predicts, a silence alert for every customer planted silent, none for
/// those who opted out, and every alert stored once and delivered signed.
fn the_loop_is_closed(truth: &Truth, report: &BiReport) {
    let t = &truth.alerts;
    let a = &report.alerts;
    assert!(!t.rules.is_empty(), "the demo's rules predict alerts");
    assert!(!a.stored.is_empty(), "no alert reached ClickHouse");

    // Exact counts per (tenant, rule, department), for the exact rules.
    let exact: BTreeSet<(&str, &str)> = t
        .rules
        .iter()
        .map(|r| (r.tenant.as_str(), r.rule.as_str()))
        .collect();
    let got: BTreeMap<_, _> = a
        .counts()
        .into_iter()
        .filter(|((tenant, rule, _), _)| exact.contains(&(tenant.as_str(), rule.as_str())))
        .collect();
    assert_eq!(got, t.counts(), "alerts per (tenant, rule, department)");

    // Which events raised them: exactly the truth's for customers with one
    // event meeting the rule (or all a quiet period apart); for the others
    // the same number, each one of the customer's events meeting the rule
    // (which one raises depends on the order the join checks them in).
    for r in &t.rules {
        let stored: Vec<_> = a
            .stored
            .iter()
            .filter(|s| s.tenant == r.tenant && s.rule == r.rule)
            .collect();
        let repeat: BTreeMap<&str, _> = r
            .repeat_customers
            .iter()
            .map(|c| (c.customer_id.as_str(), c))
            .collect();
        let ids = |customers: &dyn Fn(&str) -> bool| {
            let mut got: Vec<&str> = stored
                .iter()
                .filter(|s| customers(&s.customer_id))
                .map(|s| s.event_id.as_str())
                .collect();
            got.sort();
            got
        };
        let mut want: Vec<&str> = r
            .alerts
            .iter()
            .filter(|x| !repeat.contains_key(x.customer_id.as_str()))
            .map(|x| x.event_id.as_str())
            .collect();
        want.sort();
        assert_eq!(
            ids(&|c| !repeat.contains_key(c)),
            want,
            "{} {}: triggering events",
            r.tenant,
            r.rule
        );
        for (customer, c) in &repeat {
            let got = ids(&|x| x == *customer);
            assert_eq!(
                got.len() as u64,
                c.alerts,
                "{} {} {customer}: {got:?} of {:?} (order sensitive: {})",
                r.tenant,
                r.rule,
                c.met_event_ids,
                c.order_sensitive
            );
            assert!(
                got.iter().all(|id| c.met_event_ids.iter().any(|m| m == id)),
                "{} {} {customer}: {got:?} not among {:?}",
                r.tenant,
                r.rule,
                c.met_event_ids
            );
        }
    }

    // Every customer planted silent after a complaint got a silence alert.
    assert!(
        !t.planted_silent.is_empty(),
        "six days plant silent customers"
    );
    let silenced: BTreeSet<(&str, &str)> = a
        .stored
        .iter()
        .filter(|s| s.cause == "silence")
        .map(|s| (s.tenant.as_str(), s.customer_id.as_str()))
        .collect();
    for p in &t.planted_silent {
        assert!(
            silenced.contains(&(p.tenant.as_str(), p.customer_id.as_str())),
            "{} {}: {} — no silence alert",
            p.tenant,
            p.customer_id,
            p.story
        );
    }
    let planted: BTreeSet<&str> = t
        .planted_silent
        .iter()
        .map(|p| p.customer_id.as_str())
        .collect();
    eprintln!(
        "silence alerts: {} planted customers alerted, {} others",
        planted.len(),
        silenced
            .iter()
            .filter(|(_, c)| !planted.contains(c))
            .count()
    );

    // Nobody who opted out is alerted, nor contacted.
    assert!(!t.do_not_contact.is_empty());
    let opted_out: BTreeSet<&str> = t
        .do_not_contact
        .iter()
        .map(|p| p.customer_id.as_str())
        .collect();
    let named: Vec<_> = a
        .stored
        .iter()
        .filter(|s| opted_out.contains(s.customer_id.as_str()))
        .collect();
    assert!(
        named.is_empty(),
        "alerts name customers who opted out: {named:?}"
    );
    let contacted: Vec<_> = a
        .deliveries
        .iter()
        .filter(|d| opted_out.contains(d.customer_id.as_str()))
        .collect();
    assert!(contacted.is_empty(), "{contacted:?}");

    // Delivered: every signature valid, every stored alert at least once,
    // nothing delivered that is not stored; stored once each.
    assert_eq!(
        a.refused(),
        0,
        "{:?}",
        a.deliveries.iter().find(|d| !d.valid)
    );
    let undelivered = a.undelivered();
    assert!(undelivered.is_empty(), "not delivered: {undelivered:?}");
    let stored: BTreeSet<&str> = a.stored.iter().map(|s| s.alert_id.as_str()).collect();
    for d in &a.deliveries {
        assert!(
            stored.contains(d.alert_id.as_str()),
            "delivered, not stored: {d:?}"
        );
        assert_eq!(
            d.path, d.department,
            "each department's webhook gets its own alerts"
        );
    }
    assert_eq!(a.rows, a.unique, "the alerts table holds each alert once");
    assert_eq!(a.unique as usize, a.stored.len());
    let (p50, p99) = a.from_raised_ms.expect("latency from raised_at");
    assert!(0 <= p50 && p50 <= p99, "{p50} {p99}");
    eprintln!(
        "alerts: {} stored, {} deliveries; latency from raised p50 {p50} ms p99 {p99} ms, from ingest {:?}",
        a.stored.len(),
        a.deliveries.len(),
        a.from_ingest_ms
    );
}
