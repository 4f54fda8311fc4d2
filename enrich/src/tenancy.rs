//! A customer belongs to a tenant: two shops may both number a customer
//! `1001`, and one shop's orders must never reach the other's joined
//! context, churn risk or alerts.
//!
//! What crosses this boundary: the join's per-customer state, its changelog
//! records and the alert books are keyed by [`scoped`] keys, (tenant,
//! customer id); Kafka keys, the enriched records and ClickHouse carry the
//! customer id alone (the tenant travels in the event), so partitioning and
//! every output are what they were. Two tenants' customers with one id
//! share a partition, never a state.

/// Separates the tenant from the customer id in a scoped key. Ingest
/// refuses tenant names holding control characters, so the first one in a
/// key ends the tenant; the customer id after it may hold anything.
pub const SEP: char = '\u{1f}';

/// The state key of `tenant`'s customer `customer_id`.
pub fn scoped(tenant: &str, customer_id: &str) -> String {
    let mut key = String::with_capacity(tenant.len() + 1 + customer_id.len());
    key.push_str(tenant);
    key.push(SEP);
    key.push_str(customer_id);
    key
}

/// Makes `customer_id` the state key of `tenant`'s customer in place (one
/// move of its bytes; no allocation when it has the room).
pub fn scope(tenant: &str, customer_id: &mut String) {
    customer_id.reserve(tenant.len() + 1);
    customer_id.insert(0, SEP);
    customer_id.insert_str(0, tenant);
}

/// `customer_id`, with the room [`scope`] needs to make it `tenant`'s state
/// key without allocating again.
pub fn with_room(tenant: &str, customer_id: &str) -> String {
    let mut id = String::with_capacity(tenant.len() + 1 + customer_id.len());
    id.push_str(customer_id);
    id
}

/// The customer id of a state key (a key without a tenant, written before
/// keys had one, is all customer id).
pub fn customer_part(key: &str) -> &str {
    key.split_once(SEP).map_or(key, |(_, c)| c)
}

/// The tenant of a state key ("" for a key without one: ingest refuses
/// events without a tenant, so only a key written before keys had one).
pub fn tenant_part(key: &str) -> &str {
    key.split_once(SEP).map_or("", |(t, _)| t)
}

/// Turns a state key back into its customer id in place.
pub fn unscope(key: &mut String) {
    if let Some(i) = key.find(SEP) {
        key.drain(..=i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_tenant_and_gives_back_the_customer_id() {
        let key = scoped("acme", "1001");
        assert_ne!(key, scoped("beta", "1001"));
        assert_ne!(scoped("ac", "me1001"), key);
        assert_eq!((tenant_part(&key), customer_part(&key)), ("acme", "1001"));
        let mut in_place = with_room("acme", "1001");
        let room = in_place.capacity();
        scope("acme", &mut in_place);
        assert_eq!(in_place, key);
        assert_eq!(in_place.capacity(), room, "scoped where it was");
        unscope(&mut in_place);
        assert_eq!(in_place, "1001");
        // The customer id may hold the separator itself.
        let odd = scoped("acme", "a\u{1f}b");
        assert_eq!(
            (tenant_part(&odd), customer_part(&odd)),
            ("acme", "a\u{1f}b")
        );
        // A key from before keys had a tenant.
        assert_eq!((tenant_part("1001"), customer_part("1001")), ("", "1001"));
    }
}
