//! Topic permissions (RabbitMQ 3.7+ topic authorisation). A user may have them per vhost
//! and topic exchange: a `write` pattern that the routing key of every message published
//! to that exchange must match, and a `read` pattern that the binding key of every
//! queue or exchange binding from it must match. Without one for an exchange, everything
//! is allowed there. `{username}` and `{vhost}` in a pattern stand for the user and vhost.

use super::permissions::{Pattern, Perm};
use super::Auth;
use crate::error::{AmqpError, AmqpResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A topic permission as stored and as exported in definitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicPermissionRecord {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// vhost → (user, exchange) → record.
pub(super) type TopicTable = HashMap<String, BTreeMap<(String, String), TopicPermissionRecord>>;

/// One user's topic permissions in one vhost, compiled: exchange → (write, read).
#[derive(Debug, Default)]
pub struct TopicPermissions {
    by_exchange: HashMap<String, (Pattern, Pattern)>,
}

impl TopicPermissions {
    /// Check `key` against the exchange's pattern for `perm`, with RabbitMQ's refusal text.
    pub fn check(
        &self,
        perm: Perm,
        exchange: &str,
        key: &str,
        vhost: &str,
        user: &str,
    ) -> AmqpResult<()> {
        let Some((write, read)) = self.by_exchange.get(exchange) else {
            return Ok(());
        };
        let (ok, what) = match perm {
            Perm::Write => (write.matches(key), "write"),
            Perm::Read => (read.matches(key), "read"),
            Perm::Configure => (true, "configure"),
        };
        if ok {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "{what} access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' \
             refused for user '{user}'"
        )))
    }
}

fn expand(pattern: &str, user: &str, vhost: &str) -> String {
    pattern
        .replace("{username}", user)
        .replace("{vhost}", vhost)
}

fn compile(rec: &TopicPermissionRecord) -> Result<(Pattern, Pattern), regex::Error> {
    Ok((
        Pattern::new(&expand(&rec.write, &rec.user, &rec.vhost))?,
        Pattern::new(&expand(&rec.read, &rec.user, &rec.vhost))?,
    ))
}

impl Auth {
    /// Set one topic permission; Err if a pattern is not a valid regex.
    pub fn set_topic_permission(&self, rec: TopicPermissionRecord) -> Result<(), regex::Error> {
        compile(&rec)?;
        if let Some(s) = &self.store {
            s.put_meta("topic_perm", &[&rec.vhost, &rec.user, &rec.exchange], &rec);
        }
        self.topic_permissions
            .write()
            .entry(rec.vhost.clone())
            .or_default()
            .insert((rec.user.clone(), rec.exchange.clone()), rec);
        self.bump();
        Ok(())
    }

    /// Remove all of a user's topic permissions in a vhost; false if there were none.
    pub fn clear_topic_permissions(&self, vhost: &str, user: &str) -> bool {
        let removed: Vec<String> = {
            let mut table = self.topic_permissions.write();
            let Some(m) = table.get_mut(vhost) else {
                return false;
            };
            let gone: Vec<(String, String)> =
                m.keys().filter(|(u, _)| u == user).cloned().collect();
            gone.into_iter()
                .filter_map(|k| m.remove(&k).map(|r| r.exchange))
                .collect()
        };
        if let Some(s) = &self.store {
            for x in &removed {
                s.del_meta("topic_perm", &[vhost, user, x]);
            }
        }
        if !removed.is_empty() {
            self.bump();
        }
        !removed.is_empty()
    }

    /// Records, optionally only one vhost's or one user's, sorted.
    pub fn topic_permission_records(
        &self,
        vhost: Option<&str>,
        user: Option<&str>,
    ) -> Vec<TopicPermissionRecord> {
        let table = self.topic_permissions.read();
        let mut out: Vec<TopicPermissionRecord> = table
            .iter()
            .filter(|(v, _)| vhost.is_none_or(|want| want == v.as_str()))
            .flat_map(|(_, m)| m.values().cloned())
            .filter(|r| user.is_none_or(|want| want == r.user))
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.user, &a.exchange).cmp(&(&b.vhost, &b.user, &b.exchange)));
        out
    }

    /// A user's compiled topic permissions in a vhost; None when there are none (the
    /// common case, which then costs nothing per publish).
    pub fn topic_permissions(&self, vhost: &str, user: &str) -> Option<Arc<TopicPermissions>> {
        let table = self.topic_permissions.read();
        let m = table.get(vhost)?;
        let mut by_exchange = HashMap::new();
        for ((u, x), rec) in m {
            if u == user {
                if let Ok(p) = compile(rec) {
                    by_exchange.insert(x.clone(), p);
                }
            }
        }
        (!by_exchange.is_empty()).then(|| Arc::new(TopicPermissions { by_exchange }))
    }
}
