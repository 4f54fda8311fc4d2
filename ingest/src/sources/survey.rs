//! Survey tool response webhooks → `SurveyResponse`: typed answers
//! (`nps`, `csat`, `ces`, `rating`, `text`) with their native scales, the
//! respondent's name marked personal, the trigger (order, call or visit).

use serde::Deserialize;
use serde_json::Value;
use xoflow_proto::{
    Timestamp,
    v1::{
        Event, MetricKind, SurveyAnswer, SurveyResponse, SurveyTrigger, event::Payload,
        survey_trigger::Ref,
    },
};

use super::{identity, location, name_list, required};
use crate::normalise::{Reason, Violation};

/// A survey tool's response webhook.
#[derive(Debug, Deserialize)]
pub(super) struct SurveyWebhook {
    response_id: String,
    survey_id: String,
    submitted_at: Timestamp,
    #[serde(default)]
    respondent: Respondent,
    #[serde(default)]
    answers: Vec<NativeAnswer>,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    language: String,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    visit_id: Option<String>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Respondent {
    #[serde(default)]
    id: String,
    /// Marked personal: masked wherever it appears in the free text.
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AnswerType {
    Nps,
    Csat,
    Ces,
    Text,
    Rating,
}

#[derive(Debug, Deserialize)]
struct NativeAnswer {
    question_id: String,
    #[serde(rename = "type")]
    kind: AnswerType,
    value: Value,
    /// The top of the scale for CSAT (5, 7 or 10) and rating questions.
    #[serde(default)]
    scale: Option<i32>,
}

impl SurveyWebhook {
    pub(super) fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        required("response_id", &self.response_id)?;
        let mut answers = Vec::with_capacity(self.answers.len());
        for (i, a) in self.answers.into_iter().enumerate() {
            let (kind, min, max) = match a.kind {
                AnswerType::Nps => (MetricKind::Nps, 0, 10),
                AnswerType::Csat => (MetricKind::Csat, 1, a.scale.unwrap_or(5)),
                AnswerType::Ces => (MetricKind::Ces, 1, a.scale.unwrap_or(7)),
                AnswerType::Rating => (MetricKind::Other, 1, a.scale.unwrap_or(5)),
                AnswerType::Text => (MetricKind::Other, 0, 0),
            };
            let (score, text) = match (&a.kind, a.value) {
                (AnswerType::Text, Value::String(s)) => (None, s),
                (AnswerType::Text, other) => {
                    return Err(Violation::new(
                        format!("answers[{i}].value"),
                        Reason::Invalid,
                        format!("a text answer is a string, got {other}"),
                    ));
                }
                (_, Value::Number(n)) => (n.as_f64(), String::new()),
                (_, other) => {
                    return Err(Violation::new(
                        format!("answers[{i}].value"),
                        Reason::Invalid,
                        format!("a scored answer is a number, got {other}"),
                    ));
                }
            };
            answers.push(SurveyAnswer {
                question_id: a.question_id,
                kind: kind as i32,
                score,
                scale_min: min,
                scale_max: max,
                text,
            });
        }
        let trigger = self
            .order_id
            .map(Ref::OrderId)
            .or(self.call_id.map(Ref::CallId))
            .or(self.visit_id.map(Ref::VisitId))
            .map(|r| SurveyTrigger { r#ref: Some(r) });
        let names = name_list(self.respondent.name);
        let event = Event {
            event_id: format!("survey:{}:{}", self.survey_id, self.response_id),
            occurred_at: Some(self.submitted_at),
            customer: identity(
                self.respondent.id,
                self.respondent.email,
                self.respondent.phone,
                String::new(),
            ),
            location: location(self.store_id, self.region),
            payload: Some(Payload::Survey(SurveyResponse {
                survey_id: self.survey_id,
                answers,
                comment: self.comment,
                language: self.language,
                trigger,
            })),
            ..Default::default()
        };
        Ok((event, names))
    }
}
