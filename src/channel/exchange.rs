//! exchange.* methods.

use super::{Channel, ChannelCtx};
use crate::broker::exchange::{ExchangeSpec, ExchangeType};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::AMQPClass;
use amq_protocol::protocol::exchange::{self as ex, AMQPMethod};

impl Channel {
    pub(super) fn exchange_method(
        &mut self,
        ctx: &ChannelCtx<'_>,
        m: AMQPMethod,
    ) -> AmqpResult<()> {
        match m {
            AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str().to_string();
                ctx.access
                    .exchange_declare(&name, d.passive, &d.arguments)?;
                let kind = if d.passive {
                    // Passive declares do not look at the type.
                    ExchangeType::Direct
                } else {
                    ExchangeType::declared(d.kind.as_str(), &d.arguments)?
                };
                ctx.vhost.declare_exchange(
                    ExchangeSpec {
                        name,
                        kind,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: d.arguments,
                    },
                    d.passive,
                )?;
                if !d.nowait {
                    self.send(
                        ctx,
                        AMQPClass::Exchange(AMQPMethod::DeclareOk(ex::DeclareOk {})),
                    );
                }
                Ok(())
            }
            AMQPMethod::Delete(d) => {
                ctx.access.configure_exchange(d.exchange.as_str())?;
                ctx.vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    self.send(
                        ctx,
                        AMQPClass::Exchange(AMQPMethod::DeleteOk(ex::DeleteOk {})),
                    );
                }
                Ok(())
            }
            AMQPMethod::Bind(b) => {
                ctx.access
                    .exchange_bind(b.destination.as_str(), b.source.as_str())?;
                ctx.check_binding_key(b.source.as_str(), b.routing_key.as_str())?;
                ctx.vhost.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                if !b.nowait {
                    self.send(ctx, AMQPClass::Exchange(AMQPMethod::BindOk(ex::BindOk {})));
                }
                Ok(())
            }
            AMQPMethod::Unbind(b) => {
                ctx.access
                    .exchange_bind(b.destination.as_str(), b.source.as_str())?;
                ctx.check_binding_key(b.source.as_str(), b.routing_key.as_str())?;
                ctx.vhost.unbind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                if !b.nowait {
                    self.send(
                        ctx,
                        AMQPClass::Exchange(AMQPMethod::UnbindOk(ex::UnbindOk {})),
                    );
                }
                Ok(())
            }
            _ => Err(AmqpError::command_invalid(
                "exchange method not sent by clients",
            )),
        }
    }
}
