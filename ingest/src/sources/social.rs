//! Social-listening posts → `SocialPost`: the author's display name marked
//! personal, the handle kept for the identity hash.

use serde::Deserialize;
use xoflow_proto::{
    Timestamp,
    v1::{Event, Reactions, SocialPost, event::Payload},
};

use super::{location, name_list};
use crate::normalise::Violation;

/// A post from a social-listening tool.
#[derive(Debug, Deserialize)]
pub(super) struct Post {
    platform: String,
    post_id: String,
    created_at: Timestamp,
    #[serde(default)]
    author: Author,
    text: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    reply_to: String,
    #[serde(default)]
    likes: u32,
    #[serde(default)]
    shares: u32,
    #[serde(default)]
    comments: u32,
    #[serde(default)]
    language: String,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Author {
    #[serde(default)]
    handle: String,
    /// Marked personal: masked in the text.
    #[serde(default)]
    display_name: String,
}

impl Post {
    pub(super) fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        let names = name_list(self.author.display_name);
        let event = Event {
            event_id: format!("social:{}:{}", self.platform, self.post_id),
            occurred_at: Some(self.created_at),
            location: location(self.store_id, self.region),
            payload: Some(Payload::Social(SocialPost {
                platform: self.platform,
                post_id: self.post_id,
                author_handle: self.author.handle,
                text: self.text,
                url: self.url,
                reply_to: self.reply_to,
                reactions: Some(Reactions {
                    likes: self.likes,
                    shares: self.shares,
                    comments: self.comments,
                }),
                language: self.language,
            })),
            ..Default::default()
        };
        Ok((event, names))
    }
}
