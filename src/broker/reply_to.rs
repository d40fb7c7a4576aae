//! Direct reply-to: a requester consumes (no-ack) from the pseudo-queue
//! `amq.rabbitmq.reply-to` and publishes requests with that `reply_to`; the broker rewrites
//! the property to `amq.rabbitmq.reply-to.<token>`, and a reply published to the default
//! exchange with that routing key goes straight to the requester's channel: no queue, no
//! ack, nothing kept if the requester is gone.
//!
//! The token is random (132 bits, URL-safe) and only means something through the vhost's
//! registry, which maps it to the live reply consumer; cancelling the consumer or closing
//! its channel removes the entry, so a later reply to that name is dropped.

use super::delivery::ChannelShared;
use super::message::Message;
use crate::protocol::encode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The pseudo-queue a reply consumer consumes from, and the `reply_to` value a requester
/// publishes with.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Prefix of the rewritten `reply_to` names (and so of the replies' routing keys).
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel's consumer of its direct replies.
pub struct ReplyConsumer {
    /// The consumer tag deliveries carry.
    pub tag: String,
    /// The full `amq.rabbitmq.reply-to.<token>` name requests are rewritten to.
    pub name: String,
    pub channel: Arc<ChannelShared>,
}

impl ReplyConsumer {
    pub fn new(tag: String, channel: Arc<ChannelShared>) -> Arc<Self> {
        Arc::new(ReplyConsumer {
            tag,
            name: crate::channel::generated_name(REPLY_TO_PREFIX),
            channel,
        })
    }

    /// Write a reply to the requester as a basic.deliver with the reply's own (raw)
    /// properties, exchange "" and the full reply-to name as routing key. Nothing is
    /// recorded as unacked: reply consumers are no-ack. False if the channel is closed.
    pub fn deliver(&self, msg: &Message) -> bool {
        let ch = &self.channel;
        if ch.closed.load(Ordering::Acquire) {
            return false;
        }
        // The delivery tag comes from the channel's sequence, shared with its other
        // consumers, so tags stay unique on the channel.
        let mut d = ch.deliveries.lock();
        d.last_tag += 1;
        let tag = d.last_tag;
        let frame_max = ch.conn.frame_max();
        ch.conn.out.write(|buf| {
            encode::deliver(buf, ch.id, frame_max, &self.tag, tag, false, &msg.content())
        });
        true
    }
}
