//! Messages held by durable delayed exchanges, in their own tree: one record per message
//! under `d NUL vhost NUL exchange NUL id`, holding the due time (wall-clock ms) and the
//! message in the queue record encoding. Written when a persistent message is held,
//! removed when it is routed or its exchange goes.

use super::messages::{decode, encode, from_wall_ms, wall_ms};
use super::{key, Store, StoreError};
use crate::broker::message::{Message, QueuedMessage};
use std::sync::Arc;
use tokio::time::Instant;

fn prefix(vhost: &str, exchange: &str) -> Vec<u8> {
    let mut p = key(&["d", vhost, exchange]);
    p.push(0);
    p
}

fn record_key(vhost: &str, exchange: &str, id: u64) -> Vec<u8> {
    let mut k = prefix(vhost, exchange);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    fn delayed_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("delayed")?)
    }

    /// Store a held message due at `at`. False (logged) if it could not be written.
    pub fn put_delayed(
        &self,
        vhost: &str,
        exchange: &str,
        id: u64,
        at: Instant,
        msg: &Arc<Message>,
    ) -> bool {
        let qm = QueuedMessage {
            seq: id,
            msg: msg.clone(),
            redelivered: false,
            deadline: None,
            delivery_count: 0,
            stored: None,
        };
        let mut v = wall_ms(at).to_be_bytes().to_vec();
        v.extend_from_slice(&encode(&qm));
        match self
            .delayed_tree()
            .and_then(|t| Ok(t.insert(record_key(vhost, exchange, id), v)?))
        {
            Ok(_) => {
                self.definition_written();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store a delayed message");
                false
            }
        }
    }

    pub fn remove_delayed(&self, vhost: &str, exchange: &str, id: u64) {
        if let Err(e) = self
            .delayed_tree()
            .and_then(|t| Ok(t.remove(record_key(vhost, exchange, id))?))
        {
            tracing::error!(error = %e, "could not remove a delayed message");
        }
    }

    /// Forget every held message of an exchange (deleted), or of a vhost (exchange None).
    pub fn remove_all_delayed(&self, vhost: &str, exchange: Option<&str>) {
        let p = match exchange {
            Some(x) => prefix(vhost, x),
            None => {
                let mut p = key(&["d", vhost]);
                p.push(0);
                p
            }
        };
        let res = self.delayed_tree().and_then(|t| {
            for k in t.scan_prefix(&p).keys() {
                t.remove(k?)?;
            }
            Ok(())
        });
        if let Err(e) = res {
            tracing::error!(error = %e, "could not remove delayed messages");
        }
    }

    /// Every held message of an exchange: (record id, due time, message).
    pub fn recover_delayed(
        &self,
        vhost: &str,
        exchange: &str,
    ) -> Result<Vec<(u64, Instant, Arc<Message>)>, StoreError> {
        let p = prefix(vhost, exchange);
        let mut out = Vec::new();
        for item in self.delayed_tree()?.scan_prefix(&p) {
            let (k, v) = item?;
            let corrupt = |why: &str| StoreError::Corrupt {
                key: format!("delayed message of '{exchange}' in vhost '{vhost}'"),
                why: why.to_string(),
            };
            let id = k
                .get(p.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("bad key"))?;
            let due = v
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("short record"))?;
            let qm = decode(id, &v[8..]).ok_or_else(|| corrupt("undecodable message"))?;
            out.push((id, from_wall_ms(due), qm.msg));
        }
        Ok(out)
    }
}
