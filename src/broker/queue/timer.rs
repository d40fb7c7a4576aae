//! One timer task per queue that needs one (message deadlines, x-expires), sleeping until
//! the earliest wake-up: never a task or timer per message.

use super::{Queue, QueueInner};
use crate::broker::dead_letter::DeathReason;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

impl Queue {
    /// Make sure the timer will wake at `deadline` or earlier.
    pub(super) fn arm(self: &Arc<Self>, inner: &mut QueueInner, deadline: Instant) {
        if inner.armed.is_some_and(|a| a <= deadline) {
            return;
        }
        inner.armed = Some(deadline);
        self.ensure_timer();
    }

    pub(super) fn ensure_timer(self: &Arc<Self>) {
        if self.timer_started.swap(true, Ordering::AcqRel) {
            self.timer.notify_one();
            return;
        }
        let weak = Arc::downgrade(self);
        let notify = self.timer.clone();
        tokio::spawn(async move {
            loop {
                // Hold no strong reference while sleeping, so a dropped queue ends the task.
                let next = match weak.upgrade() {
                    Some(q) if !q.is_deleted() => q.next_wakeup(),
                    _ => return,
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = notify.notified() => continue,
                        }
                    }
                    None => {
                        notify.notified().await;
                        continue;
                    }
                }
                match weak.upgrade() {
                    Some(q) if !q.is_deleted() => q.on_timer(),
                    _ => return,
                }
            }
        });
    }

    /// When the timer must wake next: the earliest message deadline, or the moment an
    /// unused queue with x-expires is due.
    fn next_wakeup(&self) -> Option<Instant> {
        let mut inner = self.inner.lock();
        let mut next = inner.ready.next_deadline();
        if let Some(expires) = self.args.load().expires {
            if inner.consumers.is_empty() {
                let at = inner.last_used + expires;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        inner.armed = next;
        next
    }

    fn on_timer(self: &Arc<Self>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let unused = {
            let mut inner = self.inner.lock();
            inner.ready.take_expired(now, &mut expired);
            self.args
                .load()
                .expires
                .is_some_and(|e| inner.consumers.is_empty() && now >= inner.last_used + e)
        };
        self.dead_letter(
            expired
                .into_iter()
                .map(|m| (m, DeathReason::Expired))
                .collect(),
        );
        if unused {
            if let Some(vhost) = self.vhost.upgrade() {
                tracing::debug!(queue = self.name(), "deleting unused queue (x-expires)");
                vhost.remove_queue(self);
            }
        }
    }
}
