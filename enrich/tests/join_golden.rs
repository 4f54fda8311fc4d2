//! Golden-file test of the join: a fixed scenario (four customers, late and
//! on-time deliveries, support calls, surveys known only by e-mail hash, an
//! unlinked social post) enriched, one canonical-JSON line per event (its
//! latest revision) in event-id order, compared with
//! `tests/golden/join_scenario.jsonl`.
//!
//! After an intended change of the join's output, regenerate the file with
//! `XOFLOW_UPDATE_GOLDEN=1 cargo test -p xoflow-enrich --test join_golden`
//! and review the diff.

mod join_support;

use std::time::Duration;

use xoflow_proto::{Message, v1::EnrichedEvent};
use xoflow_tools::scenario;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/join_scenario.jsonl"
);

#[test]
fn the_fixed_scenario_enriches_as_recorded() {
    let events = scenario::journeys(7, 0..4, join_support::START);
    let outputs = join_support::run(&events, Duration::from_secs(120));
    // The latest revision of each event (events resolved through a link
    // are emitted at revisions 0 and 1; see the join's module doc).
    let mut latest: std::collections::BTreeMap<String, EnrichedEvent> = Default::default();
    for (id, bytes) in &outputs {
        let e = EnrichedEvent::decode(bytes.as_slice()).expect("decode");
        if latest.get(id).is_none_or(|l| l.revision < e.revision) {
            latest.insert(id.clone(), e);
        }
    }
    assert_eq!(latest.len(), events.len(), "an output per input");
    let mut text = String::new();
    for e in latest.values() {
        text.push_str(&serde_json::to_string(&e).expect("json"));
        text.push('\n');
    }
    if std::env::var_os("XOFLOW_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &text).expect("write golden file");
        return;
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file (see the module doc)");
    for (i, (got, want)) in text.lines().zip(golden.lines()).enumerate() {
        assert_eq!(got, want, "line {} differs from {GOLDEN}", i + 1);
    }
    assert_eq!(text.lines().count(), golden.lines().count());
}
