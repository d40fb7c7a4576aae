//! Vhosts and policies at runtime: create and delete vhosts (their records durable in the
//! store's `meta` tree), and set or clear policies, re-applying them to the queues and
//! exchanges they match.

use super::policy::{self, Policy, PolicyKind, PolicyRecord};
use super::vhost::{QueueDeclare, VHost};
use super::Broker;
use crate::protocol::AMQPValue;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A vhost as stored and as exported in definitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VhostRecord {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
    /// `max-connections`, `max-queues` (RabbitMQ's vhost limits); negative = no limit.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub limits: serde_json::Map<String, serde_json::Value>,
}

/// Queue types a default may name (streams are not served yet).
pub const QUEUE_TYPES: &[&str] = &["classic", "quorum"];

/// The limit `key` in a limits object: None when absent or negative (RabbitMQ's "no limit").
pub fn limit_of(limits: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<u64> {
    limits
        .get(key)
        .and_then(|v| v.as_i64())
        .and_then(|n| u64::try_from(n).ok())
}

/// What management sets on a vhost: its description and tags, and its policies.
#[derive(Debug, Default)]
pub struct VhostSettings {
    pub record: VhostRecord,
    /// Sorted by name.
    pub policies: Vec<Policy>,
    /// Sorted by name.
    pub operator_policies: Vec<Policy>,
}

impl VhostSettings {
    pub fn policies_of(&self, kind: PolicyKind) -> &[Policy] {
        match kind {
            PolicyKind::User => &self.policies,
            PolicyKind::Operator => &self.operator_policies,
        }
    }

    fn policies_of_mut(&mut self, kind: PolicyKind) -> &mut Vec<Policy> {
        match kind {
            PolicyKind::User => &mut self.policies,
            PolicyKind::Operator => &mut self.operator_policies,
        }
    }

    /// No policy of either kind: queues keep their declared arguments.
    pub fn no_queue_policies(&self) -> bool {
        self.policies.is_empty() && self.operator_policies.is_empty()
    }
}

/// What the policies make of one queue, as the management API shows it.
pub struct QueuePolicies {
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    pub definition: serde_json::Map<String, serde_json::Value>,
}

impl Broker {
    /// The vhost records in the store; on a data dir without any, `/` (and it is saved).
    pub(super) fn stored_vhosts(&self) -> Result<Vec<VhostRecord>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(vec![VhostRecord {
                name: "/".into(),
                description: "Default virtual host".into(),
                ..Default::default()
            }]);
        };
        let mut recs: Vec<VhostRecord> = store.scan_meta("vhost", &[])?;
        if recs.is_empty() {
            let rec = VhostRecord {
                name: "/".into(),
                description: "Default virtual host".into(),
                ..Default::default()
            };
            store.put_meta("vhost", &["/"], &rec);
            recs.push(rec);
        }
        Ok(recs)
    }

    /// Give a recovered vhost its record and stored policies of both kinds.
    pub(super) fn load_vhost_settings(
        &self,
        vhost: &VHost,
        rec: VhostRecord,
    ) -> Result<(), StoreError> {
        let mut s = vhost.settings.write();
        for kind in [PolicyKind::User, PolicyKind::Operator] {
            let Some(store) = &self.store else { break };
            for p in store.scan_meta::<PolicyRecord>(kind.meta(), &[&rec.name])? {
                match Policy::new(p, kind) {
                    Ok(p) => s.policies_of_mut(kind).push(p),
                    Err(e) => tracing::warn!(vhost = %rec.name, "policy not loaded: {e}"),
                }
            }
        }
        s.record = rec;
        Ok(())
    }

    /// The queue type a declaration naming none gets in `vhost`: the vhost's
    /// `default_queue_type`, else the node's.
    pub fn default_queue_type(&self, vhost: &VHost) -> String {
        vhost
            .settings
            .read()
            .record
            .default_queue_type
            .clone()
            .unwrap_or_else(|| self.config.default_queue_type.clone())
    }

    /// RabbitMQ 3.13's default queue type: a declaration of a durable, non-exclusive,
    /// non-auto-delete queue without `x-queue-type` gets the default type, so that a
    /// client redeclaring it the same way stays equivalent; a queue that exists with
    /// another type (declared before the default changed) keeps it, and every other
    /// declaration is left as it is.
    pub fn apply_default_queue_type(&self, vhost: &VHost, d: &mut QueueDeclare) {
        if d.passive
            || !d.durable
            || d.exclusive
            || d.auto_delete
            || d.arguments.inner().contains_key("x-queue-type")
        {
            return;
        }
        let kind = self.default_queue_type(vhost);
        let existing = vhost
            .queues
            .get(&d.name)
            .map(|q| super::queue::is_quorum(&q.spec.arguments));
        let applies = match existing {
            None => true,
            Some(quorum) => quorum == (kind == "quorum"),
        };
        if applies && kind != "classic" {
            d.arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(kind.as_bytes().to_vec().into()),
            );
        }
    }

    /// Create a vhost, or update the description and tags of an existing one. True if
    /// created.
    pub fn put_vhost(&self, rec: VhostRecord) -> bool {
        if let Some(store) = &self.store {
            store.put_meta("vhost", &[&rec.name], &rec);
        }
        if let Some(v) = self.vhost(&rec.name) {
            v.settings.write().record = rec;
            return false;
        }
        // (Callers that update a vhost pass its current limits along.)
        let vhost = VHost::new(&rec.name, self.store.clone());
        let name = rec.name.clone();
        vhost.settings.write().record = rec;
        self.vhosts.insert(name.clone(), vhost);
        tracing::info!(vhost = %name, "vhost created");
        true
    }

    /// Replace a vhost's limits (kept with its record). False if there is no such vhost.
    pub fn set_vhost_limits(
        &self,
        name: &str,
        limits: serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let Some(v) = self.vhost(name) else {
            return false;
        };
        let rec = {
            let mut settings = v.settings.write();
            settings.record.limits = limits;
            settings.record.clone()
        };
        if let Some(store) = &self.store {
            store.put_meta("vhost", &[&rec.name], &rec);
        }
        true
    }

    /// Delete a vhost with everything in it; its connections are closed with 320. False if
    /// there was no such vhost.
    pub fn delete_vhost(&self, name: &str) -> bool {
        let Some((_, vhost)) = self.vhosts.remove(name) else {
            return false;
        };
        for c in self.connections.iter() {
            if c.info.read().vhost == name {
                c.force_close(&format!("vhost '{name}' is deleted"));
            }
        }
        let queues: Vec<_> = vhost.queues.iter().map(|q| q.clone()).collect();
        for q in queues {
            vhost.remove_queue(&q);
        }
        if let Some(store) = &self.store {
            store.remove_vhost_definitions(name);
            store.del_meta("vhost", &[name]);
            store.clear_meta(PolicyKind::User.meta(), &[name]);
            store.clear_meta(PolicyKind::Operator.meta(), &[name]);
        }
        self.auth.clear_vhost(name);
        tracing::info!(vhost = %name, "vhost deleted");
        true
    }

    /// Set a policy (validated) and apply it. Ok(true) if it is new.
    pub fn put_policy(&self, kind: PolicyKind, rec: PolicyRecord) -> Result<bool, String> {
        let vhost = self
            .vhost(&rec.vhost)
            .ok_or_else(|| format!("no vhost '{}'", rec.vhost))?;
        let p = Policy::new(rec, kind)?;
        if let Some(store) = &self.store {
            store.put_meta(kind.meta(), &[&p.record.vhost, &p.record.name], &p.record);
        }
        let created = {
            let mut s = vhost.settings.write();
            let list = s.policies_of_mut(kind);
            match list.iter().position(|x| x.name() == p.name()) {
                Some(i) => {
                    list[i] = p;
                    false
                }
                None => {
                    list.push(p);
                    list.sort_by(|a, b| a.name().cmp(b.name()));
                    true
                }
            }
        };
        vhost.apply_policies();
        Ok(created)
    }

    /// Remove a policy; false if there was none.
    pub fn delete_policy(&self, kind: PolicyKind, vhost_name: &str, name: &str) -> bool {
        let Some(vhost) = self.vhost(vhost_name) else {
            return false;
        };
        let removed = {
            let mut s = vhost.settings.write();
            let list = s.policies_of_mut(kind);
            let before = list.len();
            list.retain(|p| p.name() != name);
            before != list.len()
        };
        if removed {
            if let Some(store) = &self.store {
                store.del_meta(kind.meta(), &[vhost_name, name]);
            }
            vhost.apply_policies();
        }
        removed
    }
}

impl VHost {
    /// The name of the policy that applies to a queue or exchange, if any.
    pub fn policy_name(&self, name: &str, target: policy::Target) -> Option<String> {
        let s = self.settings.read();
        policy::matching(&s.policies, name, target).map(|p| p.name().to_string())
    }

    /// The user and operator policies that apply to a queue, and their merged definition.
    pub fn queue_policies(&self, q: &super::queue::Queue) -> QueuePolicies {
        let s = self.settings.read();
        let target = policy::Target::Queue(q.kind_info().type_name);
        let user = policy::matching(&s.policies, q.name(), target);
        let operator = policy::matching(&s.operator_policies, q.name(), target);
        QueuePolicies {
            policy: user.map(|p| p.name().to_string()),
            operator_policy: operator.map(|p| p.name().to_string()),
            definition: policy::effective_definition(user, operator),
        }
    }

    /// A new queue: apply the policies that match it, if any (its declared arguments are
    /// already in effect otherwise).
    pub fn apply_new_queue_policy(self: &Arc<Self>, q: &Arc<super::queue::Queue>) {
        if !self.settings.read().no_queue_policies() {
            self.apply_queue_policy(q);
        }
    }

    /// A new exchange: apply the policy that matches it, if any.
    pub fn apply_new_exchange_policy(&self, e: &Arc<super::exchange::Exchange>) {
        if !self.settings.read().policies.is_empty() {
            self.apply_exchange_policy(e);
        }
    }

    /// Re-apply policies to every queue and exchange (after a policy changed, or at
    /// recovery).
    pub fn apply_policies(self: &Arc<Self>) {
        let queues: Vec<_> = self.queues.iter().map(|q| q.clone()).collect();
        for q in queues {
            self.apply_queue_policy(&q);
        }
        let exchanges: Vec<_> = self.exchanges.iter().map(|e| e.clone()).collect();
        for e in exchanges {
            self.apply_exchange_policy(&e);
        }
    }

    /// Compute a queue's effective arguments from its own and its policies, and apply them.
    pub fn apply_queue_policy(self: &Arc<Self>, q: &Arc<super::queue::Queue>) {
        let target = policy::Target::Queue(q.kind_info().type_name);
        let s = self.settings.read();
        let p = policy::matching(&s.policies, q.name(), target);
        let op = policy::matching(&s.operator_policies, q.name(), target);
        let effective = policy::effective_queue_arguments(&q.spec.arguments, p, op);
        drop(s);
        q.set_effective_arguments(&effective);
    }

    /// An exchange's alternate exchange: its argument, else its policy's.
    pub fn apply_exchange_policy(&self, e: &Arc<super::exchange::Exchange>) {
        let s = self.settings.read();
        let p = policy::matching(&s.policies, e.name(), policy::Target::Exchange);
        e.set_alternate(policy::effective_alternate_exchange(&e.spec.arguments, p));
    }
}
