//! Dead-lettering: the message rebuilt with RabbitMQ's `x-death` history, republished to
//! the queue's dead-letter exchange, with fully automatic cycles cut.

use super::message::{Message, QueuedMessage};
use super::queue::Queue;
use super::vhost::VHost;
use crate::protocol::{AMQPValue, BasicProperties, FieldArray, FieldTable, LongString};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }

    /// Its code in a quorum queue's log (at-least-once dead-lettering).
    pub fn code(self) -> u8 {
        match self {
            DeathReason::Rejected => 0,
            DeathReason::Expired => 1,
            DeathReason::Maxlen => 2,
            DeathReason::DeliveryLimit => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => DeathReason::Rejected,
            1 => DeathReason::Expired,
            2 => DeathReason::Maxlen,
            3 => DeathReason::DeliveryLimit,
            _ => return None,
        })
    }
}

fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn table_str<'a>(t: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The same properties with other headers and, optionally, no `expiration`.
fn rebuild(p: &BasicProperties, headers: FieldTable, keep_expiration: bool) -> BasicProperties {
    let mut out = BasicProperties::default().with_headers(headers);
    macro_rules! copy {
        ($get:ident, $with:ident) => {
            if let Some(v) = p.$get() {
                out = out.$with(v.clone());
            }
        };
    }
    copy!(content_type, with_content_type);
    copy!(content_encoding, with_content_encoding);
    copy!(delivery_mode, with_delivery_mode);
    copy!(priority, with_priority);
    copy!(correlation_id, with_correlation_id);
    copy!(reply_to, with_reply_to);
    if keep_expiration {
        copy!(expiration, with_expiration);
    }
    copy!(message_id, with_message_id);
    copy!(timestamp, with_timestamp);
    copy!(kind, with_type);
    copy!(user_id, with_user_id);
    copy!(app_id, with_app_id);
    copy!(cluster_id, with_cluster_id);
    out
}

/// The message as redelivered from a quorum queue or one with x-delivery-limit:
/// `x-delivery-count` set.
pub fn with_delivery_count(msg: &Arc<Message>, count: u32) -> Arc<Message> {
    let mut headers = msg.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-delivery-count".into(),
        AMQPValue::LongLongInt(count as i64),
    );
    let props = rebuild(&msg.properties, headers, true);
    Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        props,
        msg.body.clone(),
    )
}

/// Build the dead-lettered copy of `msg` leaving `queue` for `reason`.
fn dead_lettered(
    msg: &Message,
    queue: &str,
    reason: DeathReason,
    dlx: &str,
    dlrk: Option<&str>,
) -> Arc<Message> {
    let mut headers = msg.properties.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let existing = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            table_str(t, "queue") == Some(queue.as_bytes())
                && table_str(t, "reason") == Some(reason.as_str().as_bytes())
        }
        _ => false,
    });
    match existing {
        Some(i) => {
            let mut entry = deaths.remove(i);
            if let AMQPValue::FieldTable(t) = &mut entry {
                let count = match t.inner().get("count") {
                    Some(v) => super::args::int_value(v).unwrap_or(0),
                    None => 0,
                };
                t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            }
            deaths.insert(0, entry);
        }
        None => {
            let mut keys = vec![longstr(&msg.routing_key)];
            if let Some(AMQPValue::FieldArray(cc)) = headers.inner().get("CC") {
                keys.extend(cc.as_slice().iter().cloned());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut entry = FieldTable::default();
            entry.insert("count".into(), AMQPValue::LongLongInt(1));
            entry.insert("reason".into(), longstr(reason.as_str()));
            entry.insert("queue".into(), longstr(queue));
            entry.insert("time".into(), AMQPValue::Timestamp(now));
            entry.insert("exchange".into(), longstr(&msg.exchange));
            entry.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(keys)),
            );
            if let Some(exp) = msg.properties.expiration() {
                entry.insert("original-expiration".into(), longstr(exp.as_str()));
            }
            deaths.insert(0, AMQPValue::FieldTable(entry));
        }
    }
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), longstr(reason.as_str()));
        headers.insert("x-first-death-queue".into(), longstr(queue));
        headers.insert("x-first-death-exchange".into(), longstr(&msg.exchange));
    }
    headers.insert("x-last-death-reason".into(), longstr(reason.as_str()));
    headers.insert("x-last-death-queue".into(), longstr(queue));
    headers.insert("x-last-death-exchange".into(), longstr(&msg.exchange));
    if dlrk.is_some() {
        // With an explicit dead-letter routing key the CC keys no longer apply (RabbitMQ).
        let mut kept = FieldTable::default();
        for (k, v) in headers.inner() {
            if k.as_str() != "CC" {
                kept.insert(k.clone(), v.clone());
            }
        }
        headers = kept;
    }
    let props = rebuild(&msg.properties, headers, false);
    let routing_key = dlrk.unwrap_or(&msg.routing_key).to_string();
    Message::new(dlx.to_string(), routing_key, props, msg.body.clone())
}

/// Would delivering to `target` close a dead-letter cycle with no rejection in it?
/// (RabbitMQ's rule, applied to the updated x-death history.)
fn is_automatic_cycle(target: &str, msg: &Message) -> bool {
    let Some(headers) = msg.properties.headers() else {
        return false;
    };
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    let mut seen_target = false;
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            return false;
        };
        if table_str(t, "reason") == Some(b"rejected") {
            return false;
        }
        if table_str(t, "queue") == Some(target.as_bytes()) {
            seen_target = true;
            break;
        }
    }
    seen_target
}

/// The copy of `msg` that leaves `queue` for its dead-letter exchange (x-death updated),
/// or None when the queue has no dead-letter exchange.
pub fn dead_message(queue: &Queue, msg: &Message, reason: DeathReason) -> Option<Arc<Message>> {
    let args = queue.args.load();
    let dlx = args.dead_letter_exchange.as_deref()?;
    let dlrk = args.dead_letter_routing_key.as_deref();
    Some(dead_lettered(msg, queue.name(), reason, dlx, dlrk))
}

/// Where a dead-lettered message went.
#[derive(Debug, PartialEq, Eq)]
pub enum DeadRoute {
    /// The dead-letter exchange does not exist.
    NoExchange,
    /// A delayed-message exchange holds it until its delay ends.
    Held,
    /// Routed: the target queues are in the caller's buffer (possibly none), and how many
    /// were left out as automatic cycles.
    Routed { cycles: usize },
}

/// Route a dead-lettered message (from `dead_message`) through its exchange; the target
/// queues go to `targets`, automatic cycles left out (RabbitMQ's rule).
pub fn dead_targets(
    vhost: &Arc<VHost>,
    msg: &Arc<Message>,
    reason: DeathReason,
    targets: &mut Vec<Arc<Queue>>,
) -> DeadRoute {
    let Ok(exchange) = vhost.exchange(&msg.exchange) else {
        return DeadRoute::NoExchange;
    };
    if vhost.hold_delayed(&exchange, msg).is_some() {
        return DeadRoute::Held;
    }
    vhost.route(&exchange, msg, targets);
    let routed = targets.len();
    targets.retain(|q| {
        let cycle = reason != DeathReason::Rejected && is_automatic_cycle(q.name(), msg);
        if cycle {
            tracing::debug!(
                queue = q.name(),
                "dropping dead-lettered message: automatic cycle"
            );
        }
        !cycle
    });
    DeadRoute::Routed {
        cycles: routed - targets.len(),
    }
}

/// Republish messages that died in `queue` to its dead-letter exchange, at most once: a
/// missing DLX or a refusing target drops them silently, as RabbitMQ does.
pub fn dead_letter(vhost: &Arc<VHost>, queue: &Queue, dead: Vec<(QueuedMessage, DeathReason)>) {
    let mut targets = Vec::new();
    for (qm, reason) in dead {
        let Some(msg) = dead_message(queue, &qm.msg, reason) else {
            return;
        };
        if dead_targets(vhost, &msg, reason, &mut targets) == DeadRoute::NoExchange {
            return;
        }
        for q in targets.drain(..) {
            q.publish(msg.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ShortString;
    use bytes::Bytes;

    fn death_fields(msg: &Message, i: usize) -> FieldTable {
        match msg
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-death")
        {
            Some(AMQPValue::FieldArray(a)) => match &a.as_slice()[i] {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn x_death_entries_count_and_move_to_front() {
        let props = BasicProperties::default().with_expiration(ShortString::from("5000"));
        let m0 = Message::new("ex".into(), "rk".into(), props, Bytes::from_static(b"x"));
        let m1 = dead_lettered(&m0, "q1", DeathReason::Expired, "dlx", None);
        assert!(m1.properties.expiration().is_none());
        let d = death_fields(&m1, 0);
        assert_eq!(table_str(&d, "original-expiration"), Some(&b"5000"[..]));
        assert_eq!(d.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
        let m2 = dead_lettered(&m1, "q2", DeathReason::Rejected, "dlx", Some("again"));
        let m3 = dead_lettered(&m2, "q1", DeathReason::Expired, "dlx", None);
        let newest = death_fields(&m3, 0);
        assert_eq!(table_str(&newest, "queue"), Some(&b"q1"[..]));
        assert_eq!(
            newest.inner().get("count"),
            Some(&AMQPValue::LongLongInt(2))
        );
        assert_eq!(table_str(&death_fields(&m3, 1), "queue"), Some(&b"q2"[..]));
        let h = m3.properties.headers().clone().unwrap();
        assert_eq!(table_str(&h, "x-first-death-queue"), Some(&b"q1"[..]));
        assert_eq!(table_str(&h, "x-last-death-queue"), Some(&b"q1"[..]));
        assert_eq!(m2.routing_key, "again");
        // RabbitMQ looks at the history up to the target's newest entry: back to q1 right
        // after expiring there is automatic; to q2, whose entry is a rejection, is not.
        assert!(is_automatic_cycle("q1", &m3));
        assert!(!is_automatic_cycle("q2", &m3));
        assert!(is_automatic_cycle("q1", &m1));
    }
}
