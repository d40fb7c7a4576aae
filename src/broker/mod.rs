//! The broker's shared state: configuration, vhosts, users, the store and the live
//! connections.

pub mod alarms;
pub mod args;
pub mod dead_letter;
pub mod delivery;
pub mod exchange;
pub mod message;
pub mod policy;
pub mod queue;
pub mod vhost;
pub mod vhosts;

use crate::auth::Auth;
use crate::config::Config;
use crate::connection::ConnShared;
use crate::store::{Store, StoreError};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vhost::VHost;

pub struct Broker {
    pub config: Config,
    pub vhosts: DashMap<String, Arc<VHost>>,
    /// Users and permissions.
    pub auth: Arc<Auth>,
    pub store: Option<Arc<Store>>,
    next_conn_id: AtomicU64,
    pub connections: DashMap<u64, Arc<ConnShared>>,
    /// Memory and disk alarms; `alarms.set` raises or clears one by hand.
    pub alarms: Arc<alarms::Alarms>,
}

impl Broker {
    /// Open the data dir and recover durable definitions.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let store = Arc::new(Store::open(&config.data_dir, config.store_cache_bytes)?);
        let auth = Auth::load(Some(store.clone()))?;
        // The default user is made once, on a data dir that never had users; deleting every
        // user later does not bring it back (as RabbitMQ).
        let initialised = !store
            .scan_meta::<bool>("users_initialised", &[])?
            .is_empty();
        if auth.is_empty() && !initialised {
            auth.create_default_user(&config.default_user, &config.default_pass);
        }
        store.put_meta("users_initialised", &["done"], &true);
        let broker = Broker {
            alarms: Arc::new(alarms::Alarms::new(&config)),
            auth: Arc::new(auth),
            config,
            vhosts: DashMap::new(),
            store: Some(store.clone()),
            next_conn_id: AtomicU64::new(1),
            connections: DashMap::new(),
        };
        for vrec in broker.stored_vhosts()? {
            broker.recover_vhost(&store, vrec)?;
        }
        store.start_flusher();
        Ok(Arc::new(broker))
    }

    /// Recover one vhost: its settings and policies, exchanges, queues with their
    /// persistent messages, and bindings.
    fn recover_vhost(
        &self,
        store: &Arc<Store>,
        vrec: vhosts::VhostRecord,
    ) -> Result<(), StoreError> {
        let name = vrec.name.clone();
        let vhost = VHost::new(&name, Some(store.clone()));
        self.load_vhost_settings(&vhost, vrec)?;
        let rec = store.recover(&name)?;
        let (nx, nq) = (rec.exchanges.len(), rec.queues.len());
        let nb = rec.bindings.len() + rec.exchange_bindings.len();
        for spec in rec.exchanges {
            vhost
                .exchanges
                .insert(spec.name.clone(), exchange::Exchange::new(spec));
        }
        let started = std::time::Instant::now();
        let mut messages = 0u64;
        for spec in rec.queues {
            let id = spec.store_id;
            let q = queue::Queue::new(spec, &vhost, Some(store.clone()));
            if let Some(id) = id {
                messages += store.recover_messages(id, |qm| q.restore(qm))?;
            }
            vhost.queues.insert(q.name().to_string(), q);
        }
        if messages > 0 {
            tracing::info!(messages, elapsed = ?started.elapsed(), "recovered persistent messages");
        }
        for b in rec.bindings {
            if let Err(e) = vhost.bind_queue(&b.queue, &b.exchange, &b.routing_key, b.arguments, 0)
            {
                tracing::warn!(exchange = %b.exchange, queue = %b.queue, "binding not recovered: {e}");
            }
        }
        for b in rec.exchange_bindings {
            if let Err(e) =
                vhost.bind_exchange(&b.destination, &b.source, &b.routing_key, b.arguments)
            {
                tracing::warn!(source = %b.source, destination = %b.destination, "exchange binding not recovered: {e}");
            }
        }
        tracing::info!(
            exchanges = nx,
            queues = nq,
            bindings = nb,
            "recovered durable definitions"
        );
        vhost.apply_policies();
        self.vhosts.insert(name, vhost);
        Ok(())
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register_connection(&self, c: Arc<ConnShared>) {
        self.connections.insert(c.id, c);
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.remove(&id);
    }

    pub fn flush(&self) {
        if let Some(s) = &self.store {
            s.flush();
        }
    }
}
