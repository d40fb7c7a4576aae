//! A published message: assembled once, shared by every queue it reaches (`Arc`), its body a
//! `Bytes` that is never copied per destination.

use crate::protocol::{encode, BasicProperties};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug)]
pub struct Message {
    /// Exchange the message was published to (reported on delivery).
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    pub properties: BasicProperties,
    /// Properties as encoded on the wire; sent verbatim on delivery so a message is not
    /// re-encoded per consumer.
    pub raw_properties: Bytes,
    pub body: Bytes,
    /// Per-message TTL from the `expiration` property, in ms (validated at publish).
    pub expiration_ms: Option<u64>,
}

/// Parse the `expiration` property: a non-negative decimal number of milliseconds.
pub fn parse_expiration(props: &BasicProperties) -> Result<Option<u64>, String> {
    match props.expiration() {
        None => Ok(None),
        Some(s) => s
            .as_str()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("invalid expiration '{}'", s.as_str())),
    }
}

impl Message {
    /// A message whose encoded properties are already known (read off the wire).
    pub fn from_wire(
        exchange: String,
        routing_key: String,
        properties: BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Arc<Self> {
        let expiration_ms = parse_expiration(&properties).ok().flatten();
        Arc::new(Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
            expiration_ms,
        })
    }

    /// A message built inside the broker (HTTP publish, dead-lettering): encodes properties.
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: BasicProperties,
        body: Bytes,
    ) -> Arc<Self> {
        let raw_properties = encode::properties(&properties);
        let expiration_ms = parse_expiration(&properties).ok().flatten();
        Arc::new(Message {
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
            expiration_ms,
        })
    }

    /// The priority property (missing = 0).
    pub fn priority(&self) -> u8 {
        self.properties.priority().unwrap_or(0)
    }

    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }

    pub fn content(&self) -> encode::ContentRef<'_> {
        encode::ContentRef {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            raw_properties: &self.raw_properties,
            body: &self.body,
        }
    }
}

/// A message as it sits in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue's publish order; requeued messages go back to their place.
    pub seq: u64,
    pub msg: Arc<Message>,
    /// Delivered before (and not acked): the redelivered flag.
    pub redelivered: bool,
    /// When it expires (the smaller of queue TTL and per-message expiration), kept across
    /// requeues.
    pub deadline: Option<tokio::time::Instant>,
    /// How many times it was delivered and returned (for x-delivery-limit).
    pub delivery_count: u32,
    /// Where its record is in the message log (persistent message in a durable queue):
    /// acked there when the message leaves the queue for good.
    pub stored: Option<crate::store::segments::Loc>,
}
