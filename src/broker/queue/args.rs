//! The queue arguments that change behaviour, read once at declare time.

use crate::broker::args::{get, int_value, str_value};
use crate::protocol::{AMQPValue, FieldTable};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// RabbitMQ 4.0's default `x-delivery-limit` of quorum queues.
pub const QUORUM_DELIVERY_LIMIT: u64 = 20;

#[derive(Debug, Clone)]
pub struct QueueArgs {
    /// x-max-priority: number of priority levels above 0 (0 = not a priority queue).
    pub max_priority: u8,
    /// x-message-ttl.
    pub message_ttl: Option<Duration>,
    /// x-expires: delete after this long unused.
    pub expires: Option<Duration>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub single_active_consumer: bool,
    /// x-delivery-limit: returns allowed before a message is dead-lettered.
    pub delivery_limit: Option<u64>,
    /// x-consumer-timeout in ms (0 = none); None = broker default.
    pub consumer_timeout: Option<u64>,
    /// Quorum queues with `x-dead-letter-strategy: at-least-once`: a dead-lettered message
    /// stays in the queue until every target queue has it. RabbitMQ needs
    /// `x-overflow: reject-publish` (and a dead-letter exchange) for it; otherwise it
    /// dead-letters at most once, and so do we.
    pub at_least_once: bool,
}

impl QueueArgs {
    /// Read from a validated argument table (validation happens at declare).
    pub fn from_table(t: &FieldTable) -> Self {
        let int = |k: &str| get(t, k).and_then(int_value);
        let ms = |k: &str| int(k).map(|v| Duration::from_millis(v.max(0) as u64));
        let overflow = match get(t, "x-overflow").and_then(str_value).as_deref() {
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            _ => Overflow::DropHead,
        };
        let dead_letter_exchange = get(t, "x-dead-letter-exchange").and_then(str_value);
        let at_least_once = super::is_quorum(t)
            && overflow == Overflow::RejectPublish
            && dead_letter_exchange.is_some()
            && get(t, "x-dead-letter-strategy")
                .and_then(str_value)
                .as_deref()
                == Some("at-least-once");
        QueueArgs {
            max_priority: int("x-max-priority").unwrap_or(0).clamp(0, 255) as u8,
            message_ttl: ms("x-message-ttl"),
            expires: ms("x-expires"),
            dead_letter_exchange,
            dead_letter_routing_key: get(t, "x-dead-letter-routing-key").and_then(str_value),
            max_length: int("x-max-length").map(|v| v.max(0) as u64),
            max_length_bytes: int("x-max-length-bytes").map(|v| v.max(0) as u64),
            overflow,
            single_active_consumer: matches!(
                get(t, "x-single-active-consumer"),
                Some(AMQPValue::Boolean(true))
            ),
            // Quorum queues have RabbitMQ 4's default of 20 returns; -1 is unlimited.
            delivery_limit: match int("x-delivery-limit") {
                Some(v) if v < 0 => None,
                Some(v) => Some(v as u64),
                None if super::is_quorum(t) => Some(QUORUM_DELIVERY_LIMIT),
                None => None,
            },
            consumer_timeout: int("x-consumer-timeout").map(|v| v.max(0) as u64),
            at_least_once,
        }
    }
}
