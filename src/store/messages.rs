//! Persistent messages: the record format, and the store's side of the message log
//! (segments.rs): append on publish, ack when a message leaves for good, recovery, and the
//! flusher that syncs each round (group commit). Publisher confirms and tx commit-ok wait
//! until the round that covers their writes is synced.

use super::segments::Loc;
use super::{Store, StoreError};
use crate::broker::message::{Message, QueuedMessage};
use bytes::{Buf, BufMut, Bytes};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const RECORD_VERSION: u8 = 1;

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

fn put_short(b: &mut Vec<u8>, s: &str) {
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
    let mut b = Vec::new();
    encode_into(qm, &mut b);
    b
}

/// `encode`, appending to `b` (the log's write buffer).
pub fn encode_into(qm: &QueuedMessage, b: &mut Vec<u8>) {
    let m = &qm.msg;
    b.reserve(32 + m.exchange.len() + m.routing_key.len() + m.raw_properties.len() + m.body.len());
    b.put_u8(RECORD_VERSION);
    b.put_u64(qm.deadline.map(wall_ms).unwrap_or(0));
    b.put_u32(qm.delivery_count);
    put_short(b, &m.exchange);
    put_short(b, &m.routing_key);
    b.put_u32(m.raw_properties.len() as u32);
    b.extend_from_slice(&m.raw_properties);
    b.extend_from_slice(&m.body);
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
        // Set by the caller: recovery knows from the delivery file, paging from the queue.
        redelivered: false,
        deadline: (deadline_ms != 0).then(|| from_wall_ms(deadline_ms)),
        delivery_count,
        stored: None,
    })
}

impl Store {
    /// A fresh id for a durable queue's message records.
    pub fn new_queue_id(&self) -> u64 {
        let floor = self.queue_id_floor.load(Ordering::Acquire);
        loop {
            match self.db.generate_id() {
                Ok(id) if id + 1 > floor => return id + 1,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "could not allocate a queue id");
                    return rand::random::<u64>() | 1;
                }
            }
        }
    }

    /// Append a message to the log. It is durable once the flusher's next round has
    /// synced it (confirms wait for that through `write_epoch`). None (and a log line) if
    /// it could not be stored: the publisher must then not get a positive confirm.
    pub fn put_message(&self, queue_id: u64, qm: &QueuedMessage) -> Option<Loc> {
        let mut st = self.log.state.lock();
        // Only the first append since the flusher last took the buffer needs to wake it;
        // later ones ride along (one wake-up per round, not per message).
        let wake = !st.has_appends();
        let appended = if self.log.fail_appends.load(Ordering::Relaxed) {
            Err(std::io::Error::other("injected disk fault"))
        } else {
            self.log
                .append(&mut st, queue_id, qm.seq, |buf| encode_into(qm, buf))
        };
        match appended {
            Ok(loc) => {
                // Under the log lock: a round that covers this epoch has the record.
                self.write_epoch.fetch_add(1, Ordering::AcqRel);
                drop(st);
                if wake {
                    self.flush_wake.notify_one();
                }
                Some(loc)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store a persistent message");
                None
            }
        }
    }

    /// Read a paged-out message back.
    pub fn get_message(&self, loc: Loc, seq: u64) -> Option<QueuedMessage> {
        match self.log.read(loc) {
            Ok(raw) => decode(seq, &raw).map(|mut qm| {
                qm.stored = Some(loc);
                qm
            }),
            Err(e) => {
                tracing::error!(error = %e, ?loc, "could not read a persistent message");
                None
            }
        }
    }

    /// A stored message went out unacked: after a restart it comes back flagged
    /// redelivered, with the deliveries counted. (Written with the next round, not synced
    /// on its own.)
    pub fn mark_delivered(&self, loc: Loc) {
        self.log.state.lock().delivered(loc);
    }

    /// A message left its queue for good: its record is acked.
    pub fn remove_message(&self, loc: Loc) {
        // As for appends: the first ack since the last round wakes the flusher.
        if self.log.state.lock().remove(loc) {
            self.flush_wake.notify_one();
        }
    }

    /// Every stored message, oldest first, passed to `f` with its queue id; `f` returns
    /// false when no queue claims it (the queue was deleted) and the record is dropped.
    /// Records left by the earlier sled layout are moved into the log on the way.
    pub fn recover_messages(
        &self,
        mut f: impl FnMut(u64, QueuedMessage) -> bool,
    ) -> Result<u64, StoreError> {
        // With damaged definitions a record of no known queue may belong to a queue whose
        // definition was lost: keep it on disk (counted live, never served) for repair.
        let keep_unclaimed = self.log.health.definitions_damaged();
        let kept = std::cell::Cell::new(0u64);
        let mut f = |queue_id: u64, qm: QueuedMessage| {
            f(queue_id, qm) || {
                kept.set(kept.get() + u64::from(keep_unclaimed));
                keep_unclaimed
            }
        };
        let mut n =
            self.log.recover(
                |loc, queue_id, seq, delivered, raw| match decode(seq, raw) {
                    Some(mut qm) => {
                        qm.stored = Some(loc);
                        // Every delivery before the stop counts as returned.
                        qm.redelivered = delivered > 0;
                        qm.delivery_count = qm.delivery_count.max(delivered);
                        f(queue_id, qm)
                    }
                    None => {
                        tracing::error!(?loc, "undecodable message record dropped");
                        false
                    }
                },
            )?;
        let kept = kept.get();
        if kept > 0 {
            tracing::error!(
                messages = kept,
                "stored messages of queues that no recovered definition names are kept on disk, unserved, because definitions were damaged"
            );
            n -= kept;
        }
        let mut legacy = 0u64;
        for item in self.msgs.iter() {
            let (k, v) = item?;
            let (Some(q), Some(s)) = (k.get(..8), k.get(8..16)) else {
                continue;
            };
            let queue_id = u64::from_be_bytes(q.try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(s.try_into().unwrap_or_default());
            let mut qm = decode(seq, &v).ok_or_else(|| StoreError::Corrupt {
                key: format!("message {queue_id}/{seq}"),
                why: "undecodable message record".into(),
            })?;
            let Some(loc) = self.put_message(queue_id, &qm) else {
                return Err(StoreError::Corrupt {
                    key: format!("message {queue_id}/{seq}"),
                    why: "could not move the record into the message log".into(),
                });
            };
            qm.stored = Some(loc);
            if f(queue_id, qm) {
                n += 1;
                legacy += 1;
            } else {
                self.remove_message(loc);
            }
        }
        if legacy > 0 {
            self.sync_round()
                .map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
            self.msgs.clear()?;
            tracing::info!(
                messages = legacy,
                "moved messages from the old layout into the message log"
            );
        }
        Ok(n)
    }

    /// Fault injection for disk-error tests: make appends fail (publishers get
    /// basic.nack) and/or flusher rounds fail (confirms are held back), as a full disk or
    /// an I/O error would.
    pub fn inject_faults(&self, appends: bool, rounds: bool) {
        self.log.fail_appends.store(appends, Ordering::Relaxed);
        self.log.fail_rounds.store(rounds, Ordering::Relaxed);
        self.flush_wake.notify_one();
    }

    /// Flusher rounds that failed since start (each is retried).
    pub fn failed_rounds(&self) -> u64 {
        self.failed_rounds.load(Ordering::Relaxed)
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

    /// One group-commit round, blocking: write the appended records, sync them, write
    /// acks, flush definitions if they changed. Returns the epoch it made durable.
    pub(super) fn sync_round(&self) -> std::io::Result<u64> {
        let (target, round) = {
            let mut st = self.log.state.lock();
            let target = self.write_epoch();
            (target, self.log.begin_round(&mut st)?)
        };
        let defs = self.defs_dirty.swap(false, Ordering::AcqRel);
        let flushed = self.log.finish_round_or_requeue(round).and_then(|()| {
            if defs {
                self.db
                    .flush()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string()))
            } else {
                Ok(())
            }
        });
        if flushed.is_err() && defs {
            self.defs_dirty.store(true, Ordering::Release);
        }
        flushed.map(|()| target)
    }

    /// The group-commit loop: each round covers every write made before it started. The
    /// task holds the store only while working, so dropping the broker closes it.
    pub fn start_flusher(self: &Arc<Self>) {
        // The definitions snapshot (snapshot.rs): at start, then at most once a second.
        let snap_weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(store) = snap_weak.upgrade() else {
                    return;
                };
                let res =
                    tokio::task::spawn_blocking(move || store.write_definitions_snapshot()).await;
                match res {
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "could not write the definitions snapshot")
                    }
                    Err(e) => tracing::error!(error = %e, "definitions snapshot task failed"),
                    Ok(Ok(())) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let weak = Arc::downgrade(self);
        let wake = self.flush_wake.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                let Some(store) = weak.upgrade() else { return };
                let worker = store.clone();
                match tokio::task::spawn_blocking(move || worker.sync_round()).await {
                    Ok(Ok(target)) => {
                        if target > store.flushed_epoch() {
                            store.flushed.send_replace(target);
                        }
                        // Writes that arrived meanwhile wait for the next round.
                        if store.write_epoch() > target {
                            wake.notify_one();
                        }
                    }
                    Ok(Err(e)) => {
                        store.failed_rounds.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "writing persistent messages failed; confirms are held back until it succeeds");
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
            stored: None,
        };
        let back = decode(7, &encode(&qm)).expect("decodes");
        assert_eq!(back.msg.body, qm.msg.body);
        assert_eq!(back.msg.exchange, "ex");
        assert_eq!(back.msg.routing_key, "rk");
        assert_eq!(back.msg.priority(), 3);
        assert_eq!(back.delivery_count, 2);
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

    fn sample(seq: u64) -> QueuedMessage {
        QueuedMessage {
            seq,
            msg: Message::new(
                "".into(),
                "q".into(),
                BasicProperties::default().with_delivery_mode(2),
                Bytes::from_static(b"body"),
            ),
            redelivered: false,
            deadline: None,
            delivery_count: 0,
            stored: None,
        }
    }

    fn recovered(dir: &std::path::Path, keep: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
        let store = Store::open(dir, 1 << 20).expect("reopen");
        let mut got = Vec::new();
        store
            .recover_messages(|q, qm| {
                got.push((q, qm.seq));
                keep(q)
            })
            .expect("recover");
        got
    }

    #[test]
    fn log_records_read_back_before_and_after_their_round() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let e0 = store.write_epoch();
        let a = store.put_message(1, &sample(0)).expect("put");
        let b = store.put_message(1, &sample(1)).expect("put");
        assert_eq!(store.write_epoch(), e0 + 2, "each put counts for confirms");
        assert_eq!(store.get_message(a, 0).expect("buffered").msg.body, "body");
        assert_eq!(store.sync_round().expect("round"), e0 + 2);
        assert_eq!(store.get_message(b, 1).expect("on file").msg.body, "body");
        assert_eq!(store.get_message(b, 1).expect("on file").stored, Some(b));
    }

    #[test]
    fn acked_and_unclaimed_records_do_not_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("open");
            let a = store.put_message(1, &sample(0)).expect("put");
            store.put_message(1, &sample(1)).expect("put");
            store.put_message(2, &sample(0)).expect("put");
            store.remove_message(a);
            // Dropping the store writes what is pending.
        }
        // Queue 2 is gone: its record is dropped at recovery.
        assert_eq!(recovered(dir.path(), |q| q == 1), vec![(1, 1), (2, 0)]);
        assert_eq!(recovered(dir.path(), |_| true), vec![(1, 1)]);
    }

    #[test]
    fn a_torn_tail_is_ignored_and_finished_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("open");
            store.put_message(7, &sample(3)).expect("put");
        }
        let seg = dir.path().join("messages").join("00000001.seg");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("segment");
        std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3]).expect("torn write");
        drop(f);
        assert_eq!(recovered(dir.path(), |_| true), vec![(7, 3)]);

        // Once its last record is acked, a segment that is no longer active is deleted.
        let store = Store::open(dir.path(), 1 << 20).expect("reopen");
        let mut locs = Vec::new();
        store
            .recover_messages(|_, qm| {
                locs.extend(qm.stored);
                true
            })
            .expect("recover");
        assert!(seg.exists());
        store.remove_message(locs[0]);
        store.sync_round().expect("round");
        store.sync_round().expect("round");
        assert!(!seg.exists(), "segment with no live record deleted");
    }

    #[test]
    fn a_format_1_dir_has_its_sled_messages_moved_into_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path().join("sled")).expect("sled");
            db.insert("format_version", "1").expect("version");
            let mut key = 4u64.to_be_bytes().to_vec();
            key.extend_from_slice(&11u64.to_be_bytes());
            db.open_tree("messages")
                .expect("tree")
                .insert(key, encode(&sample(11)))
                .expect("record");
            db.flush().expect("flush");
        }
        assert_eq!(recovered(dir.path(), |_| true), vec![(4, 11)]);
        // Now in the log (and no longer in sled): still there on the next start.
        assert_eq!(recovered(dir.path(), |_| true), vec![(4, 11)]);
        let store = Store::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.msgs.len(), 0);
        assert_eq!(
            store.db.get("format_version").expect("get").as_deref(),
            Some(&b"2"[..])
        );
    }
}
