//! Segment-style `track` / `page` / `screen` calls → `ClickEvent`: the
//! action from the event name, the path from the page URL, the session from
//! the properties or context.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use xoflow_proto::{
    Timestamp,
    v1::{ClickAction, ClickEvent, Event, event::Payload},
};

use super::{identity, required};
use crate::normalise::{Reason, Violation};

/// A Segment-style `track` (or `page`) call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TrackCall {
    #[serde(rename = "type", default = "track")]
    call_type: String,
    #[serde(default)]
    event: String,
    message_id: String,
    timestamp: Timestamp,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    anonymous_id: String,
    #[serde(default)]
    context: TrackContext,
    #[serde(default)]
    properties: HashMap<String, Value>,
}

fn track() -> String {
    "track".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrackContext {
    #[serde(default)]
    page: PageContext,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    session_id: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct PageContext {
    #[serde(default)]
    url: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    referrer: String,
}

/// The click action a Segment event name stands for (the Segment e-commerce
/// spec names, and the obvious words).
fn action_of(call_type: &str, event: &str) -> ClickAction {
    let e = event.to_ascii_lowercase();
    if call_type == "page" || call_type == "screen" || e.contains("viewed") {
        ClickAction::View
    } else if e.contains("search") {
        ClickAction::Search
    } else if e.contains("added") || e.contains("add to cart") {
        ClickAction::AddToCart
    } else if e.contains("checkout") {
        ClickAction::Checkout
    } else if e.contains("order completed") || e.contains("purchase") {
        ClickAction::Purchase
    } else if e.contains("error") || e.contains("failed") {
        ClickAction::Error
    } else {
        ClickAction::Click
    }
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl TrackCall {
    pub(super) fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        if !matches!(self.call_type.as_str(), "track" | "page" | "screen") {
            return Err(Violation::new(
                "type",
                Reason::UnknownEnum,
                format!("{:?} is not one of track, page, screen", self.call_type),
            ));
        }
        required("messageId", &self.message_id)?;
        let session = self
            .properties
            .get("session_id")
            .and_then(value_string)
            .or_else(|| self.context.session_id.as_ref().and_then(value_string))
            .unwrap_or_else(|| self.anonymous_id.clone());
        let duration_ms = match self.properties.get("duration_ms") {
            None => 0,
            Some(v) => v
                .as_u64()
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| {
                    Violation::new(
                        "properties.duration_ms",
                        Reason::Invalid,
                        format!("a whole number of milliseconds, got {v}"),
                    )
                })?,
        };
        let mut path = self.context.page.path;
        if path.is_empty() {
            path = path_of(&self.context.page.url);
        }
        let event = Event {
            event_id: format!("click:{}", self.message_id),
            occurred_at: Some(self.timestamp),
            customer: identity(
                self.user_id,
                String::new(),
                String::new(),
                self.anonymous_id,
            ),
            payload: Some(Payload::Click(ClickEvent {
                session_id: session,
                url: self.context.page.url,
                path,
                action: action_of(&self.call_type, &self.event) as i32,
                referrer: self.context.page.referrer,
                user_agent: self.context.user_agent,
                duration_ms,
            })),
            attributes: if self.event.is_empty() {
                Default::default()
            } else {
                [("event".to_string(), self.event)].into()
            },
            ..Default::default()
        };
        Ok((event, Vec::new()))
    }
}

/// The path of a URL (`https://h/a/b?q` → `/a/b`).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path[..end].to_owned()
}
