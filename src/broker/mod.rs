//! The broker's shared state: configuration, vhosts, users, the store and the live
//! connections.

pub mod args;
pub mod dead_letter;
pub mod delivery;
pub mod exchange;
pub mod message;
pub mod queue;
pub mod vhost;

use crate::auth::Users;
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
    pub users: Users,
    pub store: Option<Arc<Store>>,
    next_conn_id: AtomicU64,
    pub connections: DashMap<u64, Arc<ConnShared>>,
}

impl Broker {
    /// Open the data dir and recover durable definitions.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let store = Arc::new(Store::open(&config.data_dir, config.store_cache_bytes)?);
        let broker = Broker {
            users: Users::with_default_guest(&config.default_user, &config.default_pass),
            config,
            vhosts: DashMap::new(),
            store: Some(store.clone()),
            next_conn_id: AtomicU64::new(1),
            connections: DashMap::new(),
        };
        let vhost = VHost::new("/", Some(store.clone()));
        let rec = store.recover("/")?;
        let (nx, nq) = (rec.exchanges.len(), rec.queues.len());
        let nb = rec.bindings.len() + rec.exchange_bindings.len();
        for spec in rec.exchanges {
            vhost
                .exchanges
                .insert(spec.name.clone(), exchange::Exchange::new(spec));
        }
        for spec in rec.queues {
            vhost
                .queues
                .insert(spec.name.clone(), queue::Queue::new(spec, &vhost));
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
        broker.vhosts.insert("/".to_string(), vhost);
        Ok(Arc::new(broker))
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
