//! A virtual host: its exchanges and queues, declaration rules and bindings. The shared
//! routing step every publish goes through is in `exchange/route.rs`.

use super::args::{self, EXCHANGE_EQUIVALENCE_KEYS, QUEUE_EQUIVALENCE_KEYS};
use super::delivery::Consumer;
use super::exchange::{Binding, Destination, Exchange, ExchangeSpec, ExchangeType};
use super::queue::{InboundBinding, Queue, QueueSpec};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{AMQPValue, FieldTable};
use crate::store::Store;
use dashmap::DashMap;
use std::sync::Arc;

pub struct VHost {
    pub name: String,
    pub exchanges: DashMap<String, Arc<Exchange>>,
    pub queues: DashMap<String, Arc<Queue>>,
    /// Description, tags and policies, set through management.
    pub settings: parking_lot::RwLock<super::vhosts::VhostSettings>,
    /// Live direct reply-to consumers by their full `amq.rabbitmq.reply-to.<token>` name.
    pub reply_consumers: DashMap<String, Arc<super::reply_to::ReplyConsumer>>,
    store: Option<Arc<Store>>,
}

/// A queue.declare / exchange.declare request, after protocol decoding.
pub struct QueueDeclare {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The broker chose the name (`amq.gen-…`), so the reserved prefix is allowed.
    pub server_named: bool,
}

impl VHost {
    pub fn new(name: &str, store: Option<Arc<Store>>) -> Arc<Self> {
        let vhost = VHost {
            name: name.to_string(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            settings: Default::default(),
            reply_consumers: DashMap::new(),
            store,
        };
        let builtin: &[(&str, ExchangeType, bool)] = &[
            ("", ExchangeType::Direct, false),
            ("amq.direct", ExchangeType::Direct, false),
            ("amq.fanout", ExchangeType::Fanout, false),
            ("amq.topic", ExchangeType::Topic, false),
            ("amq.headers", ExchangeType::Headers, false),
            ("amq.match", ExchangeType::Headers, false),
            ("amq.rabbitmq.trace", ExchangeType::Topic, true),
        ];
        for (n, kind, internal) in builtin {
            vhost.exchanges.insert(
                n.to_string(),
                Exchange::new(ExchangeSpec {
                    name: n.to_string(),
                    kind: *kind,
                    durable: true,
                    auto_delete: false,
                    internal: *internal,
                    arguments: FieldTable::default(),
                }),
            );
        }
        Arc::new(vhost)
    }

    /// The store, if this vhost persists anything.
    pub(crate) fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.clone())
            .ok_or_else(|| self.no_exchange(name))
    }

    /// A queue this connection may use: 404 if missing, 405 if another connection's
    /// exclusive queue.
    pub fn queue(&self, name: &str, conn_id: u64) -> AmqpResult<Arc<Queue>> {
        let q = self
            .queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| self.no_queue(name))?;
        self.check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    fn check_exclusive(&self, q: &Queue, conn_id: u64) -> AmqpResult<()> {
        match q.spec.exclusive_owner {
            Some(owner) if owner != conn_id => Err(self.locked_queue(q)),
            _ => Ok(()),
        }
    }

    fn locked_queue(&self, q: &Queue) -> AmqpError {
        AmqpError::locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            q.name(),
            self.name
        ))
    }

    pub fn declare_exchange(&self, spec: ExchangeSpec, passive: bool) -> AmqpResult<Arc<Exchange>> {
        // Neither a passive nor an active declare may name the default exchange (403, as
        // RabbitMQ's check_not_default_exchange), even an equivalent one.
        if spec.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if passive {
            return self.exchange(&spec.name);
        }
        if spec.name.starts_with("amq.") {
            // Redeclaring a predeclared exchange equivalently is allowed, as in RabbitMQ.
            if let Some(existing) = self.exchanges.get(&spec.name) {
                if existing.spec.kind == spec.kind && existing.spec.durable == spec.durable {
                    return Ok(existing.clone());
                }
            }
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                spec.name
            )));
        }
        if let Some(alt) = args::get(&spec.arguments, "alternate-exchange") {
            if args::str_value(alt).is_none() {
                return Err(AmqpError::precondition(
                    "invalid arg 'alternate-exchange' for exchange: expected a string",
                ));
            }
        }
        match self.exchanges.entry(spec.name.clone()) {
            dashmap::mapref::entry::Entry::Occupied(e) => {
                let old = &e.get().spec;
                let field = if old.kind != spec.kind {
                    match (old.kind, spec.kind) {
                        (ExchangeType::Delayed(_), ExchangeType::Delayed(_)) => {
                            Some("x-delayed-type")
                        }
                        _ => Some("type"),
                    }
                } else if old.durable != spec.durable {
                    Some("durable")
                } else if old.auto_delete != spec.auto_delete {
                    Some("auto_delete")
                } else if old.internal != spec.internal {
                    Some("internal")
                } else {
                    args::first_difference(
                        &old.arguments,
                        &spec.arguments,
                        EXCHANGE_EQUIVALENCE_KEYS,
                    )
                };
                if let Some(field) = field {
                    return Err(AmqpError::precondition(format!(
                        "inequivalent arg '{field}' for exchange '{}' in vhost '{}': received \
                         '{}' but current is '{}'",
                        spec.name,
                        self.name,
                        describe_exchange_field(&spec, field),
                        describe_exchange_field(old, field)
                    )));
                }
                Ok(e.get().clone())
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let ex = Exchange::new(spec);
                self.apply_new_exchange_policy(&ex);
                if ex.spec.durable {
                    if let Some(store) = &self.store {
                        store.save_exchange(&self.name, &ex.spec);
                    }
                }
                v.insert(ex.clone());
                Ok(ex)
            }
        }
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchanges.get(name).map(|e| e.clone()) else {
            return Ok(());
        };
        if if_unused && ex.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&ex);
        Ok(())
    }

    fn remove_exchange(&self, ex: &Arc<Exchange>) {
        ex.mark_deleted();
        self.exchanges.remove(ex.name());
        // Bindings from other exchanges to this one go with it (and a source left with
        // none goes too if it is auto-delete, as in RabbitMQ).
        let me = Destination::Exchange(ex.name().to_string());
        for name in ex.e2e_sources() {
            let Some(src) = self.exchanges.get(&name).map(|e| e.clone()) else {
                continue;
            };
            for b in src.bindings().into_iter().filter(|b| b.destination == me) {
                if src.unbind(&b) {
                    self.forget_binding(&src, &b);
                }
            }
            self.maybe_auto_delete_exchange(&src);
        }
        for b in ex.bindings() {
            match &b.destination {
                Destination::Queue(q) => q.remove_binding(&InboundBinding {
                    exchange: ex.name().to_string(),
                    routing_key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                }),
                Destination::Exchange(d) => {
                    if let Some(dx) = self.exchanges.get(d) {
                        dx.remove_e2e_source(ex.name());
                    }
                }
            }
            self.forget_binding(ex, &b);
        }
        if ex.spec.durable {
            if let Some(store) = &self.store {
                store.remove_exchange(&self.name, ex.name());
                // Messages it held go with it.
                if ex.messages_delayed().is_some() {
                    store.remove_all_delayed(&self.name, Some(ex.name()));
                }
            }
        }
    }

    /// Is `name` an existing exchange of type topic (for topic permissions)?
    pub fn is_topic_exchange(&self, name: &str) -> bool {
        self.exchanges
            .get(name)
            .is_some_and(|x| x.spec.kind == super::exchange::ExchangeType::Topic)
    }

    /// A vhost limit (`max-connections`, `max-queues`), None when unlimited.
    pub fn limit(&self, key: &str) -> Option<u64> {
        super::vhosts::limit_of(&self.settings.read().record.limits, key)
    }

    /// Declare (or passively check) a queue. Returns the queue and whether it was created.
    pub fn declare_queue(
        self: &Arc<Self>,
        d: QueueDeclare,
        conn_id: u64,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        if d.passive {
            return self.queue(&d.name, conn_id).map(|q| (q, false));
        }
        if d.name.starts_with("amq.") && !d.server_named {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        validate_queue_arguments(&d.arguments, &d.name, &self.name)?;
        if super::queue::is_quorum(&d.arguments) {
            if self.store.as_ref().and_then(|s| s.quorum()).is_none() {
                return Err(AmqpError::precondition(format!(
                    "cannot declare quorum queue '{}' in vhost '{}': this node has no data dir",
                    d.name, self.name
                )));
            }
            validate_quorum_declaration(&d, &self.name)?;
        }
        // Checked before taking the map entry: counting takes every shard's lock.
        if let Some(max) = self.limit("max-queues") {
            if !self.queues.contains_key(&d.name) && self.queues.len() as u64 >= max {
                return Err(AmqpError::precondition(format!(
                    "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                    d.name, self.name
                )));
            }
        }
        let spec = QueueSpec {
            name: d.name.clone(),
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn_id),
            store_id: None,
            auto_delete: d.auto_delete,
            arguments: d.arguments,
        };
        match self.queues.entry(d.name.clone()) {
            dashmap::mapref::entry::Entry::Occupied(e) => {
                let q = e.get().clone();
                drop(e);
                // RabbitMQ's strict check: the declaration's owner (this connection if
                // exclusive, none if not) must be the queue's, or 405 before anything else.
                if q.spec.exclusive_owner != spec.exclusive_owner {
                    return Err(self.locked_queue(&q));
                }
                let old = &q.spec;
                let field = if old.durable != spec.durable {
                    Some("durable")
                } else if old.auto_delete != spec.auto_delete {
                    Some("auto_delete")
                } else {
                    args::first_difference(&old.arguments, &spec.arguments, QUEUE_EQUIVALENCE_KEYS)
                };
                if let Some(field) = field {
                    return Err(AmqpError::precondition(format!(
                        "inequivalent arg '{field}' for queue '{}' in vhost '{}': received {} \
                         but current is {}",
                        spec.name,
                        self.name,
                        describe_queue_field(&spec, old, field),
                        describe_queue_field(old, &spec, field)
                    )));
                }
                q.touch();
                Ok((q, false))
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let mut spec = spec;
                if spec.durable && spec.exclusive_owner.is_none() {
                    spec.store_id = self.store.as_ref().map(|s| s.new_queue_id());
                }
                let q = Queue::new(spec, self, self.store.clone());
                self.apply_new_queue_policy(&q);
                v.insert(q.clone());
                if q.spec.durable && q.spec.exclusive_owner.is_none() {
                    if let Some(store) = &self.store {
                        store.save_queue(&self.name, &q.spec);
                    }
                }
                // Every queue is bound to the default exchange by its name; that binding is
                // implicit (routed by name lookup), so nothing is recorded here.
                Ok((q, true))
            }
        }
    }

    /// Delete a queue by name; returns its ready message count. Missing queue: Ok(0).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
    ) -> AmqpResult<Removed> {
        let Some(q) = self.queues.get(name).map(|q| q.clone()) else {
            return Ok(Removed::default());
        };
        self.check_exclusive(&q, conn_id)?;
        if if_unused && q.has_consumers() {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&q))
    }

    /// Remove a queue from everywhere: registry, bindings, store; cancel its consumers. Their
    /// `basic.cancel` notifications go out when the returned value is dropped, so that a
    /// `queue.delete` answers delete-ok first, as RabbitMQ does.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> Removed {
        if q.is_deleted() {
            return Removed::default();
        }
        self.queues.remove_if(q.name(), |_, v| Arc::ptr_eq(v, q));
        let (bindings, consumers, count) = q.mark_deleted();
        for b in bindings {
            if let Some(ex) = self.exchanges.get(&b.exchange).map(|e| e.clone()) {
                let binding = Binding {
                    destination: Destination::Queue(q.clone()),
                    routing_key: b.routing_key,
                    arguments: b.arguments,
                };
                ex.unbind(&binding);
                self.forget_binding(&ex, &binding);
                self.maybe_auto_delete_exchange(&ex);
            }
        }
        if q.spec.durable {
            if let Some(store) = &self.store {
                store.remove_queue(&self.name, q.name());
            }
        }
        Removed {
            message_count: count,
            cancelled: consumers,
        }
    }

    fn forget_binding(&self, ex: &Exchange, b: &Binding) {
        let Some(store) = &self.store else {
            return;
        };
        if !ex.spec.durable {
            return;
        }
        match &b.destination {
            Destination::Queue(q) if q.spec.durable => {
                store.remove_binding(
                    &self.name,
                    ex.name(),
                    q.name(),
                    &b.routing_key,
                    &b.arguments,
                );
            }
            // The destination may be gone already; removing a missing record is a no-op.
            Destination::Exchange(d) => store.remove_exchange_binding(
                &self.name,
                ex.name(),
                d,
                &b.routing_key,
                &b.arguments,
            ),
            Destination::Queue(_) => {}
        }
    }

    fn maybe_auto_delete_exchange(&self, ex: &Arc<Exchange>) {
        if ex.spec.auto_delete && !ex.has_bindings() && !ex.is_deleted() {
            self.remove_exchange(ex);
        }
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on the default exchange (binding queue '{queue}')"
            )));
        }
        let q = self.queue(queue, conn_id)?;
        let ex = self.exchange(exchange)?;
        let binding = Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        };
        if ex.bind(binding)? {
            q.add_binding(InboundBinding {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                arguments: arguments.clone(),
            });
            if ex.spec.durable && q.spec.durable {
                if let Some(store) = &self.store {
                    store.save_binding(&self.name, exchange, queue, routing_key, &arguments);
                }
            }
        }
        Ok(())
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on the default exchange (unbinding queue '{queue}')"
            )));
        }
        let Some(q) = self.queues.get(queue).map(|q| q.clone()) else {
            return Ok(());
        };
        self.check_exclusive(&q, conn_id)?;
        let Some(ex) = self.exchanges.get(exchange).map(|e| e.clone()) else {
            return Ok(());
        };
        let binding = Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        };
        if ex.unbind(&binding) {
            q.remove_binding(&InboundBinding {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                arguments,
            });
            self.forget_binding(&ex, &binding);
            self.maybe_auto_delete_exchange(&ex);
        }
        Ok(())
    }

    /// exchange.bind: messages reaching `source` also go through `destination`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let src = self.exchange(source)?;
        let dst = self.exchange(destination)?;
        let added = src.bind(Binding {
            destination: Destination::Exchange(destination.to_string()),
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        })?;
        if added {
            dst.add_e2e_source(source);
            if src.spec.durable && dst.spec.durable {
                if let Some(store) = &self.store {
                    store.save_exchange_binding(
                        &self.name,
                        source,
                        destination,
                        routing_key,
                        &arguments,
                    );
                }
            }
        }
        Ok(())
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if destination.is_empty() || source.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if let Some(src) = self.exchanges.get(source).map(|e| e.clone()) {
            let b = Binding {
                destination: Destination::Exchange(destination.to_string()),
                routing_key: routing_key.to_string(),
                arguments,
            };
            if src.unbind(&b) {
                if let Some(dst) = self.exchanges.get(destination) {
                    dst.remove_e2e_source(source);
                }
                self.forget_binding(&src, &b);
                self.maybe_auto_delete_exchange(&src);
            }
        }
        Ok(())
    }

    /// Remove every exclusive queue a closing connection owns.
    pub fn drop_exclusive_queues(&self, conn_id: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .filter(|q| q.spec.exclusive_owner == Some(conn_id))
            .map(|q| q.clone())
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }
}

fn describe_exchange_field(spec: &ExchangeSpec, field: &str) -> String {
    match field {
        "type" => spec.kind.as_str().to_string(),
        "durable" => spec.durable.to_string(),
        "auto_delete" => spec.auto_delete.to_string(),
        "internal" => spec.internal.to_string(),
        key => describe_arg(args::get(&spec.arguments, key)),
    }
}

/// One side of an inequivalent queue field, as RabbitMQ words it: `'v'` when both sides
/// have the argument, `the value 'v' of type 't'` against a missing one, `none` if missing.
fn describe_queue_field(spec: &QueueSpec, other: &QueueSpec, field: &str) -> String {
    match field {
        "durable" => format!("'{}'", spec.durable),
        "auto_delete" => format!("'{}'", spec.auto_delete),
        key => match (
            args::get(&spec.arguments, key),
            args::get(&other.arguments, key),
        ) {
            (None, _) => "none".to_string(),
            (Some(v), Some(_)) => format!("'{}'", describe_arg(Some(v))),
            (Some(v), None) => format!(
                "the value '{}' of type '{}'",
                describe_arg(Some(v)),
                args::type_name(v)
            ),
        },
    }
}

fn describe_arg(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => args::int_value(v)
            .map(|i| i.to_string())
            .or_else(|| args::str_value(v))
            .unwrap_or_else(|| format!("{v:?}")),
    }
}

/// Type and range checks of the queue arguments this broker understands: 406 with
/// RabbitMQ's texts (`invalid arg 'K' for queue 'Q' in vhost 'V': {value_negative,-1}`).
fn validate_queue_arguments(a: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<()> {
    let bad = |k: &str, why: String| {
        AmqpError::precondition(format!(
            "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {why}"
        ))
    };
    let not_int = |v: &AMQPValue| format!("\"expected integer, got {}\"", args::type_name(v));
    for (k, v) in a.inner() {
        let k = k.as_str();
        match k {
            "x-message-ttl" | "x-max-length" | "x-max-length-bytes" | "x-consumer-timeout" => {
                match args::int_value(v) {
                    Some(n) if n >= 0 => {}
                    Some(n) => return Err(bad(k, format!("{{value_negative,{n}}}"))),
                    None => return Err(bad(k, not_int(v))),
                }
            }
            "x-expires" => match args::int_value(v) {
                Some(n) if n > 0 => {}
                Some(0) => return Err(bad(k, "{value_zero,0}".into())),
                Some(n) => return Err(bad(k, format!("{{value_negative,{n}}}"))),
                None => return Err(bad(k, not_int(v))),
            },
            "x-max-priority" => match args::int_value(v) {
                Some(n) if (0..=255).contains(&n) => {}
                Some(n) if n < 0 => return Err(bad(k, format!("{{value_negative,{n}}}"))),
                Some(n) => return Err(bad(k, format!("{{max_value_exceeded,{n}}}"))),
                None => return Err(bad(k, not_int(v))),
            },
            "x-dead-letter-exchange" | "x-dead-letter-routing-key"
                if args::str_value(v).is_none() =>
            {
                return Err(AmqpError::precondition(format!(
                    "invalid type '{}' for arg '{k}' in queue '{queue}' in vhost '{vhost}'",
                    args::type_name(v)
                )));
            }
            "x-overflow" => match args::str_value(v).as_deref() {
                Some("drop-head" | "reject-publish" | "reject-publish-dlx") => {}
                _ => return Err(bad(k, "invalid_overflow".into())),
            },
            "x-queue-type" => match args::str_value(v).as_deref() {
                Some("classic" | "quorum") => {}
                Some("stream") => {
                    return Err(AmqpError::precondition(format!(
                        "invalid arg 'x-queue-type' for queue '{queue}' in vhost '{vhost}': stream queues are not supported yet"
                    )))
                }
                // RabbitMQ's text for a type it does not know.
                Some(other) => {
                    return Err(AmqpError::precondition(format!(
                        "invalid arg 'x-queue-type' for queue '{queue}' in vhost '{vhost}': \"unsupported queue type '{other}'\""
                    )))
                }
                None => return Err(bad(k, not_int(v))),
            },
            "x-single-active-consumer" if !matches!(v, AMQPValue::Boolean(_)) => {
                return Err(bad(
                    k,
                    format!("{{unacceptable_type,{}}}", args::type_name(v)),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a quorum queue declaration must also satisfy (RabbitMQ's checks and texts): a
/// durable, shared, lasting queue, without the arguments quorum queues do not have.
fn validate_quorum_declaration(d: &QueueDeclare, vhost: &str) -> AmqpResult<()> {
    let (queue, a) = (&d.name, &d.arguments);
    let property = |p: &str| {
        AmqpError::precondition(format!(
            "invalid property '{p}' for queue '{queue}' in vhost '{vhost}'"
        ))
    };
    if !d.durable {
        return Err(property("non-durable"));
    }
    if d.exclusive {
        return Err(property("exclusive-owner"));
    }
    if d.auto_delete {
        return Err(property("auto-delete"));
    }
    let bad = |k: &str, why: String| {
        AmqpError::precondition(format!(
            "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {why}"
        ))
    };
    for (k, v) in a.inner() {
        let k = k.as_str();
        match k {
            "x-max-priority" | "x-queue-mode" | "x-queue-master-locator" => {
                return Err(AmqpError::precondition(format!(
                    "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}' of queue type rabbit_quorum_queue"
                )))
            }
            "x-quorum-initial-group-size" => match args::int_value(v) {
                Some(n) if n > 0 => {}
                Some(0) => return Err(bad(k, "{value_zero,0}".into())),
                Some(n) => return Err(bad(k, format!("{{value_negative,{n}}}"))),
                None => {
                    return Err(bad(
                        k,
                        format!("\"expected integer, got {}\"", args::type_name(v)),
                    ))
                }
            },
            "x-queue-leader-locator" => match args::str_value(v).as_deref() {
                Some("client-local" | "balanced") => {}
                _ => return Err(bad(k, "invalid_queue_locator_arg".into())),
            },
            "x-dead-letter-strategy" => match args::str_value(v).as_deref() {
                Some("at-most-once" | "at-least-once") => {}
                _ => return Err(bad(k, "invalid_dlx_strategy".into())),
            },
            _ => {}
        }
    }
    Ok(())
}

/// What removing a queue did: its ready message count, and the consumers it cancelled, who
/// are told (`basic.cancel`, to clients with `consumer_cancel_notify`) when this is dropped.
#[derive(Default)]
pub struct Removed {
    pub message_count: u32,
    cancelled: Vec<Arc<Consumer>>,
}

impl Drop for Removed {
    fn drop(&mut self) {
        for c in self.cancelled.drain(..) {
            c.channel
                .conn
                .notify_consumer_cancelled(c.channel.id, &c.tag);
        }
    }
}
