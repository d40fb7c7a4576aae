//! Message rates from counters: every few seconds the sampler reads each queue's atomic
//! counters (and each connection's publish counter), and the difference since the last
//! sample over the time between them is the rate. Nothing on the message path takes a
//! lock for this. Counters of deleted queues and closed connections are kept in a retired
//! total so overall counts never go backwards.

use crate::broker::queue::stats::Counts;
use crate::broker::Broker;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often counters are sampled (RabbitMQ's default statistics interval).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Per-second rates of the counted events.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RateSet {
    pub publish: f64,
    pub deliver: f64,
    pub get: f64,
    pub redeliver: f64,
    pub ack: f64,
}

impl RateSet {
    fn between(old: &Counts, new: &Counts, secs: f64) -> Self {
        let r = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        RateSet {
            publish: r(old.publish, new.publish),
            deliver: r(old.deliver, new.deliver),
            get: r(old.get, new.get),
            redeliver: r(old.redeliver, new.redeliver),
            ack: r(old.ack, new.ack),
        }
    }
}

/// A queue's counters and depth at a sample, and the rates since the one before.
#[derive(Debug, Default, Clone, Copy)]
struct QueueSample {
    counts: Counts,
    rates: RateSet,
    depth: Depth,
}

/// Ready and unacknowledged messages, and how fast each changed (per second, negative
/// when shrinking): RabbitMQ's `messages_ready_details.rate` and friends.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Depth {
    pub ready: u64,
    pub unacked: u64,
    pub ready_rate: f64,
    pub unacked_rate: f64,
}

impl Depth {
    fn since(mut self, old: &Depth, secs: f64) -> Self {
        self.ready_rate = (self.ready as f64 - old.ready as f64) / secs;
        self.unacked_rate = (self.unacked as f64 - old.unacked as f64) / secs;
        self
    }
}

/// A connection's counters at a sample, and its byte rates since the one before.
#[derive(Debug, Default, Clone, Copy)]
struct ConnSample {
    published: u64,
    recv_oct: u64,
    send_oct: u64,
    recv_rate: f64,
    send_rate: f64,
}

#[derive(Default)]
struct Inner {
    at: Option<Instant>,
    /// vhost → queue → counts and depth at the last sample and the rates they gave.
    queues: HashMap<String, HashMap<String, QueueSample>>,
    /// connection id → its counters at the last sample and its byte rates.
    conns: HashMap<u64, ConnSample>,
    /// Counters of queues and connections that are gone.
    retired: Counts,
    overall: (Counts, RateSet),
    overall_depth: Depth,
}

#[derive(Default)]
pub struct Rates {
    inner: Mutex<Inner>,
}

impl Rates {
    /// Take a sample now.
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let mut current: HashMap<String, HashMap<String, (Counts, Depth)>> = HashMap::new();
        for v in broker.vhosts.iter() {
            let m = current.entry(v.name.clone()).or_default();
            for q in v.queues.iter() {
                let depth = Depth {
                    ready: q.depth().0,
                    unacked: q.stats.unacked(),
                    ..Depth::default()
                };
                m.insert(q.name().to_string(), (q.stats.counts(), depth));
            }
        }
        use std::sync::atomic::Ordering::Relaxed;
        let mut conns: HashMap<u64, ConnSample> = broker
            .connections
            .iter()
            .map(|c| {
                let sample = ConnSample {
                    published: c.published.load(Relaxed),
                    recv_oct: c.recv_oct.load(Relaxed),
                    send_oct: c.out.send_oct.load(Relaxed),
                    ..ConnSample::default()
                };
                (c.id, sample)
            })
            .collect();
        let mut inner = self.inner.lock();
        let secs = inner
            .at
            .map(|t| now.duration_since(t).as_secs_f64())
            .filter(|s| *s > 0.0);
        if let Some(secs) = secs {
            for (id, c) in conns.iter_mut() {
                if let Some(old) = inner.conns.get(id) {
                    c.recv_rate = c.recv_oct.saturating_sub(old.recv_oct) as f64 / secs;
                    c.send_rate = c.send_oct.saturating_sub(old.send_oct) as f64 / secs;
                }
            }
        }
        // What disappeared since the last sample is retired with its last counts.
        let mut retired = inner.retired;
        for (v, qs) in &inner.queues {
            for (name, old) in qs {
                if !current.get(v).is_some_and(|m| m.contains_key(name)) {
                    let mut gone = old.counts;
                    gone.publish = 0;
                    retired.add(&gone);
                }
            }
        }
        for (id, c) in &inner.conns {
            if !conns.contains_key(id) {
                retired.publish += c.published;
            }
        }
        let mut total = retired;
        total.publish += conns.values().map(|c| c.published).sum::<u64>();
        let mut queues: HashMap<String, HashMap<String, QueueSample>> = HashMap::new();
        let mut total_depth = Depth::default();
        for (v, qs) in current {
            let old_v = inner.queues.get(&v);
            let mut m = HashMap::with_capacity(qs.len());
            for (name, (c, depth)) in qs {
                let mut q = c;
                q.publish = 0;
                total.add(&q);
                total_depth.ready += depth.ready;
                total_depth.unacked += depth.unacked;
                let sample = match (secs, old_v.and_then(|o| o.get(&name))) {
                    (Some(s), Some(old)) => QueueSample {
                        counts: c,
                        rates: RateSet::between(&old.counts, &c, s),
                        depth: depth.since(&old.depth, s),
                    },
                    _ => QueueSample {
                        counts: c,
                        rates: RateSet::default(),
                        depth,
                    },
                };
                m.insert(name, sample);
            }
            queues.insert(v, m);
        }
        let overall_rates = match secs {
            Some(s) => RateSet::between(&inner.overall.0, &total, s),
            None => RateSet::default(),
        };
        let overall_depth = match secs {
            Some(s) => total_depth.since(&inner.overall_depth, s),
            None => total_depth,
        };
        *inner = Inner {
            at: Some(now),
            queues,
            conns,
            retired,
            overall: (total, overall_rates),
            overall_depth,
        };
    }

    /// Bytes per second received and sent by a connection, as of the last sample.
    pub fn connection_rates(&self, id: u64) -> (f64, f64) {
        self.inner
            .lock()
            .conns
            .get(&id)
            .map(|c| (c.recv_rate, c.send_rate))
            .unwrap_or_default()
    }

    pub fn queue_rates(&self, vhost: &str, name: &str) -> RateSet {
        self.inner
            .lock()
            .queues
            .get(vhost)
            .and_then(|m| m.get(name))
            .map(|q| q.rates)
            .unwrap_or_default()
    }

    /// How fast the queue's ready and unacknowledged counts changed between the last two
    /// samples.
    pub fn queue_depth_rates(&self, vhost: &str, name: &str) -> Depth {
        self.inner
            .lock()
            .queues
            .get(vhost)
            .and_then(|m| m.get(name))
            .map(|q| q.depth)
            .unwrap_or_default()
    }

    /// The same over all queues.
    pub fn overall_depth_rates(&self) -> Depth {
        self.inner.lock().overall_depth
    }

    /// Overall counters as of now (live plus retired) and the last sampled rates.
    pub fn overall(&self, broker: &Broker) -> (Counts, RateSet) {
        let (retired, known_conns, rates) = {
            let inner = self.inner.lock();
            (inner.retired, inner.conns.clone(), inner.overall.1)
        };
        let mut total = retired;
        for v in broker.vhosts.iter() {
            for q in v.queues.iter() {
                let mut c = q.stats.counts();
                c.publish = 0;
                total.add(&c);
            }
        }
        for c in broker.connections.iter() {
            total.publish += c.published.load(std::sync::atomic::Ordering::Relaxed);
        }
        // Connections closed since the last sample still count until it retires them.
        for (id, c) in known_conns {
            if !broker.connections.contains_key(&id) {
                total.publish += c.published;
            }
        }
        (total, rates)
    }
}

/// `{"rate": …}`, one decimal.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub rate: f64,
}

impl Rate {
    pub fn of(r: f64) -> Self {
        Rate {
            rate: (r * 10.0).round() / 10.0,
        }
    }
}

/// RabbitMQ's `message_stats` object: counts and `<name>_details.rate`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageStats {
    pub publish: u64,
    pub publish_details: Rate,
    pub deliver: u64,
    pub deliver_details: Rate,
    pub deliver_no_ack: u64,
    pub deliver_no_ack_details: Rate,
    pub get: u64,
    pub get_details: Rate,
    pub get_no_ack: u64,
    pub get_no_ack_details: Rate,
    pub deliver_get: u64,
    pub deliver_get_details: Rate,
    pub redeliver: u64,
    pub redeliver_details: Rate,
    pub ack: u64,
    pub ack_details: Rate,
}

pub fn message_stats(c: &Counts, r: &RateSet) -> MessageStats {
    MessageStats {
        publish: c.publish,
        publish_details: Rate::of(r.publish),
        deliver: c.deliver,
        deliver_details: Rate::of(r.deliver),
        deliver_no_ack: 0,
        deliver_no_ack_details: Rate::of(0.0),
        get: c.get,
        get_details: Rate::of(r.get),
        get_no_ack: 0,
        get_no_ack_details: Rate::of(0.0),
        deliver_get: c.deliver + c.get,
        deliver_get_details: Rate::of(r.deliver + r.get),
        redeliver: c.redeliver,
        redeliver_details: Rate::of(r.redeliver),
        ack: c.ack,
        ack_details: Rate::of(r.ack),
    }
}

/// Sample every INTERVAL until the broker's Arc is the last one or shutdown.
pub fn spawn(
    broker: Arc<Broker>,
    rates: Arc<Rates>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => rates.sample(&broker),
                _ = shutdown.changed() => return,
            }
        }
    });
}
