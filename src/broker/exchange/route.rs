//! The shared routing step every message goes through, whatever the exchange type:
//! the default exchange, sender-selected distribution (`CC`/`BCC` headers),
//! exchange-to-exchange bindings and alternate exchanges. Matchers only answer "which
//! destinations does this key reach in this exchange"; everything here is done once.
//!
//! As in RabbitMQ: the exchanges reached form a work list, each visited at most once (so
//! e2e cycles and alternate-exchange loops end); an exchange whose own bindings match
//! nothing (for all the message's keys) hands the message to its `alternate-exchange`;
//! a missing destination or alternate exchange is skipped; every queue gets one copy.

use super::{Destination, Exchange};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::protocol::{AMQPValue, FieldTable};
use std::sync::Arc;

/// Routing keys longer than a shortstr can hold. A binding key is a shortstr, so such a
/// `CC`/`BCC` entry could only ever match wildcard topic patterns; it is ignored.
const MAX_KEY_LEN: usize = 255;

/// The extra routing keys of a sender-selected message: `CC` then `BCC`, each an array of
/// longstr. Other element types, keys over 255 bytes and non-UTF-8 keys are ignored, as is
/// a header of another type than array.
pub fn sender_selected_keys(headers: Option<&FieldTable>) -> Vec<&str> {
    let mut keys = Vec::new();
    let Some(h) = headers else {
        return keys;
    };
    for name in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(a)) = h.inner().get(name) {
            for v in a.as_slice() {
                if let AMQPValue::LongString(s) = v {
                    match std::str::from_utf8(s.as_bytes()) {
                        Ok(k) if k.len() <= MAX_KEY_LEN => keys.push(k),
                        _ => tracing::debug!(header = name, "ignoring an unusable routing key"),
                    }
                }
            }
        }
    }
    keys
}

/// The same message without its `BCC` header (properties re-encoded), or None if it has
/// none.
fn without_bcc(msg: &Message) -> Option<Arc<Message>> {
    let headers = msg.properties.headers().as_ref()?;
    if !headers.contains_key("BCC") {
        return None;
    }
    let kept: FieldTable = headers
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "BCC")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    let properties = msg.properties.clone().with_headers(kept);
    Some(Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        properties,
        msg.body.clone(),
    ))
}

/// What a message is routed by.
struct Keys<'a> {
    routing_key: &'a str,
    extra: &'a [&'a str],
    headers: Option<&'a FieldTable>,
}

/// The exchanges still to route through and those already reached (the seed exchange is
/// `root`), so each is visited once.
struct Walk<'a> {
    root: &'a str,
    pending: Vec<Arc<Exchange>>,
    seen: Vec<String>,
}

thread_local! {
    /// Per-thread buffer for one exchange's matches, reused by every route.
    static DESTS: std::cell::RefCell<Vec<Destination>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Remove duplicate queues (by identity) from `out`; order is not kept. A pairwise check
/// while short, a sort by address past that.
fn dedup_queues(out: &mut Vec<Arc<Queue>>) {
    if out.len() <= 16 {
        let mut i = 1;
        while i < out.len() {
            if out[..i].iter().any(|x| Arc::ptr_eq(x, &out[i])) {
                out.swap_remove(i);
            } else {
                i += 1;
            }
        }
    } else {
        out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}

impl VHost {
    /// Route a message as published: a `BCC` header is removed first (`msg` is replaced by
    /// a copy without it, which is what queues, consumers and `basic.return` see), and its
    /// keys are still used for routing.
    pub fn route_publish(
        &self,
        exchange: &Arc<Exchange>,
        msg: &mut Arc<Message>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        let original = match without_bcc(msg) {
            Some(stripped) => std::mem::replace(msg, stripped),
            None => msg.clone(),
        };
        let headers = original.properties.headers().as_ref();
        let extra = sender_selected_keys(headers);
        self.route_keys(exchange, &original.routing_key, &extra, headers, out);
    }

    /// Which queues does `msg`, published to `exchange`, reach? Uses its routing key plus
    /// any `CC`/`BCC` keys in its headers; the message itself is not changed. `out` is
    /// expected empty: it is deduplicated as a whole.
    pub fn route(&self, exchange: &Arc<Exchange>, msg: &Message, out: &mut Vec<Arc<Queue>>) {
        let headers = msg.properties.headers().as_ref();
        let extra = sender_selected_keys(headers);
        self.route_keys(exchange, &msg.routing_key, &extra, headers, out);
    }

    fn route_keys(
        &self,
        exchange: &Arc<Exchange>,
        routing_key: &str,
        extra: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        let keys = Keys {
            routing_key,
            extra,
            headers,
        };
        // The fast path (one exchange, no e2e binding, no alternate) allocates nothing:
        // `pending` and `seen` stay empty, `dests` is a per-thread buffer.
        let mut walk = Walk {
            root: exchange.name(),
            pending: Vec::new(),
            seen: Vec::new(),
        };
        DESTS.with(|cell| {
            let mut fresh = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let dests = match guard.as_deref_mut() {
                Ok(d) => d,
                // Routing does not nest; a fresh buffer rather than a panic if it ever did.
                Err(_) => &mut fresh,
            };
            self.route_one(exchange, &keys, &mut walk, dests, out);
            while let Some(x) = walk.pending.pop() {
                self.route_one(&x, &keys, &mut walk, dests, out);
            }
        });
        dedup_queues(out);
    }

    /// Route through one exchange: queues go to `out`, exchanges (e2e destinations, or the
    /// alternate when nothing matched) onto the work list unless already seen.
    fn route_one(
        &self,
        x: &Exchange,
        keys: &Keys<'_>,
        walk: &mut Walk<'_>,
        dests: &mut Vec<Destination>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        dests.clear();
        if x.name().is_empty() {
            // The default exchange: every queue is bound by its own name.
            for key in std::iter::once(keys.routing_key).chain(keys.extra.iter().copied()) {
                if let Some(q) = self.queues.get(key) {
                    dests.push(Destination::Queue(q.clone()));
                }
            }
        } else {
            x.route_keys(keys.routing_key, keys.extra, keys.headers, dests);
        }
        if dests.is_empty() {
            if let Some(ae) = x.alternate() {
                self.visit(&ae, walk);
            }
        }
        for d in dests.drain(..) {
            match d {
                Destination::Queue(q) => out.push(q),
                Destination::Exchange(name) => self.visit(&name, walk),
            }
        }
    }

    fn visit(&self, name: &str, walk: &mut Walk<'_>) {
        if name == walk.root || walk.seen.iter().any(|s| s == name) {
            return;
        }
        walk.seen.push(name.to_string());
        match self.exchanges.get(name) {
            Some(x) => walk.pending.push(x.clone()),
            None => tracing::debug!(exchange = name, "routing to a missing exchange"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FieldArray;

    fn arr(items: Vec<AMQPValue>) -> AMQPValue {
        AMQPValue::FieldArray(FieldArray::from(items))
    }

    fn ls(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.as_bytes().to_vec().into())
    }

    #[test]
    fn cc_and_bcc_keys() {
        let mut h = FieldTable::default();
        h.insert(
            "CC".into(),
            arr(vec![
                ls("a"),
                AMQPValue::LongInt(1),
                ls(&"x".repeat(256)),
                ls("b"),
            ]),
        );
        h.insert("BCC".into(), arr(vec![ls(&"y".repeat(255))]));
        let keys = sender_selected_keys(Some(&h));
        assert_eq!(keys.len(), 3);
        assert_eq!(&keys[..2], ["a", "b"]);
        assert_eq!(keys[2].len(), 255);
        let mut h = FieldTable::default();
        h.insert("CC".into(), ls("not-an-array"));
        assert!(sender_selected_keys(Some(&h)).is_empty());
        assert!(sender_selected_keys(None).is_empty());
    }
}
