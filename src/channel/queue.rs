//! queue.* methods.

use super::{Channel, ChannelCtx};
use crate::broker::reply_to::{REPLY_TO, REPLY_TO_PREFIX};
use crate::broker::vhost::QueueDeclare;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{short, AMQPClass};
use amq_protocol::protocol::queue::{self as q, AMQPMethod};
use rand::Rng;

/// A server-generated queue name, `amq.gen-` and 22 URL-safe random characters.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let tail: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Is `name` the direct reply-to pseudo-queue or a live reply-to name? A dead reply-to
/// name is a 404, as for any missing queue.
fn is_reply_to_name(ctx: &ChannelCtx<'_>, name: &str) -> AmqpResult<bool> {
    if name == REPLY_TO {
        return Ok(true);
    }
    if !name.starts_with(REPLY_TO_PREFIX) {
        return Ok(false);
    }
    if ctx.vhost.reply_consumers.contains_key(name) {
        Ok(true)
    } else {
        Err(AmqpError::not_found(format!(
            "no queue '{name}' in vhost '{}'",
            ctx.vhost.name
        )))
    }
}

impl Channel {
    pub(super) fn queue_method(&mut self, ctx: &ChannelCtx<'_>, m: AMQPMethod) -> AmqpResult<()> {
        let conn_id = ctx.conn.id;
        match m {
            AMQPMethod::Declare(d) => {
                let server_named = d.queue.as_str().is_empty() && !d.passive;
                let name = if server_named {
                    generated_name("amq.gen-")
                } else {
                    self.queue_name(d.queue.as_str())?
                };
                ctx.access.queue_declare(&name, d.passive, &d.arguments)?;
                if d.passive && is_reply_to_name(ctx, &name)? {
                    // The pseudo-queue (and a live reply-to name) always exists, empty.
                    if !d.nowait {
                        self.send(
                            ctx,
                            AMQPClass::Queue(AMQPMethod::DeclareOk(q::DeclareOk {
                                queue: short(&name),
                                message_count: 0,
                                consumer_count: 0,
                            })),
                        );
                    }
                    return Ok(());
                }
                let mut declare = QueueDeclare {
                    name: name.clone(),
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                    server_named,
                };
                ctx.broker.apply_default_queue_type(ctx.vhost, &mut declare);
                let (queue, _created) = ctx.vhost.declare_queue(declare, conn_id)?;
                self.last_queue = Some(name.clone());
                if !d.nowait {
                    let (message_count, consumer_count) = queue.counts();
                    self.send(
                        ctx,
                        AMQPClass::Queue(AMQPMethod::DeclareOk(q::DeclareOk {
                            queue: short(&name),
                            message_count,
                            consumer_count,
                        })),
                    );
                }
                Ok(())
            }
            AMQPMethod::Bind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                ctx.access.queue_bind(&name, b.exchange.as_str())?;
                ctx.check_binding_key(b.exchange.as_str(), b.routing_key.as_str())?;
                ctx.vhost.bind_queue(
                    &name,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                if !b.nowait {
                    self.send(ctx, AMQPClass::Queue(AMQPMethod::BindOk(q::BindOk {})));
                }
                Ok(())
            }
            AMQPMethod::Unbind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                ctx.access.queue_bind(&name, b.exchange.as_str())?;
                ctx.check_binding_key(b.exchange.as_str(), b.routing_key.as_str())?;
                ctx.vhost.unbind_queue(
                    &name,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                    conn_id,
                )?;
                self.send(ctx, AMQPClass::Queue(AMQPMethod::UnbindOk(q::UnbindOk {})));
                Ok(())
            }
            AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                ctx.access.read_queue(&name)?;
                let queue = ctx.vhost.queue(&name, conn_id)?;
                let message_count = queue.purge();
                if !p.nowait {
                    self.send(
                        ctx,
                        AMQPClass::Queue(AMQPMethod::PurgeOk(q::PurgeOk { message_count })),
                    );
                }
                Ok(())
            }
            AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str())?;
                ctx.access.configure_queue(&name)?;
                let removed = ctx
                    .vhost
                    .delete_queue(&name, d.if_unused, d.if_empty, conn_id)?;
                if !d.nowait {
                    self.send(
                        ctx,
                        AMQPClass::Queue(AMQPMethod::DeleteOk(q::DeleteOk {
                            message_count: removed.message_count,
                        })),
                    );
                }
                // The consumers' basic.cancel notifications follow the delete-ok.
                drop(removed);
                Ok(())
            }
            _ => Err(AmqpError::command_invalid(
                "queue method not sent by clients",
            )),
        }
    }
}
