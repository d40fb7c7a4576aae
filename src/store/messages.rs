//! Persistent messages in sled: one record per (queue, seq), written when a persistent
//! message enters a durable queue and removed when it leaves for good. Publisher confirms
//! wait for a flush; one flusher task batches every write made meanwhile (group commit).

use super::{Store, StoreError};
use crate::broker::message::{Message, QueuedMessage};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const RECORD_VERSION: u8 = 1;

fn msg_key(queue_id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&queue_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn wall_ms(deadline: Instant) -> u64 {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = deadline.saturating_duration_since(Instant::now());
    (now_wall + left).as_millis() as u64
}

pub(super) fn from_wall_ms(ms: u64) -> Instant {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_millis(ms);
    Instant::now() + at.saturating_sub(now_wall)
}

fn put_short(b: &mut BytesMut, s: &str) {
    let n = s.len().min(255);
    b.put_u8(n as u8);
    b.extend_from_slice(&s.as_bytes()[..n]);
}

fn get_short(b: &mut &[u8]) -> Option<String> {
    let n = *b.first()? as usize;
    let s = b.get(1..1 + n)?;
    let out = String::from_utf8(s.to_vec()).ok()?;
    b.advance(1 + n);
    Some(out)
}

/// Encode a queued message: version, deadline (wall ms, 0 = none), delivery count,
/// exchange, routing key, properties (wire encoding), body.
pub fn encode(qm: &QueuedMessage) -> Vec<u8> {
    let m = &qm.msg;
    let mut b = BytesMut::with_capacity(
        32 + m.exchange.len() + m.routing_key.len() + m.raw_properties.len() + m.body.len(),
    );
    b.put_u8(RECORD_VERSION);
    b.put_u64(qm.deadline.map(wall_ms).unwrap_or(0));
    b.put_u32(qm.delivery_count);
    put_short(&mut b, &m.exchange);
    put_short(&mut b, &m.routing_key);
    b.put_u32(m.raw_properties.len() as u32);
    b.extend_from_slice(&m.raw_properties);
    b.extend_from_slice(&m.body);
    b.to_vec()
}

/// Decode a record written by `encode`.
pub fn decode(seq: u64, raw: &[u8]) -> Option<QueuedMessage> {
    let mut b = raw;
    if b.first() != Some(&RECORD_VERSION) || b.len() < 13 {
        return None;
    }
    b.advance(1);
    let deadline_ms = b.get_u64();
    let delivery_count = b.get_u32();
    let exchange = get_short(&mut b)?;
    let routing_key = get_short(&mut b)?;
    if b.len() < 4 {
        return None;
    }
    let plen = b.get_u32() as usize;
    let props_raw = b.get(..plen)?;
    let (_, properties) = amq_protocol::protocol::basic::parse_properties(props_raw).ok()?;
    let raw_properties = Bytes::copy_from_slice(props_raw);
    let body = Bytes::copy_from_slice(&b[plen..]);
    Some(QueuedMessage {
        seq,
        msg: Message::from_wire(exchange, routing_key, properties, raw_properties, body),
        // It may have been delivered before the restart: say so (at-least-once).
        redelivered: true,
        deadline: (deadline_ms != 0).then(|| from_wall_ms(deadline_ms)),
        delivery_count,
        persisted: true,
    })
}

impl Store {
    /// A fresh id for a durable queue's message records.
    pub fn new_queue_id(&self) -> u64 {
        match self.db.generate_id() {
            Ok(id) => id + 1,
            Err(e) => {
                tracing::error!(error = %e, "could not allocate a queue id");
                rand::random::<u64>() | 1
            }
        }
    }

    /// Write a message record. Returns false (and logs) if it could not be stored: the
    /// publisher must then not get a positive confirm.
    pub fn put_message(&self, queue_id: u64, qm: &QueuedMessage) -> bool {
        match self.msgs.insert(msg_key(queue_id, qm.seq), encode(qm)) {
            Ok(_) => {
                self.write_epoch.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store a persistent message");
                false
            }
        }
    }

    pub fn get_message(&self, queue_id: u64, seq: u64) -> Option<QueuedMessage> {
        match self.msgs.get(msg_key(queue_id, seq)) {
            Ok(Some(v)) => decode(seq, &v),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "could not read a persistent message");
                None
            }
        }
    }

    pub fn remove_message(&self, queue_id: u64, seq: u64) {
        if let Err(e) = self.msgs.remove(msg_key(queue_id, seq)) {
            tracing::error!(error = %e, "could not remove a persistent message");
        }
    }

    /// Remove every message of a queue (purge, delete).
    pub fn remove_queue_messages(&self, queue_id: u64) {
        let keys: Vec<sled::IVec> = self
            .msgs
            .scan_prefix(queue_id.to_be_bytes())
            .keys()
            .filter_map(Result::ok)
            .collect();
        for k in keys {
            let _ = self.msgs.remove(k);
        }
    }

    /// Every stored message of a queue, in seq order, passed to `f`.
    pub fn recover_messages(
        &self,
        queue_id: u64,
        mut f: impl FnMut(QueuedMessage),
    ) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.msgs.scan_prefix(queue_id.to_be_bytes()) {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k[8..16].try_into().map_err(|_| StoreError::Corrupt {
                key: format!("{k:?}"),
                why: "short message key".into(),
            })?);
            let qm = decode(seq, &v).ok_or_else(|| StoreError::Corrupt {
                key: format!("message {queue_id}/{seq}"),
                why: "undecodable message record".into(),
            })?;
            f(qm);
            n += 1;
            if n.is_multiple_of(100_000) {
                tracing::info!(queue_id, recovered = n, "recovering messages");
            }
        }
        Ok(n)
    }

    /// Writes made so far (a confirm may go out once `flushed_epoch` reaches it).
    pub fn write_epoch(&self) -> u64 {
        self.write_epoch.load(Ordering::Acquire)
    }

    pub fn flushed_epoch(&self) -> u64 {
        *self.flushed.borrow()
    }

    pub fn subscribe_flushed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.flushed.subscribe()
    }

    /// Ask the flusher to make everything written so far durable.
    pub fn request_flush(&self) {
        self.flush_wake.notify_one();
    }

    /// Wait until `epoch` is flushed (transactions: commit-ok after the flush).
    pub async fn wait_flushed(&self, epoch: u64) {
        let mut rx = self.flushed.subscribe();
        self.request_flush();
        while *rx.borrow_and_update() < epoch {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The group-commit loop: one flush covers every write made before it started. The
    /// task holds the store only while flushing, so dropping the broker closes sled.
    pub fn start_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let wake = self.flush_wake.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                let Some(store) = weak.upgrade() else { return };
                let target = store.write_epoch();
                if target <= store.flushed_epoch() {
                    continue;
                }
                let db = store.db.clone();
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => {
                        store.flushed.send_replace(target);
                        // Writes that arrived during the flush wait for the next one.
                        if store.write_epoch() > target {
                            wake.notify_one();
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "flushing persistent messages failed; confirms are held back");
                        drop(store);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        wake.notify_one();
                    }
                    Err(e) => tracing::error!(error = %e, "flush task failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::BasicProperties;

    #[test]
    fn record_roundtrip() {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(3);
        let qm = QueuedMessage {
            seq: 7,
            msg: Message::new(
                "ex".into(),
                "rk".into(),
                props,
                Bytes::from_static(b"payload"),
            ),
            redelivered: false,
            deadline: Some(Instant::now() + Duration::from_secs(60)),
            delivery_count: 2,
            persisted: true,
        };
        let back = decode(7, &encode(&qm)).expect("decodes");
        assert_eq!(back.msg.body, qm.msg.body);
        assert_eq!(back.msg.exchange, "ex");
        assert_eq!(back.msg.routing_key, "rk");
        assert_eq!(back.msg.priority(), 3);
        assert_eq!(back.delivery_count, 2);
        assert!(back.redelivered);
        let left = back
            .deadline
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(58) && left <= Duration::from_secs(61),
            "{left:?}"
        );
        assert!(decode(7, b"garbage").is_none());
    }
}
