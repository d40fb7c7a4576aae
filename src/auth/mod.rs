//! Users, password hashes, tags and permissions: the registry every AMQP connection and
//! every HTTP request authenticates against, kept durable in the store's `meta` tree.
//!
//! - `sasl`        — PLAIN and AMQPLAIN responses
//! - `password`    — RabbitMQ-format salted SHA-256/512 hashes
//! - `permissions` — configure/write/read patterns and the checks each AMQP method needs
//! - `topic`       — topic permissions: routing and binding keys on topic exchanges

pub mod password;
pub mod permissions;
pub mod sasl;
pub mod topic;

pub use permissions::{Access, Kind, Perm, Permission};
pub use sasl::AuthError;

use crate::store::{Store, StoreError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The user tags RabbitMQ's management plugin knows.
pub const KNOWN_TAGS: &[&str] = &[
    "administrator",
    "monitoring",
    "policymaker",
    "management",
    "impersonator",
];

/// A user as stored and as exported in definitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
    #[serde(default)]
    pub limits: serde_json::Map<String, serde_json::Value>,
}

impl User {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A permission as stored and as exported in definitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PermissionRecord {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// user → (record, compiled patterns), for one vhost.
type VhostPermissions = BTreeMap<String, (PermissionRecord, Arc<Permission>)>;

/// Users and their permissions.
pub struct Auth {
    users: RwLock<BTreeMap<String, Arc<User>>>,
    /// vhost → user → compiled permission (with its source record).
    permissions: RwLock<HashMap<String, VhostPermissions>>,
    /// Topic permissions, per vhost.
    topic_permissions: RwLock<topic::TopicTable>,
    /// Bumped on every permission or user change, so connections refresh their cache.
    generation: AtomicU64,
    /// Users that may only log in from a loopback address (RabbitMQ's `loopback_users`).
    loopback_users: Vec<String>,
    store: Option<Arc<Store>>,
}

impl Auth {
    /// Load users and permissions from the store (empty without one).
    pub fn load(store: Option<Arc<Store>>) -> Result<Self, StoreError> {
        let auth = Auth {
            users: RwLock::new(BTreeMap::new()),
            permissions: RwLock::new(HashMap::new()),
            topic_permissions: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            loopback_users: vec!["guest".to_string()],
            store: None,
        };
        if let Some(s) = &store {
            for u in s.scan_meta::<User>("user", &[])? {
                auth.users.write().insert(u.name.clone(), Arc::new(u));
            }
            for p in s.scan_meta::<PermissionRecord>("perm", &[])? {
                if let Err(e) = auth.set_permission(p.clone()) {
                    tracing::warn!(user = %p.user, vhost = %p.vhost, "permission not loaded: {e}");
                }
            }
            for p in s.scan_meta::<topic::TopicPermissionRecord>("topic_perm", &[])? {
                if let Err(e) = auth.set_topic_permission(p.clone()) {
                    tracing::warn!(user = %p.user, vhost = %p.vhost, "topic permission not loaded: {e}");
                }
            }
        }
        Ok(Auth { store, ..auth })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    pub fn users(&self) -> Vec<Arc<User>> {
        self.users.read().values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.users.read().is_empty()
    }

    /// Create or replace a user.
    pub fn put_user(&self, user: User) {
        if let Some(s) = &self.store {
            s.put_meta("user", &[&user.name], &user);
        }
        self.users.write().insert(user.name.clone(), Arc::new(user));
        self.bump();
    }

    /// Delete a user and all their permissions; false if there was no such user.
    pub fn delete_user(&self, name: &str) -> bool {
        if self.users.write().remove(name).is_none() {
            return false;
        }
        if let Some(s) = &self.store {
            s.del_meta("user", &[name]);
        }
        let vhosts: Vec<String> = self.permissions.read().keys().cloned().collect();
        for v in vhosts {
            self.clear_permission(&v, name);
        }
        let vhosts: Vec<String> = self.topic_permissions.read().keys().cloned().collect();
        for v in vhosts {
            self.clear_topic_permissions(&v, name);
        }
        self.bump();
        true
    }

    /// Set a user's permissions in a vhost; Err if a pattern is not a valid regex.
    pub fn set_permission(&self, rec: PermissionRecord) -> Result<(), regex::Error> {
        let compiled = Arc::new(Permission::new(&rec.configure, &rec.write, &rec.read)?);
        if let Some(s) = &self.store {
            s.put_meta("perm", &[&rec.vhost, &rec.user], &rec);
        }
        self.permissions
            .write()
            .entry(rec.vhost.clone())
            .or_default()
            .insert(rec.user.clone(), (rec, compiled));
        self.bump();
        Ok(())
    }

    /// Remove a user's permissions in a vhost; false if there were none.
    pub fn clear_permission(&self, vhost: &str, user: &str) -> bool {
        let removed = self
            .permissions
            .write()
            .get_mut(vhost)
            .and_then(|m| m.remove(user))
            .is_some();
        if removed {
            if let Some(s) = &self.store {
                s.del_meta("perm", &[vhost, user]);
            }
            self.bump();
        }
        removed
    }

    /// A deleted vhost takes every permission in it along.
    pub fn clear_vhost(&self, vhost: &str) {
        self.permissions.write().remove(vhost);
        self.topic_permissions.write().remove(vhost);
        if let Some(s) = &self.store {
            s.clear_meta("perm", &[vhost]);
            s.clear_meta("topic_perm", &[vhost]);
        }
        self.bump();
    }

    pub fn permission(&self, vhost: &str, user: &str) -> Option<Arc<Permission>> {
        self.permissions
            .read()
            .get(vhost)
            .and_then(|m| m.get(user))
            .map(|(_, p)| p.clone())
    }

    pub fn permission_record(&self, vhost: &str, user: &str) -> Option<PermissionRecord> {
        self.permissions
            .read()
            .get(vhost)
            .and_then(|m| m.get(user))
            .map(|(r, _)| r.clone())
    }

    /// Every permission record, optionally only one vhost's or one user's.
    pub fn permission_records(
        &self,
        vhost: Option<&str>,
        user: Option<&str>,
    ) -> Vec<PermissionRecord> {
        let perms = self.permissions.read();
        let mut out: Vec<PermissionRecord> = perms
            .iter()
            .filter(|(v, _)| vhost.is_none_or(|want| want == v.as_str()))
            .flat_map(|(_, m)| m.values().map(|(r, _)| r.clone()))
            .filter(|r| user.is_none_or(|want| want == r.user))
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        out
    }

    /// May this user open connections to this vhost (has any permissions there)?
    pub fn can_access_vhost(&self, user: &str, vhost: &str) -> bool {
        self.permission(vhost, user).is_some()
    }

    /// Check a user name and password, and the loopback rule, for a peer address.
    pub fn check_password(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Arc<User>, String> {
        let user = self.user(name);
        let ok = match &user {
            Some(u) => password::verify(&u.hashing_algorithm, &u.password_hash, password),
            None => {
                // The same work for a missing user, so timing does not tell users apart.
                let _ = password::verify(
                    password::SHA256,
                    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                    password,
                );
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            return Err(format!("user '{name}' - invalid credentials"));
        };
        if !peer.is_loopback() && self.loopback_users.iter().any(|u| u == name) {
            return Err(format!("user '{name}' can only connect via localhost"));
        }
        Ok(user)
    }

    /// Check a SASL response for `mechanism`; returns the user name.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<String, AuthError> {
        let (name, pass) = sasl::credentials(mechanism, response)?;
        self.login(&name, &pass, peer)
    }

    /// Check credentials however the mechanism carried them; returns the user name.
    pub fn login(&self, name: &str, pass: &str, peer: IpAddr) -> Result<String, AuthError> {
        // The detail is for the log only; clients get RabbitMQ's generic refusal text.
        match self.check_password(name, pass, peer) {
            Ok(u) => Ok(u.name.clone()),
            Err(why) => Err(AuthError::Refused(why)),
        }
    }

    /// The user made on an empty data dir: administrator, full permissions on `/`.
    pub fn create_default_user(&self, name: &str, pass: &str) {
        self.put_user(User {
            name: name.to_string(),
            password_hash: password::hash(pass),
            hashing_algorithm: password::SHA256.to_string(),
            tags: vec!["administrator".to_string()],
            limits: Default::default(),
        });
        let _ = self.set_permission(PermissionRecord {
            user: name.to_string(),
            vhost: "/".to_string(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        });
    }
}

/// Parse tags as RabbitMQ accepts them: a comma-separated string or a JSON list.
pub fn parse_tags(v: Option<&serde_json::Value>) -> Vec<String> {
    let mut tags: Vec<String> = match v {
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn guest_is_loopback_only() {
        let auth = Auth::load(None).unwrap();
        auth.create_default_user("guest", "guest");
        assert_eq!(
            auth.authenticate("PLAIN", b"\0guest\0guest", LOCAL),
            Ok("guest".into())
        );
        assert!(auth.authenticate("PLAIN", b"\0guest\0nope", LOCAL).is_err());
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            auth.authenticate("PLAIN", b"\0guest\0guest", remote),
            Err(AuthError::Refused(
                "user 'guest' can only connect via localhost".into()
            ))
        );
        assert!(auth.can_access_vhost("guest", "/"));
        assert!(!auth.can_access_vhost("guest", "other"));
    }

    #[test]
    fn tags_from_string_or_list() {
        let s = serde_json::json!("administrator, monitoring");
        assert_eq!(parse_tags(Some(&s)), vec!["administrator", "monitoring"]);
        let l = serde_json::json!(["management"]);
        assert_eq!(parse_tags(Some(&l)), vec!["management"]);
        assert!(parse_tags(Some(&serde_json::json!(""))).is_empty());
    }
}
