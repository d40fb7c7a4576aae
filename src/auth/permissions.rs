//! Permissions as RabbitMQ has them: per (vhost, user) three regular expressions matched
//! against resource names for configure, write and read; and which of them each AMQP method
//! needs (RabbitMQ's access-control table):
//!
//! | method | configure | write | read |
//! |---|---|---|---|
//! | exchange.declare (not passive) | exchange | alternate exchange, if any | exchange, if an AE |
//! | exchange.delete | exchange | | |
//! | queue.declare (not passive) | queue | dead-letter exchange, if any | queue, if a DLX |
//! | queue.delete | queue | | |
//! | exchange.bind/unbind | | destination | source |
//! | queue.bind/unbind | | queue | exchange |
//! | basic.publish | | exchange | |
//! | basic.get, basic.consume, queue.purge | | | queue |
//!
//! The default exchange is checked under the name `amq.default`; an empty pattern matches
//! only the empty name (RabbitMQ turns it into `^$`); patterns are unanchored searches.

use super::Auth;
use crate::broker::args;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::FieldTable;
use parking_lot::Mutex;
use regex::Regex;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exchange,
    Queue,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Exchange => "exchange",
            Kind::Queue => "queue",
        }
    }
}

/// One compiled permission pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    /// None when the pattern matches every name (`.*`) or is empty (matches only "").
    re: Option<Regex>,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let re = match source {
            "" | ".*" | "^.*" | "^.*$" | ".*$" => None,
            s => Some(Regex::new(s)?),
        };
        Ok(Pattern {
            source: source.to_string(),
            re,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        match &self.re {
            Some(re) => re.is_match(name),
            None => !self.source.is_empty() || name.is_empty(),
        }
    }
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl Permission {
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, regex::Error> {
        Ok(Permission {
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        match perm {
            Perm::Configure => self.configure.matches(name),
            Perm::Write => self.write.matches(name),
            Perm::Read => self.read.matches(name),
        }
    }
}

/// The name a resource is checked under: the default exchange is `amq.default`.
fn checked_name(kind: Kind, name: &str) -> &str {
    if kind == Kind::Exchange && name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

/// RabbitMQ's refusal text, e.g. "access to queue 'q' in vhost '/' refused for user 'bob'".
pub fn refusal(kind: Kind, name: &str, vhost: &str, user: &str) -> String {
    format!(
        "access to {} '{}' in vhost '{vhost}' refused for user '{user}'",
        kind.as_str(),
        checked_name(kind, name)
    )
}

/// Check one operation for `perm` (None: no permissions in the vhost at all).
pub fn check(
    perm_set: Option<&Permission>,
    perm: Perm,
    kind: Kind,
    name: &str,
    vhost: &str,
    user: &str,
) -> AmqpResult<()> {
    match perm_set {
        Some(p) if p.allows(perm, checked_name(kind, name)) => Ok(()),
        _ => Err(AmqpError::access_refused(refusal(kind, name, vhost, user))),
    }
}

/// exchange.declare needs configure; with an alternate exchange also write on it and read
/// on the exchange.
pub fn exchange_declare_needs(name: &str, a: &FieldTable) -> Vec<(Perm, Kind, String)> {
    let mut v = vec![(Perm::Configure, Kind::Exchange, name.to_string())];
    if let Some(ae) = args::get(a, "alternate-exchange").and_then(args::str_value) {
        v.push((Perm::Write, Kind::Exchange, ae));
        v.push((Perm::Read, Kind::Exchange, name.to_string()));
    }
    v
}

/// queue.declare needs configure; with a dead-letter exchange also write on it and read on
/// the queue.
pub fn queue_declare_needs(name: &str, a: &FieldTable) -> Vec<(Perm, Kind, String)> {
    let mut v = vec![(Perm::Configure, Kind::Queue, name.to_string())];
    if let Some(dlx) = args::get(a, "x-dead-letter-exchange").and_then(args::str_value) {
        v.push((Perm::Write, Kind::Exchange, dlx));
        v.push((Perm::Read, Kind::Queue, name.to_string()));
    }
    v
}

/// The permission checks of one AMQP connection: its user and vhost, and the user's
/// permissions there, refreshed when any permission changes (a generation counter), so a
/// check is one atomic load and a pattern match.
pub struct Access {
    auth: Arc<Auth>,
    pub user: String,
    pub vhost: String,
    /// The user may publish with another user's `user_id` (tag `impersonator`).
    pub impersonator: bool,
    cache: Mutex<Cached>,
}

/// The permissions a connection last looked up, and the generation they are from.
struct Cached {
    generation: u64,
    permission: Option<Arc<Permission>>,
    topics: Option<Arc<super::topic::TopicPermissions>>,
}

impl Access {
    pub fn new(auth: Arc<Auth>, user: &str, vhost: &str) -> Self {
        let impersonator = auth.user(user).is_some_and(|u| u.has_tag("impersonator"));
        Access {
            auth,
            user: user.to_string(),
            vhost: vhost.to_string(),
            impersonator,
            cache: Mutex::new(Cached {
                generation: u64::MAX,
                permission: None,
                topics: None,
            }),
        }
    }

    pub fn check(&self, perm: Perm, kind: Kind, name: &str) -> AmqpResult<()> {
        // The cache is this connection's own: the lock is uncontended and no shared
        // reference count is touched per check.
        let c = self.cached();
        check(
            c.permission.as_deref(),
            perm,
            kind,
            name,
            &self.vhost,
            &self.user,
        )
    }

    fn cached(&self) -> parking_lot::MutexGuard<'_, Cached> {
        let generation = self.auth.generation();
        let mut c = self.cache.lock();
        if c.generation != generation {
            *c = Cached {
                generation,
                permission: self.auth.permission(&self.vhost, &self.user),
                topics: self.auth.topic_permissions(&self.vhost, &self.user),
            };
        }
        c
    }

    /// Topic permission on `key` for `perm` (write: publish; read: bind, unbind) when
    /// `exchange` is a topic exchange. `is_topic` is asked only if the user has topic
    /// permissions in this vhost at all.
    pub fn topic(
        &self,
        perm: Perm,
        exchange: &str,
        key: &str,
        is_topic: impl FnOnce() -> bool,
    ) -> AmqpResult<()> {
        let Some(topics) = self.cached().topics.clone() else {
            return Ok(());
        };
        if !is_topic() {
            return Ok(());
        }
        topics.check(perm, exchange, key, &self.vhost, &self.user)
    }

    /// basic.publish: write on the exchange.
    /// With the topic permission on the routing key when the exchange is a topic exchange,
    /// in one cache lookup: this runs for every message.
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        is_topic: impl FnOnce() -> bool,
    ) -> AmqpResult<()> {
        let c = self.cached();
        check(
            c.permission.as_deref(),
            Perm::Write,
            Kind::Exchange,
            exchange,
            &self.vhost,
            &self.user,
        )?;
        match &c.topics {
            Some(t) if is_topic() => {
                t.check(Perm::Write, exchange, routing_key, &self.vhost, &self.user)
            }
            _ => Ok(()),
        }
    }

    /// basic.get, basic.consume, queue.purge: read on the queue.
    pub fn read_queue(&self, queue: &str) -> AmqpResult<()> {
        self.check(Perm::Read, Kind::Queue, queue)
    }

    /// queue.delete: configure on the queue.
    pub fn configure_queue(&self, queue: &str) -> AmqpResult<()> {
        self.check(Perm::Configure, Kind::Queue, queue)
    }

    /// exchange.delete: configure on the exchange.
    pub fn configure_exchange(&self, exchange: &str) -> AmqpResult<()> {
        self.check(Perm::Configure, Kind::Exchange, exchange)
    }

    /// exchange.declare (see `exchange_declare_needs`).
    pub fn exchange_declare(&self, name: &str, passive: bool, a: &FieldTable) -> AmqpResult<()> {
        if passive {
            return Ok(());
        }
        for (perm, kind, res) in exchange_declare_needs(name, a) {
            self.check(perm, kind, &res)?;
        }
        Ok(())
    }

    /// queue.declare (see `queue_declare_needs`).
    pub fn queue_declare(&self, name: &str, passive: bool, a: &FieldTable) -> AmqpResult<()> {
        if passive {
            return Ok(());
        }
        for (perm, kind, res) in queue_declare_needs(name, a) {
            self.check(perm, kind, &res)?;
        }
        Ok(())
    }

    /// queue.bind/unbind: write on the queue, read on the exchange.
    pub fn queue_bind(&self, queue: &str, exchange: &str) -> AmqpResult<()> {
        self.check(Perm::Write, Kind::Queue, queue)?;
        self.check(Perm::Read, Kind::Exchange, exchange)
    }

    /// exchange.bind/unbind: write on the destination, read on the source.
    pub fn exchange_bind(&self, destination: &str, source: &str) -> AmqpResult<()> {
        self.check(Perm::Write, Kind::Exchange, destination)?;
        self.check(Perm::Read, Kind::Exchange, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Permission::new("^tmp-", ".*", "").unwrap();
        assert!(p.allows(Perm::Configure, "tmp-1"));
        assert!(!p.allows(Perm::Configure, "x-tmp-1"));
        assert!(p.allows(Perm::Write, "anything"));
        assert!(!p.allows(Perm::Read, "anything"));
        assert!(p.allows(Perm::Read, ""));
        // Unanchored, as Erlang's re:run.
        let p = Permission::new("jobs", "jobs", "jobs").unwrap();
        assert!(p.allows(Perm::Read, "gpu.jobs.high"));
        assert!(Permission::new("(", "", "").is_err());
    }

    #[test]
    fn default_exchange_is_amq_default() {
        let p = Permission::new("", "^amq\\.default$", "").unwrap();
        assert!(check(Some(&p), Perm::Write, Kind::Exchange, "", "/", "u").is_ok());
        let e = check(Some(&p), Perm::Write, Kind::Exchange, "logs", "/", "u").unwrap_err();
        assert_eq!(
            e.reply_text(),
            "ACCESS_REFUSED - access to exchange 'logs' in vhost '/' refused for user 'u'"
        );
    }
}
