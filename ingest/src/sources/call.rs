//! Speech-to-text call transcripts → `CallTranscript`: speaker labels,
//! segment offsets in seconds turned into milliseconds, the caller's name
//! marked personal.

use serde::Deserialize;
use xoflow_proto::{
    Timestamp,
    v1::{CallTranscript, Event, Speaker, TranscriptSegment, event::Payload},
};

use super::{identity, location, name_list};
use crate::normalise::{Reason, Violation};

/// A speech-to-text transcript of a call.
#[derive(Debug, Deserialize)]
pub(super) struct Transcript {
    call_id: String,
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    queue: String,
    started_at: Timestamp,
    #[serde(default)]
    ended_at: Option<Timestamp>,
    #[serde(default)]
    caller: Caller,
    #[serde(default)]
    language: String,
    #[serde(default)]
    disposition: String,
    segments: Vec<NativeSegment>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Caller {
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    phone: String,
    /// Marked personal: masked wherever it appears in the transcript.
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NativeSpeaker {
    Customer,
    Agent,
    System,
}

#[derive(Debug, Deserialize)]
struct NativeSegment {
    speaker: NativeSpeaker,
    /// Seconds from the start of the call.
    start: f64,
    /// Seconds from the start of the call.
    end: f64,
    text: String,
}

fn seconds_to_ms(field: String, s: f64) -> Result<u32, Violation> {
    if !s.is_finite() || s < 0.0 || s > f64::from(u32::MAX) / 1000.0 {
        return Err(Violation::new(
            field,
            Reason::OutOfRange,
            format!("{s} is not a non-negative offset in seconds"),
        ));
    }
    Ok((s * 1000.0).round() as u32)
}

impl Transcript {
    pub(super) fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        let mut segments = Vec::with_capacity(self.segments.len());
        for (i, s) in self.segments.into_iter().enumerate() {
            segments.push(TranscriptSegment {
                speaker: match s.speaker {
                    NativeSpeaker::Customer => Speaker::Customer,
                    NativeSpeaker::Agent => Speaker::Agent,
                    NativeSpeaker::System => Speaker::System,
                } as i32,
                start_ms: seconds_to_ms(format!("segments[{i}].start"), s.start)?,
                end_ms: seconds_to_ms(format!("segments[{i}].end"), s.end)?,
                text: s.text,
            });
        }
        let names = name_list(self.caller.name);
        let event = Event {
            event_id: format!("call:{}", self.call_id),
            occurred_at: Some(self.started_at),
            customer: identity(
                self.caller.customer_id,
                String::new(),
                self.caller.phone,
                String::new(),
            ),
            location: location(self.store_id, self.region),
            payload: Some(Payload::Call(CallTranscript {
                call_id: self.call_id,
                agent_id: self.agent_id,
                queue: self.queue,
                started_at: Some(self.started_at),
                ended_at: self.ended_at,
                segments,
                disposition: self.disposition,
                language: self.language,
            })),
            ..Default::default()
        };
        Ok((event, names))
    }
}
