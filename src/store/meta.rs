//! Broker metadata beside the definitions: users, permissions, vhosts and policies, each a
//! JSON record in the `meta` tree under `kind NUL part NUL part…`. The modules that own the
//! records (auth, policies) choose their shapes; this file only keeps them.

use super::{key, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

impl Store {
    fn meta(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("meta")?)
    }

    /// Store a record (logged, not returned, on failure, like the definitions).
    pub fn put_meta<T: Serialize>(&self, kind: &str, parts: &[&str], v: &T) {
        let mut k = vec![kind];
        k.extend_from_slice(parts);
        let res = self.meta().and_then(|t| {
            let bytes = serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
                key: kind.to_string(),
                why: e.to_string(),
            })?;
            let _g = self.defs_lock.lock();
            t.insert(key(&k), bytes)?;
            self.bump_generation();
            Ok(())
        });
        if let Err(e) = res {
            tracing::error!(error = %e, kind, "could not store a record");
        }
    }

    pub fn del_meta(&self, kind: &str, parts: &[&str]) {
        let mut k = vec![kind];
        k.extend_from_slice(parts);
        let _g = self.defs_lock.lock();
        let removed = self.meta().and_then(|t| Ok(t.remove(key(&k))?));
        self.bump_generation();
        if let Err(e) = removed {
            tracing::error!(error = %e, kind, "could not remove a record");
        }
    }

    /// Every record of `kind` whose key starts with `prefix` parts.
    pub fn scan_meta<T: DeserializeOwned>(
        &self,
        kind: &str,
        prefix: &[&str],
    ) -> Result<Vec<T>, StoreError> {
        let mut k = vec![kind];
        k.extend_from_slice(prefix);
        let mut p = key(&k);
        p.push(0);
        let mut out = Vec::new();
        for item in self.meta()?.scan_prefix(&p) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).replace('\u{0}', "/"),
                why: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Remove every record of `kind` under `prefix` parts.
    pub fn clear_meta(&self, kind: &str, prefix: &[&str]) {
        let mut k = vec![kind];
        k.extend_from_slice(prefix);
        let mut p = key(&k);
        p.push(0);
        let _g = self.defs_lock.lock();
        let res = self.meta().and_then(|t| {
            for item in t.scan_prefix(&p).keys() {
                t.remove(item?)?;
            }
            Ok(())
        });
        self.bump_generation();
        if let Err(e) = res {
            tracing::error!(error = %e, kind, "could not remove records");
        }
    }

    /// Forget every definition (exchanges, queues, bindings) of a deleted vhost.
    pub fn remove_vhost_definitions(&self, vhost: &str) {
        self.remove_all_delayed(vhost, None);
        let _g = self.defs_lock.lock();
        self.bump_generation();
        for kind in ["x", "q", "b", "e"] {
            let mut p = key(&[kind, vhost]);
            p.push(0);
            for item in self.defs.scan_prefix(&p).keys() {
                match item {
                    Ok(k) => {
                        if let Err(e) = self.defs.remove(k) {
                            tracing::error!(error = %e, "could not remove a definition");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "could not scan definitions"),
                }
            }
        }
    }
}
