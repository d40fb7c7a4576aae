//! At-least-once dead-lettering for quorum queues (`x-dead-letter-strategy: at-least-once`
//! with `x-overflow: reject-publish`, as RabbitMQ has it since 3.10).
//!
//! A message that dies in such a queue is not settled: the group's log marks it dead (with
//! its reason) and it stays in the state machine, out of the ready list. A worker task
//! republishes it to the dead-letter exchange's targets and settles it in the source only
//! once every target has it for good: a classic target's store has flushed it, a quorum
//! target's group has applied it. When the exchange is missing, nothing is bound, or a
//! target refuses it (full with reject-publish, down), the message stays and the worker
//! tries again later, to the targets that do not have it yet. A broker killed in between
//! finds the dead messages in the log at restart and the worker starts over: a target may
//! get a message twice, none loses one.

use super::quorum::Quorum;
use super::{Enqueued, Queue};
use crate::broker::dead_letter::{dead_message, dead_targets, DeadRoute, DeathReason};
use crate::broker::message::{Message, QueuedMessage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a round waits before it tries the messages no target took again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Upper bound on waiting for the targets to make a round durable.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

/// A message dead-lettered at least once, on its way to the targets.
pub struct DeadPending {
    qm: QueuedMessage,
    reason: DeathReason,
    /// The dead-lettered copy (x-death added), built on the first attempt.
    msg: Option<Arc<Message>>,
    /// Targets that accepted it already (not sent to again on a retry).
    accepted: Vec<String>,
}

impl DeadPending {
    pub fn new(qm: QueuedMessage, reason: DeathReason) -> Self {
        DeadPending {
            qm,
            reason,
            msg: None,
            accepted: Vec::new(),
        }
    }

    pub fn body_len(&self) -> u64 {
        self.qm.msg.body.len() as u64
    }
}

impl Quorum {
    /// Dead-letter messages at least once: marked dead in the log now, settled when every
    /// target has them.
    pub fn dead_letter_later(self: &Arc<Self>, dead: Vec<(QueuedMessage, DeathReason)>) {
        self.with_pending(|p| {
            p.dead
                .extend(dead.iter().map(|(qm, reason)| (qm.seq, reason.code())))
        });
        self.dlx_count.fetch_add(dead.len(), Ordering::AcqRel);
        let bytes: u64 = dead.iter().map(|(qm, _)| qm.msg.body.len() as u64).sum();
        self.dlx_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.dlx.lock().extend(
            dead.into_iter()
                .map(|(qm, reason)| DeadPending::new(qm, reason)),
        );
        self.kick_dlx();
    }

    /// Dead-lettered messages waiting for their targets (the management API's
    /// `messages_dlx`).
    pub fn dead_letter_pending(&self) -> usize {
        self.dlx_count.load(Ordering::Acquire)
    }

    /// Body bytes of those messages (`message_bytes_dlx`).
    pub fn dead_letter_bytes(&self) -> u64 {
        self.dlx_bytes.load(Ordering::Acquire)
    }

    /// Start the worker, or wake it if it runs.
    pub(super) fn kick_dlx(self: &Arc<Self>) {
        if self.dlx_running.swap(true, Ordering::AcqRel) {
            self.dlx_wake.notify_one();
            return;
        }
        let q = self.clone();
        tokio::spawn(async move { q.dlx_worker().await });
    }

    /// New dead messages go out at once; the ones no target took wait here (not in `dlx`)
    /// until their retry time, so a stream of new deaths does not resend them each time.
    async fn dlx_worker(self: Arc<Self>) {
        let mut waiting: Vec<DeadPending> = Vec::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if self.closed.load(Ordering::Acquire) {
                // Stopping: what is left is in the log and resumes at the next start.
                self.dlx_running.store(false, Ordering::Release);
                return;
            }
            let mut batch = std::mem::take(&mut *self.dlx.lock());
            if retry_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                batch.append(&mut waiting);
                retry_at = None;
            }
            if batch.is_empty() {
                if let Some(at) = retry_at {
                    let _ = tokio::time::timeout_at(at, self.dlx_wake.notified()).await;
                    continue;
                }
                self.dlx_running.store(false, Ordering::Release);
                // A message may have come in between the take and the flag.
                if self.dlx.lock().is_empty() || self.dlx_running.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let mut retry = self.dead_letter_round(batch).await;
            if !retry.is_empty() {
                tracing::debug!(
                    group = self.group,
                    messages = retry.len(),
                    "dead-lettered messages not taken by every target; retrying"
                );
                waiting.append(&mut retry);
                retry_at.get_or_insert_with(|| tokio::time::Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// Send each message to the targets that lack it, wait until they hold what they took
    /// for good, settle the messages every target has; returns the others.
    async fn dead_letter_round(&self, batch: Vec<DeadPending>) -> Vec<DeadPending> {
        let Some(queue) = self.queue.get().and_then(Weak::upgrade) else {
            return Vec::new();
        };
        if queue.is_deleted() {
            return Vec::new();
        }
        let Some(vhost) = queue.vhost.upgrade() else {
            return batch;
        };
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        let mut epoch = 0u64;
        let mut tickets: Vec<(Arc<AtomicU64>, u64)> = Vec::new();
        let mut complete = Vec::new();
        let mut retry = Vec::new();
        for mut p in batch {
            if p.msg.is_none() {
                p.msg = dead_message(&queue, &p.qm.msg, p.reason);
            }
            // The dead-letter exchange was taken away (a policy change): nothing to do.
            let Some(msg) = p.msg.clone() else {
                complete.push(p);
                continue;
            };
            let done = match dead_targets(&vhost, &msg, p.reason, &mut targets) {
                DeadRoute::NoExchange => false,
                DeadRoute::Held => true,
                DeadRoute::Routed { cycles } => {
                    // Routed only back into a cycle: dropped, as RabbitMQ does.
                    let mut done = !targets.is_empty() || !p.accepted.is_empty() || cycles > 0;
                    for t in targets.drain(..) {
                        if p.accepted.iter().any(|n| n == t.name()) {
                            continue;
                        }
                        match t.publish(msg.clone()) {
                            Enqueued::Accepted => {
                                if t.persists(&msg) {
                                    if let Some(store) = &self.store {
                                        epoch = epoch.max(store.write_epoch());
                                    }
                                }
                                tickets.extend(t.confirm_ticket());
                                p.accepted.push(t.name().to_string());
                            }
                            Enqueued::Rejected | Enqueued::Gone => done = false,
                        }
                    }
                    done
                }
            };
            if done {
                complete.push(p);
            } else {
                retry.push(p);
            }
        }
        if !self.targets_durable(epoch, &tickets).await {
            // Not known to be durable: everything goes round again, to every target (one may
            // get a message twice, which at-least-once allows).
            retry.append(&mut complete);
            for p in &mut retry {
                p.accepted.clear();
            }
            return retry;
        }
        if !complete.is_empty() {
            self.dlx_count.fetch_sub(complete.len(), Ordering::AcqRel);
            let bytes: u64 = complete.iter().map(|p| p.qm.msg.body.len() as u64).sum();
            self.dlx_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.settle_all(complete.iter().map(|p| p.qm.seq).collect());
        }
        retry
    }

    /// Wait (bounded) until the classic store has flushed `epoch` and every quorum target
    /// has applied its ticket.
    async fn targets_durable(&self, epoch: u64, tickets: &[(Arc<AtomicU64>, u64)]) -> bool {
        let wait = async {
            if epoch > 0 {
                if let Some(store) = &self.store {
                    store.wait_flushed(epoch).await;
                }
            }
            let mut applied = self.node.applied.subscribe();
            while !tickets
                .iter()
                .all(|(committed, t)| committed.load(Ordering::Acquire) >= *t)
            {
                if applied.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(DURABLE_WAIT, wait)
            .await
            .unwrap_or(false)
    }
}
