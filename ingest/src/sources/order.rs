//! Order events and CDC rows → `Order`: a Debezium-style `after` envelope
//! is unwrapped, the status word becomes the enum, the natural id is the
//! order id and status.

use serde::Deserialize;
use serde_json::Value;
use xoflow_proto::{
    Timestamp,
    v1::{Event, LineItem, Order, OrderStatus, event::Payload},
};

use super::{identity, location};
use crate::{
    framing::parse_value,
    normalise::{Reason, Violation},
};

/// An order event, or a CDC row: a Debezium-style `{"op", "after": row}`
/// envelope is unwrapped first, and errors then name the row's field as
/// `after.amount_minor`.
#[derive(Debug)]
pub(super) struct OrderRow(OrderFields);

pub(super) fn order_row(mut v: Value) -> Result<OrderRow, Violation> {
    match v.get_mut("after").map(Value::take) {
        Some(after) => parse_value::<OrderFields>(after)
            .map(OrderRow)
            .map_err(|mut e| {
                e.field = if e.field.is_empty() {
                    "after".into()
                } else {
                    format!("after.{}", e.field)
                };
                e
            }),
        None => parse_value::<OrderFields>(v).map(OrderRow),
    }
}

#[derive(Debug, Deserialize)]
struct OrderFields {
    order_id: String,
    status: String,
    updated_at: Timestamp,
    #[serde(default)]
    amount_minor: i64,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    promised_delivery_at: Option<Timestamp>,
    #[serde(default)]
    delivered_at: Option<Timestamp>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    items: Vec<NativeItem>,
}

#[derive(Debug, Deserialize)]
struct NativeItem {
    sku: String,
    #[serde(default)]
    name: String,
    quantity: u32,
    unit_price_minor: i64,
}

impl OrderRow {
    pub(super) fn into_event(self) -> Result<(Event, Vec<String>), Violation> {
        let o = self.0;
        let status = OrderStatus::from_str_name(&format!(
            "ORDER_STATUS_{}",
            o.status.trim().to_ascii_uppercase()
        ))
        .filter(|s| *s != OrderStatus::Unspecified)
        .ok_or_else(|| {
            Violation::new(
                "status",
                Reason::UnknownEnum,
                format!(
                    "{:?} is not one of placed, paid, shipped, delivered, cancelled, returned",
                    o.status
                ),
            )
        })?;
        let event = Event {
            event_id: format!("order:{}:{}", o.order_id, status as i32),
            occurred_at: Some(o.updated_at),
            customer: identity(o.customer_id, o.email, o.phone, String::new()),
            location: location(o.store_id, o.region),
            payload: Some(Payload::Order(Order {
                order_id: o.order_id,
                status: status as i32,
                amount_minor: o.amount_minor,
                currency: o.currency,
                items: o
                    .items
                    .into_iter()
                    .map(|i| LineItem {
                        sku: i.sku,
                        name: i.name,
                        quantity: i.quantity,
                        unit_price_minor: i.unit_price_minor,
                    })
                    .collect(),
                promised_delivery_at: o.promised_delivery_at,
                delivered_at: o.delivered_at,
            })),
            ..Default::default()
        };
        Ok((event, Vec::new()))
    }
}
