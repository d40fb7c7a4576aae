//! confirm.select and tx.select/commit/rollback. A channel is in at most one of the two
//! modes.

use super::basic::apply_settle;
use super::{Channel, ChannelCtx, Confirms, Mode};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::AMQPClass;
use amq_protocol::protocol::{confirm, tx};
use std::sync::atomic::Ordering;

impl Channel {
    pub(super) fn confirm_method(
        &mut self,
        ctx: &ChannelCtx<'_>,
        m: confirm::AMQPMethod,
    ) -> AmqpResult<()> {
        let confirm::AMQPMethod::Select(s) = m else {
            return Err(AmqpError::command_invalid(
                "confirm method not sent by clients",
            ));
        };
        match self.mode {
            Mode::Tx { .. } => {
                return Err(AmqpError::precondition(
                    "cannot switch from tx to confirm mode",
                ))
            }
            Mode::Normal => {
                self.mode = Mode::Confirm(Confirms::default());
                self.shared.confirm.store(true, Ordering::Relaxed);
            }
            Mode::Confirm(_) => {}
        }
        if !s.nowait {
            self.send(
                ctx,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn tx_method(&mut self, ctx: &ChannelCtx<'_>, m: tx::AMQPMethod) -> AmqpResult<()> {
        match m {
            tx::AMQPMethod::Select(_) => {
                match self.mode {
                    Mode::Confirm(_) => {
                        return Err(AmqpError::precondition(
                            "cannot switch from confirm to tx mode",
                        ))
                    }
                    Mode::Normal => {
                        self.mode = Mode::Tx {
                            publishes: Vec::new(),
                            acks: Vec::new(),
                        };
                        self.shared.transactional.store(true, Ordering::Relaxed);
                    }
                    Mode::Tx { .. } => {}
                }
                self.send(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let Mode::Tx { publishes, acks } = &mut self.mode else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                let publishes = std::mem::take(publishes);
                let acks = std::mem::take(acks);
                let mut persisted = false;
                for p in publishes {
                    // An exchange deleted since the publish drops the message, as RabbitMQ does.
                    if let Ok(exchange) = ctx.vhost.exchange(&p.publish.exchange) {
                        persisted |= self
                            .route_and_deliver(ctx, &exchange, &p.publish, p.msg)
                            .persisted;
                    }
                }
                for a in acks {
                    apply_settle(a.taken, a.reject);
                }
                self.note_uncommitted();
                self.dispatch_consumed_queues();
                // commit-ok only once the persistent messages are on disk and every
                // quorum queue applied its share.
                if let (Some(store), true) = (&ctx.broker.store, persisted) {
                    self.deferred_commit = Some(store.write_epoch());
                }
                self.deferred_quorum.append(&mut self.quorum_waits);
                if self.deferred_commit.is_some() || !self.deferred_quorum.is_empty() {
                    self.commits_owed += 1;
                } else {
                    self.send(
                        ctx,
                        AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                    );
                }
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let Mode::Tx { publishes, acks } = &mut self.mode else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                publishes.clear();
                // Rolled-back acks leave their messages unacked under their tags.
                let held: Vec<_> = std::mem::take(acks)
                    .into_iter()
                    .flat_map(|a| a.taken)
                    .collect();
                self.shared.restore(held);
                self.note_uncommitted();
                self.send(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("tx method not sent by clients")),
        }
    }
}
