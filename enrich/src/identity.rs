//! Identity resolution: which customer an event belongs to.
//!
//! Events that carry a customer id and weak identifiers (hashed e-mail,
//! phone, social handle, device) teach links; events with only weak
//! identifiers are resolved through them. In the stage the link table is a
//! global table: every instance reads the whole links topic at start-up and
//! follows it, and writes the links it learns there (see [`crate::stage`]).

use std::collections::HashMap;

use xoflow_proto::v1::{CustomerIdentity, Event, IdentityResolution};

/// The customer an event was resolved to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub customer_id: Option<String>,
    pub resolution: IdentityResolution,
}

impl Resolved {
    pub fn unresolved() -> Self {
        Resolved {
            customer_id: None,
            resolution: IdentityResolution::Unresolved,
        }
    }
}

/// Hashed weak identifier → customer id.
#[derive(Debug, Default)]
pub struct Links {
    map: HashMap<String, String, foldhash::fast::RandomState>,
}

impl Links {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records a link read from the links topic (the latest wins).
    pub fn insert(&mut self, identifier: String, customer_id: String) {
        self.map.insert(identifier, customer_id);
    }

    /// Learns the links `e` teaches; calls `new_link` for each link that is
    /// new or changed (to be published).
    pub fn learn(&mut self, e: &Event, new_link: impl FnMut(&str, &str)) {
        self.learn_from(e.customer.as_ref(), new_link);
    }

    /// [`Links::learn`] from an event's identity alone.
    pub fn learn_from(
        &mut self,
        customer: Option<&CustomerIdentity>,
        mut new_link: impl FnMut(&str, &str),
    ) {
        let Some(c) = customer else { return };
        if c.customer_id.is_empty() {
            return;
        }
        for h in [
            &c.email_hash,
            &c.phone_hash,
            &c.social_handle_hash,
            &c.device_id_hash,
        ] {
            if !h.is_empty() && self.map.get(h.as_str()) != Some(&c.customer_id) {
                self.map.insert(h.clone(), c.customer_id.clone());
                new_link(h, &c.customer_id);
            }
        }
    }

    /// The customer of `e`: its own id, else the first weak identifier
    /// linked to one.
    pub fn resolve(&self, e: &Event) -> Resolved {
        self.resolve_from(e.customer.as_ref())
    }

    /// [`Links::resolve`] from an event's identity alone.
    pub fn resolve_from(&self, customer: Option<&CustomerIdentity>) -> Resolved {
        let Some(c) = customer else {
            return Resolved::unresolved();
        };
        if !c.customer_id.is_empty() {
            return Resolved {
                customer_id: Some(c.customer_id.clone()),
                resolution: IdentityResolution::Direct,
            };
        }
        [
            &c.email_hash,
            &c.phone_hash,
            &c.social_handle_hash,
            &c.device_id_hash,
        ]
        .into_iter()
        .filter(|h| !h.is_empty())
        .find_map(|h| self.map.get(h.as_str()))
        .map_or_else(Resolved::unresolved, |id| Resolved {
            customer_id: Some(id.clone()),
            resolution: IdentityResolution::Linked,
        })
    }
}
