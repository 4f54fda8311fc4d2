//! The demo end to end: generated data through the whole pipeline into
//! ClickHouse, and the figures BI reads back equal the generator's ground
//! truth — exactly for counts and NPS.

mod common;

use clickhouse::Row;
use serde::Deserialize;
use xoflow::{
    datagen::GenConfig,
    demo::{self, DemoOptions},
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
            start_ms: now - now.rem_euclid(86_400_000) - 6 * 86_400_000,
            ..GenConfig::default()
        },
        batch: 1_000,
    };
    let (truth, report) = demo::run_pipeline(cfg.clone(), &opts, false)
        .await
        .expect("demo");
    rollups_equal_a_recomputation_from_events(&cfg.clickhouse.client()).await;
    common::drop_database(&cfg).await;

    assert_eq!(report.events_by_kind, truth.by_kind);
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
/// recomputed from the raw events.
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
            "SELECT tenant, region, toUInt16(toYYYYMM(occurred_at) % 10000) AS month, \
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
