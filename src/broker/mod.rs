//! The broker's shared state: configuration, vhosts, users, the store and the live
//! connections.

pub mod alarms;
pub mod args;
pub mod client;
pub mod dead_letter;
pub mod delivery;
pub mod exchange;
pub mod message;
pub mod outbound;
pub mod policy;
pub mod queue;
pub mod reply_to;
pub mod vhost;
pub mod vhosts;

use crate::auth::Auth;
use crate::config::Config;
use crate::store::{Store, StoreError};
use client::ConnShared;
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
    /// What `connection.start` and the API call the cluster; set by `PUT /api/cluster-name`
    /// and kept in the store, as RabbitMQ's `cluster_name` global parameter.
    cluster_name: parking_lot::RwLock<String>,
    /// The cluster group, when this node is clustered (`cluster_addr` set).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::group::ClusterGroup>>,
}

/// The cluster name until one is set.
pub const DEFAULT_CLUSTER_NAME: &str = "warrenmq";

impl Broker {
    /// Open the data dir and recover durable definitions.
    pub fn open(config: Config) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let store = Arc::new(Store::open(&config.data_dir, config.store_cache_bytes)?);
        store.open_quorum()?;
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
        let cluster_name = store
            .scan_meta::<String>("global", &["cluster_name"])?
            .pop()
            .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
        let broker = Broker {
            cluster_name: parking_lot::RwLock::new(cluster_name),
            alarms: Arc::new(alarms::Alarms::new(&config)),
            auth: Arc::new(auth),
            config,
            vhosts: DashMap::new(),
            store: Some(store.clone()),
            next_conn_id: AtomicU64::new(1),
            connections: DashMap::new(),
            cluster: std::sync::OnceLock::new(),
        };
        for vrec in broker.stored_vhosts()? {
            broker.recover_vhost(&store, vrec)?;
        }
        broker.recover_messages(&store)?;
        if let Some(node) = store.quorum() {
            // Groups of queues deleted while their segments were still needed.
            let claimed: std::collections::HashSet<u64> = broker
                .vhosts
                .iter()
                .flat_map(|v| {
                    v.queues
                        .iter()
                        .filter_map(|q| q.raft_group())
                        .collect::<Vec<_>>()
                })
                .collect();
            node.log.retain_groups(|g| {
                claimed.contains(&g) || g == crate::cluster::group::CLUSTER_GROUP
            });
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
        for spec in rec.queues {
            let q = queue::Queue::new(spec, &vhost, Some(store.clone()));
            vhost.queues.insert(q.name().to_string(), q);
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
        // Bindings are back, so delayed messages that fell due while down can route now.
        let delayed: Vec<_> = vhost
            .exchanges
            .iter()
            .filter(|x| x.messages_delayed().is_some() && x.spec.durable)
            .map(|x| x.clone())
            .collect();
        for x in delayed {
            vhost.recover_delayed(&x);
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

    /// Put every stored message back into its queue: one pass over the message log, in
    /// publish order. Records of queues that no longer exist are dropped.
    fn recover_messages(&self, store: &Arc<Store>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut by_id: std::collections::HashMap<u64, Arc<queue::Queue>> =
            std::collections::HashMap::new();
        for v in self.vhosts.iter() {
            for q in v.queues.iter() {
                if let Some(id) = q.spec.store_id {
                    by_id.insert(id, q.clone());
                }
            }
        }
        let messages = store.recover_messages(|id, qm| match by_id.get(&id) {
            Some(q) => {
                q.restore(qm);
                true
            }
            None => false,
        })?;
        if messages > 0 {
            tracing::info!(messages, elapsed = ?started.elapsed(), "recovered persistent messages");
        }
        Ok(())
    }

    pub fn cluster_name(&self) -> String {
        self.cluster_name.read().clone()
    }

    pub fn set_cluster_name(&self, name: String) {
        if let Some(store) = &self.store {
            store.put_meta("global", &["cluster_name", "value"], &name);
        }
        *self.cluster_name.write() = name;
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

    /// Stop every queue whose type has work to finish (clean shutdown): a quorum queue's
    /// proposed rounds are written first.
    pub async fn stop_quorum_groups(&self) {
        let mut stops = Vec::new();
        for v in self.vhosts.iter() {
            stops.extend(v.queues.iter().filter_map(|q| q.stop()));
        }
        for stop in stops {
            stop.await;
        }
        if let Some(c) = self.cluster.get() {
            c.shutdown().await;
        }
    }
}
