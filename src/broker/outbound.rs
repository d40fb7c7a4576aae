//! The outbound side of a connection: one buffer that any task may append encoded frames to
//! (replies, deliveries from whichever task published), which the connection's writer task
//! (connection/writer.rs) swaps out and writes with one syscall per batch. It also carries socket backpressure: past the
//! high watermark consumers on this connection are skipped, and the queues that skipped
//! them are re-dispatched once the writer has drained the buffer.

use crate::broker::queue::Queue;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

pub struct Outbound {
    buf: Mutex<BytesMut>,
    /// Bytes waiting in `buf`, readable without the lock.
    pending: AtomicUsize,
    /// Bytes and write calls sent so far (management's `send_oct`, `send_cnt`).
    pub send_oct: AtomicU64,
    pub send_cnt: AtomicU64,
    high_watermark: usize,
    /// Wakes the writer task.
    wake: Notify,
    /// Wakes a reader paused because its own replies are not being read.
    drained: Notify,
    /// Queues that skipped a consumer here because the buffer was full.
    waiting: Mutex<Vec<Weak<Queue>>>,
    /// No more frames are accepted; the writer flushes what it has and stops.
    closing: AtomicBool,
}

impl Outbound {
    pub fn new(high_watermark: usize) -> Self {
        Outbound {
            // Grows with use; an idle connection keeps only what its handshake needed.
            buf: Mutex::new(BytesMut::new()),
            pending: AtomicUsize::new(0),
            send_oct: AtomicU64::new(0),
            send_cnt: AtomicU64::new(0),
            high_watermark,
            wake: Notify::new(),
            drained: Notify::new(),
            waiting: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        }
    }

    /// Append frames and wake the writer.
    pub fn write(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = self.buf.lock();
        f(&mut buf);
        self.pending.store(buf.len(), Ordering::Relaxed);
        drop(buf);
        self.wake.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn is_congested(&self) -> bool {
        self.pending() > self.high_watermark
    }

    /// Ask to be re-dispatched once this connection's buffer drains.
    pub fn wait_for_drain(&self, queue: &Arc<Queue>) {
        let mut w = self.waiting.lock();
        if !w.iter().any(|x| x.as_ptr() == Arc::as_ptr(queue)) {
            w.push(Arc::downgrade(queue));
        }
    }

    /// Wait until the buffer is below the high watermark (reader-side backpressure).
    pub async fn room(&self) {
        while self.is_congested() && !self.is_closing() {
            let notified = self.drained.notified();
            if !self.is_congested() {
                break;
            }
            notified.await;
        }
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Wait until frames are written to the buffer (or it is closed).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    /// Idle connection: queue a heartbeat frame unless something else is pending.
    pub(crate) fn heartbeat_if_idle(&self) {
        let mut buf = self.buf.lock();
        if buf.is_empty() {
            crate::protocol::encode::heartbeat(&mut buf);
            self.pending.store(buf.len(), Ordering::Relaxed);
        }
    }

    /// Swap the pending frames into `into` (which must be empty).
    pub(crate) fn take(&self, into: &mut BytesMut) {
        let mut buf = self.buf.lock();
        std::mem::swap(&mut *buf, into);
        self.pending.store(0, Ordering::Relaxed);
    }

    /// After a write: release paused readers and re-dispatch queues waiting on us.
    pub(crate) fn after_write(&self) {
        if self.is_congested() {
            return;
        }
        self.drained.notify_waiters();
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for q in waiting.iter().filter_map(Weak::upgrade) {
            q.dispatch();
        }
    }
}
