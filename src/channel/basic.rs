//! basic.* methods: publish (with content assembly in mod.rs), consume/cancel, qos, get,
//! ack/nack/reject, recover.

use super::{requeue_grouped, Channel, ChannelCtx, Mode, PendingPublish, TxAck, TxPublish};
use crate::broker::args;
use crate::broker::delivery::{Consumer, Unacked};
use crate::broker::message::{parse_expiration, Message, QueuedMessage};
use crate::broker::queue::{Enqueued, Queue};
use crate::broker::reply_to::{ReplyConsumer, REPLY_TO, REPLY_TO_PREFIX};
use crate::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::{encode, short, AMQPClass, BasicProperties};
use amq_protocol::protocol::basic::{self as b, AMQPMethod};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

impl Channel {
    pub(super) fn basic_method(&mut self, ctx: &ChannelCtx<'_>, m: AMQPMethod) -> AmqpResult<()> {
        match m {
            AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                ctx.access
                    .publish(p.exchange.as_str(), p.routing_key.as_str(), || {
                        ctx.vhost.is_topic_exchange(p.exchange.as_str())
                    })?;
                self.content.start(PendingPublish {
                    exchange: p.exchange.as_str().to_string(),
                    routing_key: p.routing_key.as_str().to_string(),
                    mandatory: p.mandatory,
                });
                Ok(())
            }
            AMQPMethod::Consume(c) => self.consume(ctx, c),
            AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str();
                if self.reply.as_ref().is_some_and(|r| r.tag == tag) {
                    if let Some(r) = self.reply.take() {
                        ctx.vhost.reply_consumers.remove(&r.name);
                    }
                } else if let Some((consumer, queue)) = self.consumers.remove(tag) {
                    if queue.remove_consumer(&consumer) {
                        ctx.vhost.remove_queue(&queue);
                    }
                }
                if !c.nowait {
                    self.send(
                        ctx,
                        AMQPClass::Basic(AMQPMethod::CancelOk(b::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            AMQPMethod::Qos(q) => {
                if q.global {
                    self.shared
                        .global_prefetch
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                } else {
                    self.consumer_prefetch = q.prefetch_count as u32;
                    self.shared
                        .consumer_prefetch
                        .store(self.consumer_prefetch, Ordering::Relaxed);
                }
                self.send(ctx, AMQPClass::Basic(AMQPMethod::QosOk(b::QosOk {})));
                // A raised limit may let waiting messages through.
                self.dispatch_consumed_queues();
                Ok(())
            }
            AMQPMethod::Get(g) => {
                let name = self.queue_name(g.queue.as_str())?;
                ctx.access.read_queue(&name)?;
                let queue = ctx.vhost.queue(&name, ctx.conn.id)?;
                queue.check_available()?;
                if !queue.get(&self.shared, g.no_ack) {
                    self.send(ctx, AMQPClass::Basic(AMQPMethod::GetEmpty(b::GetEmpty {})));
                }
                Ok(())
            }
            AMQPMethod::Ack(a) => {
                let taken = self.shared.take(a.delivery_tag, a.multiple)?;
                crate::broker::queue::stats::count_acks(&taken);
                self.settle(taken, None);
                Ok(())
            }
            AMQPMethod::Nack(n) => {
                let taken = self.shared.take(n.delivery_tag, n.multiple)?;
                self.settle(taken, Some(n.requeue));
                Ok(())
            }
            AMQPMethod::Reject(r) => {
                let taken = self.shared.take(r.delivery_tag, false)?;
                self.settle(taken, Some(r.requeue));
                Ok(())
            }
            // Redelivering to the same channel without requeueing is what requeue=false
            // would mean; RabbitMQ does not implement it and closes the connection 540.
            AMQPMethod::Recover(r) if !r.requeue => {
                Err(AmqpError::not_implemented("requeue=false"))
            }
            AMQPMethod::RecoverAsync(r) if !r.requeue => {
                Err(AmqpError::not_implemented("requeue=false"))
            }
            AMQPMethod::Recover(_) => {
                self.recover();
                self.send(
                    ctx,
                    AMQPClass::Basic(AMQPMethod::RecoverOk(b::RecoverOk {})),
                );
                Ok(())
            }
            AMQPMethod::RecoverAsync(_) => {
                self.recover();
                Ok(())
            }
            _ => Err(AmqpError::command_invalid(
                "basic method not sent by clients",
            )),
        }
    }

    /// basic.recover: everything unacked goes back to its queue, redelivered.
    fn recover(&mut self) {
        requeue_grouped(self.shared.take_all());
        self.dispatch_consumed_queues();
    }

    /// Apply an ack (reject = None) or nack/reject, or hold it in a transaction.
    fn settle(&mut self, taken: Vec<Unacked>, reject: Option<bool>) {
        if let Mode::Tx { acks, .. } = &mut self.mode {
            acks.push(TxAck { taken, reject });
            self.note_uncommitted();
            return;
        }
        apply_settle(taken, reject);
        self.dispatch_consumed_queues();
    }

    fn consume(&mut self, ctx: &ChannelCtx<'_>, c: b::Consume) -> AmqpResult<()> {
        if c.queue.as_str() == REPLY_TO {
            return self.consume_replies(ctx, c);
        }
        let name = self.queue_name(c.queue.as_str())?;
        ctx.access.read_queue(&name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn.id)?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            super::queue::generated_name("amq.ctag-")
        } else {
            c.consumer_tag.as_str().to_string()
        };
        self.check_tag_free(&tag)?;
        if self.consumers.len() >= ctx.broker.config.max_consumers_per_channel {
            return Err(AmqpError::new(
                ReplyCode::ResourceError,
                format!(
                    "too many consumers on channel {} (max {})",
                    self.id(),
                    ctx.broker.config.max_consumers_per_channel
                ),
            ));
        }
        let priority = match args::get(&c.arguments, "x-priority") {
            None => 0,
            Some(v) => args::int_value(v)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    AmqpError::precondition("invalid arg 'x-priority': must be an integer")
                })?,
        };
        let timeout_ms = match args::get(&c.arguments, "x-consumer-timeout") {
            Some(v) => match args::int_value(v) {
                Some(ms) if ms >= 0 => ms as u64,
                _ => {
                    return Err(AmqpError::precondition(
                        "invalid arg 'x-consumer-timeout': must be a non-negative integer",
                    ))
                }
            },
            None => queue
                .args
                .load()
                .consumer_timeout
                .unwrap_or(ctx.broker.config.consumer_timeout),
        };
        let consumer = Arc::new(Consumer {
            timeout: (timeout_ms > 0).then(|| std::time::Duration::from_millis(timeout_ms)),
            tag: tag.clone(),
            channel: self.shared.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority,
            prefetch: self.consumer_prefetch,
            unacked: AtomicU32::new(0),
            active: AtomicBool::new(true),
            arguments: c.arguments,
        });
        let (id, nowait) = (self.id(), c.nowait);
        let conn = ctx.conn.clone();
        let reply_tag = tag.clone();
        queue.add_consumer(consumer.clone(), move || {
            if !nowait {
                conn.send(
                    id,
                    AMQPClass::Basic(AMQPMethod::ConsumeOk(b::ConsumeOk {
                        consumer_tag: short(&reply_tag),
                    })),
                );
            }
        })?;
        self.consumers.insert(tag, (consumer, queue));
        Ok(())
    }

    /// 530 if `tag` names a live consumer of this channel (its reply consumer included).
    fn check_tag_free(&self, tag: &str) -> AmqpResult<()> {
        let in_use = self
            .consumers
            .get(tag)
            .is_some_and(|(c, _)| c.active.load(Ordering::Acquire))
            || self.reply.as_ref().is_some_and(|r| r.tag == tag);
        if in_use {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        Ok(())
    }

    /// basic.consume from `amq.rabbitmq.reply-to`: the channel's one reply consumer, no-ack
    /// only (replies are never stored, so there is nothing to acknowledge or redeliver).
    fn consume_replies(&mut self, ctx: &ChannelCtx<'_>, c: b::Consume) -> AmqpResult<()> {
        if !c.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        if self.reply.is_some() {
            return Err(AmqpError::precondition("reply consumer already set"));
        }
        let tag = if c.consumer_tag.as_str().is_empty() {
            super::queue::generated_name("amq.ctag-")
        } else {
            c.consumer_tag.as_str().to_string()
        };
        self.check_tag_free(&tag)?;
        let reply = ReplyConsumer::new(tag.clone(), self.shared.clone());
        ctx.vhost
            .reply_consumers
            .insert(reply.name.clone(), reply.clone());
        self.reply = Some(reply);
        if !c.nowait {
            self.send(
                ctx,
                AMQPClass::Basic(AMQPMethod::ConsumeOk(b::ConsumeOk {
                    consumer_tag: short(&tag),
                })),
            );
        }
        Ok(())
    }

    /// A request with `reply_to = amq.rabbitmq.reply-to` gets this channel's reply-to name
    /// instead (properties re-encoded); without a reply consumer it is a 406. Other
    /// messages are left as they came (None).
    fn rewrite_reply_to(
        &self,
        properties: &BasicProperties,
    ) -> AmqpResult<Option<BasicProperties>> {
        if properties.reply_to().as_ref().map(|r| r.as_str()) != Some(REPLY_TO) {
            return Ok(None);
        }
        let Some(reply) = &self.reply else {
            return Err(AmqpError::precondition("fast reply consumer does not exist").at(60, 40));
        };
        Ok(Some(properties.clone().with_reply_to(short(&reply.name))))
    }

    /// A complete message arrived: route it, deliver it, and account for confirms.
    pub(super) fn publish(
        &mut self,
        ctx: &ChannelCtx<'_>,
        publish: PendingPublish,
        properties: BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> AmqpResult<()> {
        let exchange = ctx.vhost.exchange(&publish.exchange)?;
        if exchange.spec.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                publish.exchange, ctx.vhost.name
            ))
            .at(60, 40));
        }
        if let Some(uid) = properties.user_id() {
            if uid.as_str() != ctx.user && !ctx.access.impersonator {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    uid.as_str(),
                    ctx.user
                ))
                .at(60, 40));
            }
        }
        parse_expiration(&properties).map_err(|e| AmqpError::precondition(e).at(60, 40))?;
        if let Some(headers) = properties.headers() {
            for key in ["CC", "BCC"] {
                match headers.inner().get(key) {
                    None | Some(crate::protocol::AMQPValue::FieldArray(_)) => {}
                    Some(other) => {
                        return Err(AmqpError::precondition(format!(
                            "unacceptable type in header '{key}': {}",
                            crate::broker::args::type_name(other)
                        ))
                        .at(60, 40))
                    }
                }
            }
        }
        let msg = match self.rewrite_reply_to(&properties)? {
            Some(rewritten) => Message::new(
                publish.exchange.clone(),
                publish.routing_key.clone(),
                rewritten,
                body,
            ),
            None => Message::from_wire(
                publish.exchange.clone(),
                publish.routing_key.clone(),
                properties,
                raw_properties,
                body,
            ),
        };
        if let Mode::Tx { publishes, .. } = &mut self.mode {
            publishes.push(TxPublish { publish, msg });
            self.note_uncommitted();
            return Ok(());
        }
        let routed = self.route_and_deliver(ctx, &exchange, &publish, msg);
        if let Mode::Confirm(c) = &mut self.mode {
            c.last_seq += 1;
            if routed.persisted || routed.rejected {
                let epoch = match (&ctx.broker.store, routed.persisted) {
                    (Some(store), true) => {
                        store.request_flush();
                        store.write_epoch()
                    }
                    _ => 0,
                };
                c.pending.push_back(super::PendingConfirm {
                    seq: c.last_seq,
                    epoch,
                    quorum: None,
                    nack: routed.rejected,
                });
            }
            for w in self.quorum_waits.drain(..) {
                c.pending.push_back(super::PendingConfirm {
                    seq: c.last_seq,
                    epoch: 0,
                    quorum: Some(w),
                    nack: false,
                });
            }
        }
        // Without confirms nothing waits for the quorum queues.
        self.quorum_waits.clear();
        Ok(())
    }

    /// Route a message to its queues; return it to the publisher if mandatory and
    /// unroutable.
    pub(super) fn route_and_deliver(
        &mut self,
        ctx: &ChannelCtx<'_>,
        exchange: &Arc<crate::broker::exchange::Exchange>,
        publish: &PendingPublish,
        mut msg: Arc<Message>,
    ) -> Routed {
        if exchange.name().is_empty() && publish.routing_key.starts_with(REPLY_TO_PREFIX) {
            return self.deliver_reply(ctx, publish, &msg);
        }
        if let Some(held) = ctx.vhost.hold_delayed(exchange, &msg) {
            // Routed when the delay ends; as in the plugin, never returned now.
            ctx.conn.published.fetch_add(1, Ordering::Relaxed);
            return Routed {
                rejected: false,
                persisted: held.persisted,
            };
        }
        // The routing result buffer is reused across publishes to avoid an allocation each.
        let mut queues = std::mem::take(&mut self.route_buf);
        ctx.conn.published.fetch_add(1, Ordering::Relaxed);
        ctx.vhost.route_publish(exchange, &mut msg, &mut queues);
        let mut delivered = false;
        let mut rejected = false;
        let mut persisted = false;
        for q in queues.drain(..) {
            match q.publish(msg.clone()) {
                Enqueued::Accepted => {
                    delivered = true;
                    persisted |= q.persists(&msg);
                    self.quorum_waits.extend(q.confirm_ticket());
                }
                Enqueued::Rejected => {
                    delivered = true;
                    rejected = true;
                }
                Enqueued::Gone => {}
            }
        }
        self.route_buf = queues;
        if !delivered && publish.mandatory {
            self.return_unroutable(ctx, &msg);
        }
        Routed {
            rejected,
            persisted,
        }
    }

    /// A reply (default exchange, `amq.rabbitmq.reply-to.<token>` key) goes straight to the
    /// requester's reply consumer, and counts as routed. A dead or unknown token drops it,
    /// returned if mandatory.
    fn deliver_reply(
        &mut self,
        ctx: &ChannelCtx<'_>,
        publish: &PendingPublish,
        msg: &Message,
    ) -> Routed {
        ctx.conn.published.fetch_add(1, Ordering::Relaxed);
        let target = ctx
            .vhost
            .reply_consumers
            .get(&publish.routing_key)
            .map(|r| r.clone());
        let delivered = target.is_some_and(|r| r.deliver(msg));
        if !delivered {
            tracing::debug!(reply_to = %publish.routing_key, "reply to a dead reply-to name dropped");
            if publish.mandatory {
                self.return_unroutable(ctx, msg);
            }
        }
        Routed {
            rejected: false,
            persisted: false,
        }
    }

    fn return_unroutable(&self, ctx: &ChannelCtx<'_>, msg: &Message) {
        let (id, frame_max) = (self.id(), ctx.conn.frame_max());
        ctx.conn.out.write(|buf| {
            encode::basic_return(
                buf,
                id,
                frame_max,
                ReplyCode::NoRoute as u16,
                "NO_ROUTE",
                &msg.content(),
            )
        });
    }
}

/// What happened to a published message.
pub(super) struct Routed {
    /// A queue refused it (overflow reject-publish, store failure): confirm with a nack.
    pub rejected: bool,
    /// A durable queue stored it: confirm only after the store flushed.
    pub persisted: bool,
}

/// Ack (reject = None), or nack/reject with requeue, or without (dead-letter or drop).
pub(super) fn apply_settle(taken: Vec<Unacked>, reject: Option<bool>) {
    match reject {
        Some(true) => requeue_grouped(taken),
        Some(false) => {
            let mut groups: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
            for u in taken {
                match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                    Some((_, msgs)) => msgs.push(u.msg),
                    None => groups.push((u.queue, vec![u.msg])),
                }
            }
            for (q, msgs) in groups {
                q.reject(msgs);
            }
        }
        None => {
            for u in taken {
                u.queue.forget(&u.msg);
            }
        }
    }
}
