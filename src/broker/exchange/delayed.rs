//! The `x-delayed-message` exchange type's holding area: messages published with a
//! positive `x-delay` header wait here and are routed through the exchange (as its
//! `x-delayed-type`, alternate exchange and e2e bindings included) once due.
//!
//! One timer task per delayed exchange sleeps until the earliest due time (a `BTreeMap`
//! ordered by due time), never a task per message. A persistent message held by a durable
//! exchange is also written to the store, so it survives a restart; at start it is
//! rescheduled for its original (wall-clock) due time, and routed at once if that passed.
//!
//! As in the plugin, the routing decision is made when the delay ends, so a delayed message
//! never causes a basic.return at publish time.

use super::Exchange;
use crate::broker::message::Message;
use crate::broker::vhost::VHost;
use crate::protocol::AMQPValue;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The plugin's limit: delays are at most 2^32 - 1 ms.
const MAX_DELAY_MS: i64 = u32::MAX as i64;

/// A held message and its store record, if it has one.
struct Held {
    msg: Arc<Message>,
    store_id: Option<u64>,
}

#[derive(Default)]
struct Inner {
    /// By (due time, arrival order): equal due times keep publish order.
    due: BTreeMap<(Instant, u64), Held>,
    next_seq: u64,
}

/// The messages one delayed exchange holds.
#[derive(Default)]
pub struct DelayedMessages {
    inner: Mutex<Inner>,
    wake: Arc<Notify>,
    timer_started: AtomicBool,
}

impl DelayedMessages {
    pub fn len(&self) -> usize {
        self.inner.lock().due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_due(&self) -> Option<Instant> {
        self.inner.lock().due.keys().next().map(|(at, _)| *at)
    }

    /// Add a message; true if it is now the earliest (the timer must wake sooner).
    fn insert(&self, at: Instant, held: Held) -> bool {
        let mut inner = self.inner.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.due.insert((at, seq), held);
        inner.due.keys().next().is_some_and(|k| *k == (at, seq))
    }

    fn take_due(&self, now: Instant) -> Vec<Held> {
        let mut inner = self.inner.lock();
        let later = inner.due.split_off(&(now, u64::MAX));
        std::mem::replace(&mut inner.due, later)
            .into_values()
            .collect()
    }
}

/// The delay a message asks for: a positive integer `x-delay` header, in ms. Absent, zero,
/// negative or not an integer: no delay.
pub fn delay_of(msg: &Message) -> Option<Duration> {
    let headers = msg.properties.headers().as_ref()?;
    let ms = match headers.inner().get("x-delay")? {
        v @ (AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_)) => crate::broker::args::int_value(v)?,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms.min(MAX_DELAY_MS) as u64))
}

/// What holding a message did.
pub struct HeldOutcome {
    /// A store record was written: a publisher confirm waits for the store flush.
    pub persisted: bool,
}

impl VHost {
    /// If `exchange` is a delayed exchange and `msg` asks for a delay, hold it instead of
    /// routing it now. None: route it as usual.
    pub fn hold_delayed(
        self: &Arc<Self>,
        exchange: &Arc<Exchange>,
        msg: &Arc<Message>,
    ) -> Option<HeldOutcome> {
        exchange.delayed.as_ref()?;
        let delay = delay_of(msg)?;
        let at = Instant::now() + delay;
        let mut store_id = None;
        if exchange.spec.durable && msg.is_persistent() {
            if let Some(store) = self.store() {
                let id = store.new_queue_id();
                if store.put_delayed(&self.name, exchange.name(), id, at, msg) {
                    store_id = Some(id);
                }
            }
        }
        let persisted = store_id.is_some();
        self.schedule_delayed(
            exchange,
            at,
            Held {
                msg: msg.clone(),
                store_id,
            },
        );
        Some(HeldOutcome { persisted })
    }

    /// Reschedule the stored messages of a recovered durable delayed exchange.
    pub fn recover_delayed(self: &Arc<Self>, exchange: &Arc<Exchange>) {
        if exchange.delayed.is_none() {
            return;
        }
        let Some(store) = self.store() else { return };
        match store.recover_delayed(&self.name, exchange.name()) {
            Ok(held) => {
                let n = held.len();
                for (id, at, msg) in held {
                    let held = Held {
                        msg,
                        store_id: Some(id),
                    };
                    self.schedule_delayed(exchange, at, held);
                }
                if n > 0 {
                    tracing::info!(
                        exchange = exchange.name(),
                        messages = n,
                        "recovered delayed messages"
                    );
                }
            }
            Err(e) => {
                tracing::error!(exchange = exchange.name(), error = %e, "delayed messages not recovered")
            }
        }
    }

    fn schedule_delayed(self: &Arc<Self>, exchange: &Arc<Exchange>, at: Instant, held: Held) {
        let Some(d) = &exchange.delayed else { return };
        let earliest = d.insert(at, held);
        if d.timer_started.swap(true, Ordering::AcqRel) {
            if earliest {
                d.wake.notify_one();
            }
            return;
        }
        let weak_x = Arc::downgrade(exchange);
        let weak_v = Arc::downgrade(self);
        let wake = d.wake.clone();
        tokio::spawn(async move {
            loop {
                // No strong reference while sleeping: a deleted exchange ends the task.
                let next = match weak_x.upgrade() {
                    Some(x) if !x.is_deleted() => x.delayed.as_ref().and_then(|d| d.next_due()),
                    _ => return,
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake.notified() => continue,
                        }
                    }
                    None => {
                        wake.notified().await;
                        continue;
                    }
                }
                let (Some(x), Some(v)) = (weak_x.upgrade(), weak_v.upgrade()) else {
                    return;
                };
                if x.is_deleted() {
                    return;
                }
                v.release_due(&x);
            }
        });
    }

    /// Route every message whose delay has ended, in due order.
    fn release_due(&self, exchange: &Arc<Exchange>) {
        let Some(d) = &exchange.delayed else { return };
        let due = d.take_due(Instant::now());
        let mut queues = Vec::new();
        for held in due {
            let mut msg = held.msg;
            self.route_publish(exchange, &mut msg, &mut queues);
            if queues.is_empty() {
                tracing::debug!(
                    exchange = exchange.name(),
                    "delayed message unroutable, dropped"
                );
            }
            for q in queues.drain(..) {
                q.publish(msg.clone());
            }
            if let (Some(id), Some(store)) = (held.store_id, self.store()) {
                store.remove_delayed(&self.name, exchange.name(), id);
            }
        }
    }
}
