//! State shared between a channel and the queues that deliver to it: delivery tags, the
//! unacked set, prefetch credit, flow, and the consumers themselves.
//!
//! Queues deliver from whichever task published (no hop through another task), so this state
//! sits behind short locks. Lock order everywhere: queue → channel deliveries → outbound.

use super::client::ConnShared;
use super::message::QueuedMessage;
use super::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::encode;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// A delivered, not yet acknowledged message.
pub struct Unacked {
    /// The delivery tag it was sent with.
    pub tag: u64,
    pub queue: Arc<Queue>,
    pub msg: QueuedMessage,
    /// None for basic.get deliveries.
    pub consumer: Option<Arc<Consumer>>,
    /// When it was sent, for the consumer ack timeout.
    pub delivered_at: tokio::time::Instant,
}

pub struct Deliveries {
    /// Last delivery tag handed out on this channel.
    pub last_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
}

/// The delivery side of one channel.
pub struct ChannelShared {
    pub id: u16,
    pub conn: Arc<ConnShared>,
    pub deliveries: Mutex<Deliveries>,
    /// channel.flow from the client: false pauses deliveries.
    pub flow_active: AtomicBool,
    /// basic.qos global=true limit (0 = none) and the count it limits.
    pub global_prefetch: AtomicU32,
    pub global_unacked: AtomicU32,
    /// Set once the channel is closed: nothing more is delivered to it.
    pub closed: AtomicBool,
    /// In confirm mode / in tx mode, for the management API.
    pub confirm: AtomicBool,
    pub transactional: AtomicBool,
    /// Mirrors of the channel task's own state, for the management API: the basic.qos
    /// global=false prefetch, publishes not yet confirmed (updated once per read batch),
    /// and the publishes and acks an open transaction holds.
    pub consumer_prefetch: AtomicU32,
    pub unconfirmed: AtomicU64,
    pub uncommitted_messages: AtomicU32,
    pub uncommitted_acks: AtomicU32,
}

impl ChannelShared {
    pub fn new(id: u16, conn: Arc<ConnShared>) -> Arc<Self> {
        Arc::new(ChannelShared {
            id,
            conn,
            deliveries: Mutex::new(Deliveries {
                last_tag: 0,
                unacked: BTreeMap::new(),
            }),
            flow_active: AtomicBool::new(true),
            global_prefetch: AtomicU32::new(0),
            global_unacked: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            confirm: AtomicBool::new(false),
            transactional: AtomicBool::new(false),
            consumer_prefetch: AtomicU32::new(0),
            unconfirmed: AtomicU64::new(0),
            uncommitted_messages: AtomicU32::new(0),
            uncommitted_acks: AtomicU32::new(0),
        })
    }

    fn global_room(&self) -> bool {
        let limit = self.global_prefetch.load(Ordering::Relaxed);
        limit == 0 || self.global_unacked.load(Ordering::Relaxed) < limit
    }

    /// Take the unacked entries an ack/nack/reject names. Unknown tags are a 406.
    pub fn take(&self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        let mut d = self.deliveries.lock();
        let taken: Vec<Unacked> = if multiple && tag == 0 {
            std::mem::take(&mut d.unacked).into_values().collect()
        } else if multiple {
            if !d.unacked.contains_key(&tag) {
                return Err(AmqpError::precondition(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            let rest = d.unacked.split_off(&(tag + 1));
            std::mem::replace(&mut d.unacked, rest)
                .into_values()
                .collect()
        } else {
            match d.unacked.remove(&tag) {
                Some(u) => vec![u],
                None => {
                    return Err(AmqpError::precondition(format!(
                        "unknown delivery tag {tag}"
                    )))
                }
            }
        };
        drop(d);
        for u in &taken {
            self.release_credit(u);
        }
        Ok(taken)
    }

    /// Everything unacked on this channel (close, recover).
    pub fn take_all(&self) -> Vec<Unacked> {
        let taken: Vec<Unacked> = std::mem::take(&mut self.deliveries.lock().unacked)
            .into_values()
            .collect();
        for u in &taken {
            self.release_credit(u);
        }
        taken
    }

    /// Take every unacked delivery of one consumer (its ack timeout fired).
    pub fn take_consumer(&self, consumer: &Arc<Consumer>) -> Vec<Unacked> {
        let mut d = self.deliveries.lock();
        let tags: Vec<u64> = d
            .unacked
            .iter()
            .filter(|(_, u)| {
                u.consumer
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, consumer))
            })
            .map(|(t, _)| *t)
            .collect();
        let taken: Vec<Unacked> = tags.iter().filter_map(|t| d.unacked.remove(t)).collect();
        drop(d);
        for u in &taken {
            self.release_credit(u);
        }
        taken
    }

    /// Consumers with a delivery unacked for longer than their timeout, oldest first.
    /// Deliveries are kept in tag order, which is delivery order, so the scan stops at the
    /// first delivery younger than the shortest timeout.
    pub fn timed_out_consumers(
        &self,
        now: tokio::time::Instant,
        shortest: std::time::Duration,
    ) -> Vec<Arc<Consumer>> {
        let d = self.deliveries.lock();
        let mut out: Vec<Arc<Consumer>> = Vec::new();
        for u in d.unacked.values() {
            let age = now.saturating_duration_since(u.delivered_at);
            if age < shortest {
                break;
            }
            if let Some(c) = &u.consumer {
                if c.timeout.is_some_and(|t| age >= t) && !out.iter().any(|x| Arc::ptr_eq(x, c)) {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    /// Put taken entries back as unacked (a rolled-back transaction's acks).
    pub fn restore(&self, entries: Vec<Unacked>) {
        let mut d = self.deliveries.lock();
        for u in entries {
            u.queue.stats.restored();
            if let Some(c) = &u.consumer {
                c.unacked.fetch_add(1, Ordering::Relaxed);
                self.global_unacked.fetch_add(1, Ordering::Relaxed);
            }
            d.unacked.insert(u.tag, u);
        }
    }

    fn release_credit(&self, u: &Unacked) {
        u.queue.stats.settled();
        if let Some(c) = &u.consumer {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
            self.global_unacked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hand a basic.get result to this channel; returns the delivery tag.
    pub fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        qm: QueuedMessage,
        no_ack: bool,
        message_count: u32,
    ) {
        queue.stats.got(qm.redelivered, !no_ack);
        let mut d = self.deliveries.lock();
        d.last_tag += 1;
        let tag = d.last_tag;
        let frame_max = self.conn.frame_max();
        self.conn.out.write(|buf| {
            encode::get_ok(
                buf,
                self.id,
                frame_max,
                tag,
                qm.redelivered,
                message_count,
                &qm.msg.content(),
            )
        });
        if no_ack {
            queue.forget(&qm);
        } else {
            queue.mark_delivered(&qm);
            d.unacked.insert(
                tag,
                Unacked {
                    tag,
                    queue: queue.clone(),
                    msg: qm,
                    consumer: None,
                    delivered_at: tokio::time::Instant::now(),
                },
            );
        }
    }
}

/// One basic.consume subscription.
pub struct Consumer {
    pub tag: String,
    pub channel: Arc<ChannelShared>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// x-priority consume argument.
    pub priority: i32,
    /// Per-consumer prefetch (basic.qos global=false at consume time); 0 = unlimited.
    pub prefetch: u32,
    pub unacked: AtomicU32,
    /// False once cancelled (by the client or because its queue went away).
    pub active: AtomicBool,
    pub arguments: crate::protocol::FieldTable,
    /// Ack timeout for its deliveries (None = no limit).
    pub timeout: Option<std::time::Duration>,
}

/// Why a consumer cannot take a message right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Prefetch or channel flow: it will ask again when an ack or flow frees it.
    NoCredit,
    /// Its socket is behind: the connection's writer will re-dispatch the queue once drained.
    Congested,
}

impl Consumer {
    pub fn readiness(&self) -> Readiness {
        if !self.channel.flow_active.load(Ordering::Relaxed) {
            return Readiness::NoCredit;
        }
        if !self.no_ack {
            if self.prefetch != 0 && self.unacked.load(Ordering::Relaxed) >= self.prefetch {
                return Readiness::NoCredit;
            }
            if !self.channel.global_room() {
                return Readiness::NoCredit;
            }
        }
        if self.channel.conn.out.is_congested() {
            return Readiness::Congested;
        }
        Readiness::Ready
    }

    /// Write one delivery to the consumer's connection and, unless no-ack, record it as
    /// unacked. Called with the queue's lock held.
    pub fn deliver(self: &Arc<Self>, queue: &Arc<Queue>, qm: QueuedMessage) {
        queue.stats.delivered(qm.redelivered, !self.no_ack);
        let ch = &self.channel;
        let mut d = ch.deliveries.lock();
        d.last_tag += 1;
        let tag = d.last_tag;
        let frame_max = ch.conn.frame_max();
        ch.conn.out.write(|buf| {
            encode::deliver(
                buf,
                ch.id,
                frame_max,
                &self.tag,
                tag,
                qm.redelivered,
                &qm.msg.content(),
            )
        });
        if self.no_ack {
            queue.forget(&qm);
        } else {
            queue.mark_delivered(&qm);
            self.unacked.fetch_add(1, Ordering::Relaxed);
            ch.global_unacked.fetch_add(1, Ordering::Relaxed);
            d.unacked.insert(
                tag,
                Unacked {
                    tag,
                    queue: queue.clone(),
                    msg: qm,
                    consumer: Some(self.clone()),
                    delivered_at: tokio::time::Instant::now(),
                },
            );
        }
    }
}
