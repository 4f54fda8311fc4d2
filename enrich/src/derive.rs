//! CX fields derived from one event on its own: pure functions, no state.
//!
//! Scores keep their native value in the event; here they become comparable
//! (NPS category, CSAT normalised and top-two-box, CES normalised).

use xoflow_proto::v1::{
    CxFields, Event, MetricKind, NpsCategory, OrderContext, OrderMatch, event::Payload,
};

/// NPS bucket of a 0-10 score: promoters 9-10, passives 7-8, detractors 0-6.
pub fn nps_category(score: i32) -> NpsCategory {
    match score {
        9..=10 => NpsCategory::Promoter,
        7..=8 => NpsCategory::Passive,
        0..=6 => NpsCategory::Detractor,
        _ => NpsCategory::Unspecified,
    }
}

/// `score` on `min..=max` mapped onto 0..=1.
pub fn normalise(score: f64, min: i32, max: i32) -> Option<f64> {
    let span = f64::from(max) - f64::from(min);
    (span > 0.0).then(|| ((score - f64::from(min)) / span).clamp(0.0, 1.0))
}

/// The CX fields of an event's survey answers (the first answer of each
/// kind counts).
pub fn cx_fields(e: &Event) -> CxFields {
    let mut cx = CxFields::default();
    let Some(Payload::Survey(s)) = &e.payload else {
        return cx;
    };
    for a in &s.answers {
        let Some(score) = a.score else { continue };
        match MetricKind::try_from(a.kind) {
            Ok(MetricKind::Nps) if cx.nps_score.is_none() => {
                let s = score as i32;
                cx.nps_score = Some(s);
                cx.nps_category = nps_category(s) as i32;
            }
            Ok(MetricKind::Csat) if cx.csat_score.is_none() => {
                cx.csat_score = Some(score);
                cx.csat_normalised = normalise(score, a.scale_min, a.scale_max);
                // Top two boxes of the native scale: 4-5 on 1-5, 6-7 on 1-7.
                cx.csat_top2 = score >= f64::from(a.scale_max - 1);
            }
            Ok(MetricKind::Ces) if cx.ces_score.is_none() => {
                cx.ces_score = Some(score);
                cx.ces_normalised = normalise(score, a.scale_min, a.scale_max);
            }
            _ => {}
        }
    }
    cx
}

/// The order context an order event carries about itself.
pub fn own_order(e: &Event) -> Option<OrderContext> {
    let Some(Payload::Order(o)) = &e.payload else {
        return None;
    };
    let late = match (&o.promised_delivery_at, &o.delivered_at) {
        (Some(p), Some(d)) => {
            Some((xoflow_proto::to_unix_millis(d) - xoflow_proto::to_unix_millis(p)) / 1000)
        }
        _ => None,
    };
    Some(OrderContext {
        order_id: o.order_id.clone(),
        r#match: OrderMatch::Referenced as i32,
        status: o.status,
        amount_minor: o.amount_minor,
        currency: o.currency.clone(),
        placed_at: None,
        promised_delivery_at: o.promised_delivery_at,
        delivered_at: o.delivered_at,
        delivery_late_seconds: late,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xoflow_proto::v1::{SurveyAnswer, SurveyResponse};

    fn answer(kind: MetricKind, score: f64, min: i32, max: i32) -> SurveyAnswer {
        SurveyAnswer {
            kind: kind as i32,
            score: Some(score),
            scale_min: min,
            scale_max: max,
            ..Default::default()
        }
    }

    #[test]
    fn nps_buckets_follow_the_standard_definition() {
        let expected = [
            (0, NpsCategory::Detractor),
            (6, NpsCategory::Detractor),
            (7, NpsCategory::Passive),
            (8, NpsCategory::Passive),
            (9, NpsCategory::Promoter),
            (10, NpsCategory::Promoter),
            (11, NpsCategory::Unspecified),
        ];
        for (score, cat) in expected {
            assert_eq!(nps_category(score), cat, "{score}");
        }
    }

    #[test]
    fn survey_scores_become_comparable() {
        let e = Event {
            payload: Some(Payload::Survey(SurveyResponse {
                answers: vec![
                    answer(MetricKind::Nps, 3.0, 0, 10),
                    answer(MetricKind::Csat, 4.0, 1, 5),
                    answer(MetricKind::Ces, 7.0, 1, 7),
                ],
                ..Default::default()
            })),
            ..Default::default()
        };
        let cx = cx_fields(&e);
        assert_eq!(cx.nps_score, Some(3));
        assert_eq!(cx.nps_category, NpsCategory::Detractor as i32);
        assert_eq!(cx.csat_normalised, Some(0.75));
        assert!(cx.csat_top2);
        assert_eq!(cx.ces_normalised, Some(1.0));
    }

    #[test]
    fn csat_top_two_boxes_depend_on_the_native_scale() {
        for (score, max, top2) in [
            (3.0, 5, false),
            (4.0, 5, true),
            (5.0, 7, false),
            (6.0, 7, true),
        ] {
            let e = Event {
                payload: Some(Payload::Survey(SurveyResponse {
                    answers: vec![answer(MetricKind::Csat, score, 1, max)],
                    ..Default::default()
                })),
                ..Default::default()
            };
            assert_eq!(cx_fields(&e).csat_top2, top2, "{score} on 1-{max}");
        }
    }
}
