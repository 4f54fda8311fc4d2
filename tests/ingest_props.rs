//! Property tests over decoding and normalisation: arbitrary bytes, and
//! arbitrary mutations of valid canonical and native records, never panic;
//! every record gets exactly one verdict; accepted records never carry a
//! raw e-mail or phone. Iterations: `PROPTEST_CASES` (default 2,000 per
//! property here).

use std::sync::Arc;

use proptest::prelude::*;
use xoflow_ingest::{
    core::handle_batch,
    framing::decode_events,
    normalise::{Normaliser, pii},
    sources::{self, Origin},
    tenant::Tenants,
};
use xoflow_proto::EventKind;

fn normaliser() -> Normaliser {
    let cfg = xoflow::Config::from_toml("").expect("defaults");
    Normaliser::with_tenants(
        Arc::new(Tenants::from_config(&cfg.ingest).expect("tenants")),
        cfg.ingest.max_future_skew,
        cfg.ingest.max_age,
    )
}

const NOW: i64 = 1_763_000_000_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn samples() -> Vec<(EventKind, String)> {
    [
        (EventKind::Survey, "survey.zh.json"),
        (EventKind::Call, "call.en.json"),
        (EventKind::Social, "social.zh.json"),
        (EventKind::Order, "order.cdc.json"),
        (EventKind::Click, "click.track.json"),
    ]
    .into_iter()
    .map(|(k, f)| {
        let p = format!("{}/ingest/samples/{f}", env!("CARGO_MANIFEST_DIR"));
        (k, std::fs::read_to_string(p).expect("sample"))
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), ndjson: bool) {
        let n = normaliser();
        let records = decode_events(&body, ndjson);
        let count = records.len();
        let v = handle_batch(&n, records, 0, None, NOW);
        prop_assert_eq!(v.results.len(), count);
        for kind in EventKind::ALL {
            let r = sources::decode(kind, &body, Origin { tenant: "acme", source: "p" });
            let _ = handle_batch(&n, vec![r], 0, None, NOW);
        }
    }

    #[test]
    fn mutated_records_never_panic_and_get_one_verdict_each(
        pick in 0usize..5,
        cut in 0usize..4096,
        splice in "[\\PC]{0,24}",
        at in 0usize..4096,
    ) {
        let n = normaliser();
        let (kind, text) = &samples()[pick];
        let mut s = text.clone();
        let at = (at % (s.len() + 1)..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
        s.insert_str(at, &splice);
        let cut = (cut % (s.len() + 1)..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
        let s = if cut % 3 == 0 { &s[..cut] } else { s.as_str() };
        let r = sources::decode(*kind, s.as_bytes(), Origin { tenant: "acme", source: "p" });
        let v = handle_batch(&n, vec![r], 0, None, NOW);
        prop_assert_eq!(v.results.len(), 1);
        prop_assert_eq!(v.results[0].accepted, v.dead_letters.is_empty());
    }

    #[test]
    fn masking_never_panics_and_removes_planted_numbers(
        prefix in "[\\PC]{0,40}",
        suffix in "[\\PC]{0,40}",
        mobile in 3u8..10,
        rest in 0u32..100_000_000,
    ) {
        let phone = format!("1{mobile}{rest:09}");
        let text = format!("{prefix} {phone} {suffix}");
        let mut counts = pii::MaskCounts::default();
        let masked = pii::mask(&text, &[], &mut counts).unwrap_or(text.clone());
        prop_assert!(!masked.contains(&phone), "{masked}");
        let _ = pii::mask_url(&text, &mut counts);
    }
}
