//! Exchanges: the declaration, the bindings, and per type a matcher that answers "which
//! destinations does this message reach". Extras that apply to every type (default
//! exchange, e2e bindings, alternate exchanges, CC/BCC) live in the shared routing step,
//! `route.rs` (`VHost::route` and `VHost::route_publish`), not in the matchers.

mod delayed;
mod direct;
mod fanout;
mod fxhash;
mod headers;
mod route;
mod topic;

pub use delayed::{delay_of, DelayedMessages, HeldOutcome};
pub use headers::header_eq;
pub use route::sender_selected_keys;
pub use topic::{topic_matches, words as topic_words};

use super::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::FieldTable;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-delayed-message` (the RabbitMQ delayed-message plugin): a message with a positive
    /// `x-delay` header is held, then routed as the underlying `x-delayed-type`.
    Delayed(BaseType),
}

/// The type a delayed exchange routes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl BaseType {
    fn kind(self) -> ExchangeType {
        match self {
            Self::Direct => ExchangeType::Direct,
            Self::Fanout => ExchangeType::Fanout,
            Self::Topic => ExchangeType::Topic,
            Self::Headers => ExchangeType::Headers,
        }
    }
}

/// The delayed exchange type's name.
pub const DELAYED_TYPE: &str = "x-delayed-message";

impl ExchangeType {
    /// A built-in type by name (`x-delayed-message` needs its arguments: see `declared`).
    pub fn parse(s: &str) -> AmqpResult<Self> {
        match s {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            other => Err(AmqpError::command_invalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }

    /// The type an exchange.declare (or a stored or imported definition) asks for. For
    /// `x-delayed-message` the `x-delayed-type` argument names the underlying type, with
    /// the plugin's reply texts when it is missing or itself delayed.
    pub fn declared(s: &str, arguments: &FieldTable) -> AmqpResult<Self> {
        if s != DELAYED_TYPE {
            return Self::parse(s);
        }
        let base = super::args::get(arguments, "x-delayed-type").and_then(super::args::str_value);
        let base = match base.as_deref() {
            Some(DELAYED_TYPE) => {
                return Err(AmqpError::precondition(
                    "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
                ))
            }
            Some(t) => Self::parse(t)?,
            None => {
                return Err(AmqpError::precondition(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                ))
            }
        };
        Ok(Self::Delayed(match base {
            Self::Direct => BaseType::Direct,
            Self::Fanout => BaseType::Fanout,
            Self::Topic => BaseType::Topic,
            _ => BaseType::Headers,
        }))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::Delayed(_) => DELAYED_TYPE,
        }
    }

    /// The type whose matcher routes: the underlying one for delayed exchanges.
    pub fn routing_kind(self) -> Self {
        match self {
            Self::Delayed(base) => base.kind(),
            other => other,
        }
    }

    /// Does the routing key take part in matching? (Fanout and headers ignore it, so
    /// extra CC/BCC keys cannot change where a message goes.)
    pub fn uses_routing_key(self) -> bool {
        matches!(self.routing_kind(), Self::Direct | Self::Topic)
    }
}

/// Where a binding leads.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    /// Exchange-to-exchange binding, by destination name.
    Exchange(String),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Queue(q) => write!(f, "queue {}", q.name()),
            Destination::Exchange(e) => write!(f, "exchange {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Per-type binding index.
trait Matcher: Send + Sync {
    /// Add a binding; false if an identical one exists.
    fn bind(&mut self, b: Binding) -> AmqpResult<bool>;
    /// Remove a binding; false if there was none.
    fn unbind(&mut self, b: &Binding) -> bool;
    /// Push every destination this message reaches (duplicates allowed; the router dedups).
    fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>);
    fn bindings(&self) -> Vec<Binding>;
    fn is_empty(&self) -> bool;
}

#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeType,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

pub struct Exchange {
    pub spec: ExchangeSpec,
    /// The alternate exchange: the `alternate-exchange` argument, else a policy's.
    alternate: arc_swap::ArcSwapOption<String>,
    matcher: RwLock<Box<dyn Matcher>>,
    /// Sources of exchange-to-exchange bindings that lead here, one entry per binding, so
    /// deleting this exchange finds them without scanning every exchange.
    e2e_sources: Mutex<Vec<String>>,
    deleted: AtomicBool,
    /// Messages held by an `x-delayed-message` exchange (None for other types).
    delayed: Option<DelayedMessages>,
}

impl Exchange {
    pub fn new(spec: ExchangeSpec) -> Arc<Self> {
        let matcher: Box<dyn Matcher> = match spec.kind.routing_kind() {
            ExchangeType::Direct => Box::<direct::DirectMatcher>::default(),
            ExchangeType::Fanout => Box::<fanout::FanoutMatcher>::default(),
            ExchangeType::Topic => Box::<topic::TopicMatcher>::default(),
            _ => Box::<headers::HeadersMatcher>::default(),
        };
        let alternate = spec
            .arguments
            .inner()
            .get("alternate-exchange")
            .and_then(super::args::str_value);
        let delayed = matches!(spec.kind, ExchangeType::Delayed(_)).then(DelayedMessages::default);
        Arc::new(Exchange {
            delayed,
            spec,
            alternate: arc_swap::ArcSwapOption::new(alternate.map(Arc::new)),
            matcher: RwLock::new(matcher),
            e2e_sources: Mutex::new(Vec::new()),
            deleted: AtomicBool::new(false),
        })
    }

    /// The alternate exchange unroutable messages go to, if any.
    pub fn alternate(&self) -> Option<Arc<String>> {
        self.alternate.load_full()
    }

    /// Set by policies (the argument, if any, still wins: see `broker::policy`).
    pub fn set_alternate(&self, alternate: Option<String>) {
        self.alternate.store(alternate.map(Arc::new));
    }

    pub(in crate::broker) fn add_e2e_source(&self, source: &str) {
        self.e2e_sources.lock().push(source.to_string());
    }

    pub(in crate::broker) fn remove_e2e_source(&self, source: &str) {
        let mut v = self.e2e_sources.lock();
        if let Some(p) = v.iter().position(|s| s == source) {
            v.swap_remove(p);
        }
    }

    /// Distinct exchanges that have bindings to this one.
    pub(in crate::broker) fn e2e_sources(&self) -> Vec<String> {
        let mut v = self.e2e_sources.lock().clone();
        v.sort();
        v.dedup();
        v
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How many messages a delayed exchange holds (None for other types).
    pub fn messages_delayed(&self) -> Option<usize> {
        self.delayed.as_ref().map(DelayedMessages::len)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    pub fn bind(&self, b: Binding) -> AmqpResult<bool> {
        self.matcher.write().bind(b)
    }

    pub fn unbind(&self, b: &Binding) -> bool {
        self.matcher.write().unbind(b)
    }

    pub fn has_bindings(&self) -> bool {
        !self.matcher.read().is_empty()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.matcher.read().bindings()
    }

    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        self.matcher.read().route(routing_key, headers, out)
    }

    /// Route with the routing key and extra (CC/BCC) keys under one read lock; types that
    /// ignore the key are asked once.
    pub fn route_keys(
        &self,
        routing_key: &str,
        extra: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let m = self.matcher.read();
        m.route(routing_key, headers, out);
        if self.spec.kind.uses_routing_key() {
            for k in extra {
                m.route(k, headers, out);
            }
        }
    }
}
