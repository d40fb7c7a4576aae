//! Exchanges: the declaration, the bindings, and per type a matcher that answers "which
//! destinations does this message reach". Extras that apply to every type (default
//! exchange, and later e2e bindings, alternate exchanges, CC/BCC) live in the shared routing
//! step in `vhost.rs`, not here.

mod direct;
mod fanout;
mod headers;
mod topic;

use super::queue::Queue;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::FieldTable;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeType {
    pub fn parse(s: &str) -> AmqpResult<Self> {
        match s {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            other => Err(AmqpError::command_invalid(format!(
                "invalid exchange type '{other}'"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
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
    matcher: RwLock<Box<dyn Matcher>>,
    deleted: AtomicBool,
}

impl Exchange {
    pub fn new(spec: ExchangeSpec) -> Arc<Self> {
        let matcher: Box<dyn Matcher> = match spec.kind {
            ExchangeType::Direct => Box::<direct::DirectMatcher>::default(),
            ExchangeType::Fanout => Box::<fanout::FanoutMatcher>::default(),
            ExchangeType::Topic => Box::<topic::TopicMatcher>::default(),
            ExchangeType::Headers => Box::<headers::HeadersMatcher>::default(),
        };
        Arc::new(Exchange {
            spec,
            matcher: RwLock::new(matcher),
            deleted: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
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
}
